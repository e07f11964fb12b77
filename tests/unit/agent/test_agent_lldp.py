"""LLDP: the sans-IO parser on hand-built and random frames; the listener on a veth pair in a namespace."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootforge.agent.lldp import (
    ETH_P_LLDP,
    LLDP_MULTICAST,
    encode_tlv,
    parse_frame,
    parse_lldpdu,
    split_tlvs,
)
from bootforge.lab.netns import Topology

SWITCH_MAC = bytes.fromhex("001122334455")
END = encode_tlv(0, b"")


def chassis(subtype: int, data: bytes) -> bytes:
    return encode_tlv(1, bytes([subtype]) + data)


def port(subtype: int, data: bytes) -> bytes:
    return encode_tlv(2, bytes([subtype]) + data)


def ttl(seconds: int = 120) -> bytes:
    return encode_tlv(3, seconds.to_bytes(2, "big"))


def frame(*tlvs: bytes, vlan: bool = False, ethertype: int = ETH_P_LLDP, pad: bool = True) -> bytes:
    tag = b"\x81\x00\x00\x2a" if vlan else b""
    data = LLDP_MULTICAST + SWITCH_MAC + tag + ethertype.to_bytes(2, "big") + b"".join(tlvs)
    # Ethernet pads short frames with zeros, which read as End TLVs.
    return data + bytes(max(0, 60 - len(data))) if pad else data


def switch_frame() -> bytes:
    return frame(
        chassis(4, SWITCH_MAC),
        port(5, b"Ethernet1/7"),
        ttl(),
        encode_tlv(4, b"uplink to rack 3"),
        encode_tlv(5, b"tor-sw-3.example"),
        encode_tlv(127, bytes.fromhex("0080c2010001")),  # 802.1 port VLAN id (organisational)
        END,
    )


# -- hand-built frames -------------------------------------------------------------------------------


def test_a_typical_switch_frame() -> None:
    du = parse_frame(switch_frame())
    assert du is not None
    assert du.to_inventory() == {
        "chassis_id": "00:11:22:33:44:55",
        "port_id": "Ethernet1/7",
        "system_name": "tor-sw-3.example",
        "port_description": "uplink to rack 3",
    }
    assert du.ttl == 120
    assert du.raw() == [
        [1, "04001122334455"],
        [2, "05" + b"Ethernet1/7".hex()],
        [3, "0078"],
        [4, b"uplink to rack 3".hex()],
        [5, b"tor-sw-3.example".hex()],
        [127, "0080c2010001"],
    ]


def test_vlan_tagged_frame_and_no_end_tlv() -> None:
    du = parse_frame(
        frame(chassis(7, b"local"), port(3, bytes.fromhex("aabbccddeeff")), vlan=True, pad=False)
    )
    assert du is not None
    assert (du.chassis_id, du.port_id, du.ttl, du.system_name) == ("local", "aa:bb:cc:dd:ee:ff", None, None)


@pytest.mark.parametrize(
    ("tlv", "expected"),
    [
        (chassis(5, b"\x01" + bytes([10, 0, 0, 1])), "10.0.0.1"),
        (chassis(5, b"\x02" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")), "2001:db8::1"),
        (chassis(5, b"\x01\x0a\x00"), "010a00"),  # IPv4 of the wrong length: the bytes
        (chassis(5, b"\x06abc"), "06616263"),  # a family we do not spell out
        (chassis(4, b"\x00\x11\x22"), "001122"),  # a MAC of the wrong length
        (chassis(1, b"chassis-component"), "chassis-component"),
        (chassis(6, b"eth0\x00"), "eth0"),
        (chassis(0, b"\x01\x02"), "0102"),  # reserved subtype
        (chassis(200, b"\xff"), "ff"),
    ],
)
def test_chassis_id_subtypes(tlv: bytes, expected: str) -> None:
    du = parse_frame(frame(tlv, port(7, b"1"), ttl(), END))
    assert du is not None and du.chassis_id == expected


@pytest.mark.parametrize(
    ("tlv", "expected"),
    [
        (port(1, b"alias"), "alias"),
        (port(2, b"component"), "component"),
        (port(3, bytes.fromhex("52540012345a")), "52:54:00:12:34:5a"),
        (port(4, b"\x01" + bytes([192, 0, 2, 9])), "192.0.2.9"),
        (port(5, b"ge-0/0/1"), "ge-0/0/1"),
        (port(6, b"\x00\x01\xff"), "0001ff"),  # agent circuit id is binary
        (port(7, b"42"), "42"),
        (port(5, b"caf\xe9"), "caf\ufffd"),  # not UTF-8: replaced, not refused
    ],
)
def test_port_id_subtypes(tlv: bytes, expected: str) -> None:
    du = parse_frame(frame(chassis(4, SWITCH_MAC), tlv, ttl(), END))
    assert du is not None and du.port_id == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x80\xc2",
        frame(chassis(4, SWITCH_MAC), port(5, b"x"), ttl(), ethertype=0x0800),  # IPv4, not LLDP
        frame(port(5, b"x"), chassis(4, SWITCH_MAC), ttl()),  # wrong order
        frame(chassis(4, SWITCH_MAC), ttl()),  # no port id
        frame(END, chassis(4, SWITCH_MAC), port(5, b"x")),  # End first: empty LLDPDU
        frame(chassis(4, b""), port(5, b"x"), ttl()),  # chassis id with a subtype but no id
        frame(encode_tlv(1, b""), port(5, b"x"), ttl()),  # chassis TLV with nothing at all
        frame(chassis(4, SWITCH_MAC), port(5, b"x"), b"\x06\x10abc", pad=False),  # TLV runs past the end
        frame(chassis(4, SWITCH_MAC), port(5, b"x"), b"\x06", pad=False),  # half a TLV header
        frame(chassis(4, SWITCH_MAC), port(5, b"x" * 256), ttl()),  # id longer than 255
        LLDP_MULTICAST + SWITCH_MAC + b"\x81\x00\x00",  # VLAN tag cut short
    ],
)
def test_malformed_frames_are_none(data: bytes) -> None:
    assert parse_frame(data) is None


def test_padding_after_end_is_ignored() -> None:
    du = parse_frame(switch_frame() + b"\xff\xff\xff")
    assert du is not None and len(du.tlvs) == 6


def test_split_tlvs_and_encode_are_inverse() -> None:
    tlvs = ((1, b"\x04abcdef"), (2, b"\x05x"), (127, bytes(511)))
    assert split_tlvs(b"".join(encode_tlv(k, v) for k, v in tlvs) + END) == tlvs
    with pytest.raises(ValueError):
        encode_tlv(128, b"")
    with pytest.raises(ValueError):
        encode_tlv(1, bytes(512))


# -- random input ------------------------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_frame(data)
    parse_frame(LLDP_MULTICAST + SWITCH_MAC + b"\x88\xcc" + data)
    parse_lldpdu(data)
    parse_lldpdu(chassis(4, SWITCH_MAC) + data)
    parse_lldpdu(chassis(4, SWITCH_MAC) + port(3, SWITCH_MAC) + data)


tlv_values = st.tuples(st.integers(1, 127), st.binary(max_size=300))


@given(
    st.integers(0, 255),
    st.binary(min_size=1, max_size=255),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=255),
    st.lists(tlv_values, max_size=8),
)
def test_well_formed_lldpdus_parse_and_keep_every_tlv(
    c_sub: int, c_id: bytes, p_sub: int, p_id: bytes, rest: list[tuple[int, bytes]]
) -> None:
    tlvs = [(1, bytes([c_sub]) + c_id), (2, bytes([p_sub]) + p_id), *rest]
    du = parse_lldpdu(b"".join(encode_tlv(k, v) for k, v in tlvs) + END)
    assert du is not None
    assert list(du.tlvs) == tlvs
    assert isinstance(du.chassis_id, str) and isinstance(du.port_id, str)


# -- listening on a veth pair --------------------------------------------------------------------------------

LISTENER = """
import json
from bootforge.agent import inspect
from bootforge.agent.common import Context
print(json.dumps(inspect.run({"lldp_wait": 4.0}, Context(), lambda done, total, message: None)))
"""


def test_inspect_hears_the_neighbour_on_a_veth_pair(netns_topology: Topology) -> None:
    """inspect in a namespace: l1 hears the frames sent from l0; l0 only sees its own (ignored)."""
    ns = netns_topology.namespace("lldp")
    ns.ip("link", "add", "l0", "type", "veth", "peer", "name", "l1")
    ns.ip("addr", "add", "10.213.250.2/24", "dev", "l1")
    for name in ("l0", "l1"):
        ns.ip("link", "set", name, "up")
    sender = ns.open_socket(socket.AF_PACKET, socket.SOCK_RAW)
    sender.bind(("l0", 0))
    proc = ns.popen(
        [sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            sender.send(switch_frame())
            time.sleep(0.1)
        out, err = proc.communicate(timeout=10)
    finally:
        sender.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    by_name = {i["name"]: i for i in result["inventory"]["interfaces"]}
    assert by_name["l1"]["ipv4_address"] == "10.213.250.2"
    assert by_name["l1"]["lldp"] == parse_frame(switch_frame()).to_inventory()  # type: ignore[union-attr]
    assert by_name["l0"]["lldp"] is None
    assert result["plugin_data"]["lldp_raw"] == {"l1": parse_frame(switch_frame()).raw()}  # type: ignore[union-attr]
