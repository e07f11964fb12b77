"""LLDP (IEEE 802.1AB): what the switch port a NIC is plugged into says about itself.

Rules for this module:

* The parser is sans-IO: ``parse_frame(bytes) -> Lldpdu | None``. It never raises, whatever the
  bytes: a frame that is not a well-formed LLDPDU is None (the fuzz test holds it to that).
* An LLDPDU is a sequence of TLVs, each a 16-bit header (7 bits type, 9 bits length) and a value.
  It must start with Chassis ID (type 1) then Port ID (type 2), each a subtype byte and 1-255
  bytes of id (802.1AB-2016 8.5.2, 8.5.3); the TTL that follows is read when present but not
  required, because a neighbour that leaves it out still names its port. End (type 0) stops the
  walk, so frame padding after it is ignored; a TLV longer than the bytes left is malformed.
* ``listen`` is the only I/O: AF_PACKET sockets, one per interface, all waited on with one select
  and one overall deadline.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ETH_P_LLDP = 0x88CC
# The nearest-bridge group address: LLDP agents send here and bridges do not forward it.
LLDP_MULTICAST = bytes.fromhex("0180c200000e")
_VLAN_TAGS = (0x8100, 0x88A8)

TLV_END = 0
TLV_CHASSIS_ID = 1
TLV_PORT_ID = 2
TLV_TTL = 3
TLV_PORT_DESCRIPTION = 4
TLV_SYSTEM_NAME = 5

# Chassis ID subtypes (8.5.2.2) and Port ID subtypes (8.5.3.2) that are not text.
_CHASSIS_MAC, _CHASSIS_NETWORK = 4, 5
_PORT_MAC, _PORT_NETWORK, _PORT_CIRCUIT = 3, 4, 6
_CHASSIS_TEXT = frozenset({1, 2, 3, 6, 7})
_PORT_TEXT = frozenset({1, 2, 5, 7})
# IANA address family numbers used in network-address ids.
_FAMILIES = {1: (socket.AF_INET, 4), 2: (socket.AF_INET6, 16)}

# Linux packet(7) constants (not all exported by the socket module).
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
PACKET_OUTGOING = 4
MAX_FRAME = 9216

Tlv = tuple[int, bytes]


@dataclass(frozen=True)
class Lldpdu:
    """One neighbour's advertisement: the TLVs as received, and the fields the inventory shows."""

    tlvs: tuple[Tlv, ...]
    chassis_id: str
    port_id: str
    ttl: int | None
    system_name: str | None
    port_description: str | None

    def to_inventory(self) -> dict[str, str | None]:
        return {
            "chassis_id": self.chassis_id,
            "port_id": self.port_id,
            "system_name": self.system_name,
            "port_description": self.port_description,
        }

    def raw(self) -> list[list[int | str]]:
        """[[tlv_type, value as hex], ...]: the contract's lldp_raw entry for one interface."""
        return [[kind, value.hex()] for kind, value in self.tlvs]


# -- parsing (sans-IO) ----------------------------------------------------------------------------


def parse_frame(frame: bytes) -> Lldpdu | None:
    """An Ethernet frame (header included, VLAN tags allowed) -> its LLDPDU, or None."""
    offset = 12
    if len(frame) < offset + 2:
        return None
    ethertype = int.from_bytes(frame[offset : offset + 2], "big")
    while ethertype in _VLAN_TAGS and len(frame) >= offset + 6:
        offset += 4
        ethertype = int.from_bytes(frame[offset : offset + 2], "big")
    if ethertype != ETH_P_LLDP:
        return None
    return parse_lldpdu(frame[offset + 2 :])


def parse_lldpdu(payload: bytes) -> Lldpdu | None:
    """The LLDPDU (what follows the EtherType) -> Lldpdu, or None if it is not well formed."""
    tlvs = split_tlvs(payload)
    if tlvs is None or len(tlvs) < 2 or tlvs[0][0] != TLV_CHASSIS_ID or tlvs[1][0] != TLV_PORT_ID:
        return None
    chassis_id = _decode_id(tlvs[0][1], _CHASSIS_TEXT, _CHASSIS_MAC, _CHASSIS_NETWORK)
    port_id = _decode_id(tlvs[1][1], _PORT_TEXT, _PORT_MAC, _PORT_NETWORK)
    if chassis_id is None or port_id is None:
        return None
    ttl = None
    if len(tlvs) > 2 and tlvs[2][0] == TLV_TTL and len(tlvs[2][1]) == 2:
        ttl = int.from_bytes(tlvs[2][1], "big")
    return Lldpdu(
        tlvs=tlvs,
        chassis_id=chassis_id,
        port_id=port_id,
        ttl=ttl,
        system_name=_first_text(tlvs, TLV_SYSTEM_NAME),
        port_description=_first_text(tlvs, TLV_PORT_DESCRIPTION),
    )


def split_tlvs(payload: bytes) -> tuple[Tlv, ...] | None:
    """The TLVs up to End (or the end of the bytes); None if one runs past the end."""
    tlvs: list[Tlv] = []
    i = 0
    while i < len(payload):
        if i + 2 > len(payload):
            return None
        header = int.from_bytes(payload[i : i + 2], "big")
        kind, length = header >> 9, header & 0x1FF
        i += 2
        if i + length > len(payload):
            return None
        if kind == TLV_END:
            break
        tlvs.append((kind, payload[i : i + length]))
        i += length
    return tuple(tlvs)


def encode_tlv(kind: int, value: bytes) -> bytes:
    """One TLV (for tests and tools that build frames); kind < 128, len(value) < 512."""
    if not 0 <= kind < 128 or len(value) >= 512:
        raise ValueError(f"TLV type {kind} / length {len(value)} out of range")
    return ((kind << 9) | len(value)).to_bytes(2, "big") + value


def _decode_id(value: bytes, text_subtypes: frozenset[int], mac: int, network: int) -> str | None:
    """A Chassis or Port ID value (subtype byte + id) as text; None if the id is empty or too long."""
    if not 2 <= len(value) <= 256:
        return None
    subtype, data = value[0], value[1:]
    if subtype == mac and len(data) == 6:
        return ":".join(f"{b:02x}" for b in data)
    if subtype == network:
        return _network_address(data)
    if subtype in text_subtypes:
        return _text(data)
    # Port subtype 6 (agent circuit id), reserved subtypes, MACs of the wrong length: show the bytes.
    return data.hex()


def _network_address(data: bytes) -> str:
    family = _FAMILIES.get(data[0])
    if family is not None and len(data) == 1 + family[1]:
        return socket.inet_ntop(family[0], data[1:])
    return data.hex()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").rstrip("\x00")


def _first_text(tlvs: Iterable[Tlv], kind: int) -> str | None:
    for found, value in tlvs:
        if found == kind:
            return _text(value)
    return None


# -- listening (I/O) ------------------------------------------------------------------------------


def listen(
    ifnames: Iterable[str], wait: float, clock: Callable[[], float] = time.monotonic
) -> tuple[dict[str, Lldpdu], dict[str, str]]:
    """Wait up to ``wait`` seconds in all for one LLDPDU on each interface.

    Returns (what each interface heard, why an interface could not listen). Needs CAP_NET_RAW;
    without it every interface lands in the second dict. Returns early once all have heard one.
    """
    socks: dict[socket.socket, str] = {}
    errors: dict[str, str] = {}
    for name in ifnames:
        try:
            socks[_open(name)] = name
        except OSError as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    heard: dict[str, Lldpdu] = {}
    deadline = clock() + wait
    try:
        while socks and (left := deadline - clock()) > 0:
            ready, _, _ = select.select(list(socks), [], [], left)
            for sock in ready:
                found = _receive(sock)
                if found is not None:
                    heard[socks.pop(sock)] = found
                    sock.close()
    finally:
        for sock in socks:
            sock.close()
    return heard, errors


def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_LLDP))
    try:
        sock.bind((ifname, ETH_P_LLDP))
        # The NIC drops multicast it was not asked for; join the LLDP group instead of going promiscuous.
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_MULTICAST, 6, LLDP_MULTICAST)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _receive(sock: socket.socket) -> Lldpdu | None:
    try:
        frame, address = sock.recvfrom(MAX_FRAME)
    except OSError:
        return None
    # A packet socket also sees what this host sends; only a neighbour's frames count.
    if len(address) > 2 and address[2] == PACKET_OUTGOING:
        return None
    return parse_frame(frame)
