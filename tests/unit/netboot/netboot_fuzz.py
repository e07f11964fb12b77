"""Mutation fuzzing of the DHCP and TFTP sans-IO cores, shared by the hypothesis tests
(test_fuzz_netboot_cores.py) and bench/fuzz_netboot.py (a million packets).

The seeds are real client messages: the DHCP ones are test_dhcp_samples' hand-assembled captures
plus the REQUEST, RELEASE, DECLINE and INFORM each client sends after our own OFFER; the TFTP ones
are RRQs byte for byte as OVMF, iPXE, GRUB, curl and tftp-hpa send them, and the ACKs and ERRORs of
a data phase. A mutation is a short list of operations (bit flips, byte values, truncation,
insertion, duplication, and operations that know the formats: an option's length byte, a dropped or
repeated option, a missing or extra NUL, a huge number in a TFTP option), so hypothesis can draw
and shrink them and the bench can draw them from a seeded Random.

The invariants checked on every datagram: nothing raises, and every datagram a core did not act on
is counted exactly once (DhcpCore.drops; TftpTransfer.dropped / stale_acks; parse errors on the
request port).
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from test_dhcp_samples import (
    MAC,
    header,
    http_boot_discover,
    ipxe_discover,
    message,
    ovmf_pxe_discover,
    ovmf_pxe_request,
    tlv,
    udhcpc_discover,
)

from bootforge.netboot import dhcp, tftp

Op = tuple[str, int, int, bytes]  # (kind, position, amount, payload)

GENERIC = ("flip", "set", "interesting", "truncate", "insert", "delete", "dup")
DHCP_OPS = (*GENERIC, "tlv_len", "tlv_drop", "tlv_dup")
TFTP_OPS = (*GENERIC, "nul_drop", "nul_add", "number")
_INTERESTING = (b"\0", b"\xff", b"\x7f", b"\x80", b"\x01", b"\0\0", b"\xff\xff", b"\x7f\xff", b"\x80\0")
_NUMBERS = (b"0", b"-1", b"65536", b"99999999999999999999", b"1" * 5000, b"", b" 8", b"0x10", b"1e3")
DHCP_OPTIONS_AT = 240  # BOOTP header (236) + magic cookie: where the options start


def _tlv_spans(data: bytearray) -> list[tuple[int, int]]:
    """(start, end) of each option TLV after the cookie, as far as the lengths can be followed."""
    spans, i = [], DHCP_OPTIONS_AT
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        end = min(len(data), i + 2 + data[i + 1])
        spans.append((i, end))
        i = end
    return spans


def mutate(sample: bytes, ops: Sequence[Op]) -> bytes:
    """Apply `ops` in order; every op is defined for every input (it does nothing if it cannot)."""
    data = bytearray(sample)
    for kind, position, amount, payload in ops:
        n = len(data)
        at = position % (n + 1)
        if kind == "flip" and n:
            data[position % n] ^= 1 << (amount % 8)
        elif kind == "set" and n:
            data[position % n] = payload[0] if payload else amount % 256
        elif kind == "interesting" and n:
            value = _INTERESTING[amount % len(_INTERESTING)]
            data[at : at + len(value)] = value
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = payload
        elif kind == "delete":
            del data[at : at + amount % 64 + 1]
        elif kind == "dup":
            data[at:at] = data[at : at + amount % 64 + 1]
        elif kind.startswith("tlv"):
            spans = _tlv_spans(data)
            if spans:
                start, end = spans[position % len(spans)]
                if kind == "tlv_len":
                    data[start + 1] = amount % 256
                elif kind == "tlv_drop":
                    del data[start:end]
                else:
                    data[end:end] = data[start:end]
        elif kind.startswith("nul"):
            nuls = [i for i, b in enumerate(data) if b == 0 and i >= 2]
            if kind == "nul_drop" and nuls:
                del data[nuls[position % len(nuls)]]
            elif kind == "nul_add":
                data[at:at] = b"\0"
        elif kind == "number":
            # Replace the value after the NUL at a string boundary with a hostile number.
            nuls = [i for i, b in enumerate(data) if b == 0 and i >= 2]
            if len(nuls) >= 2:
                k = position % (len(nuls) - 1)
                data[nuls[k] + 1 : nuls[k + 1]] = _NUMBERS[amount % len(_NUMBERS)]
    return bytes(data)


def random_ops(
    rng: random.Random, kinds: Sequence[str], size: int, most: int = 4, focus: int = 0
) -> list[Op]:
    """1 to `most` ops for a sample of `size` bytes; positions fall between `focus` (where a DHCP
    message's options start) and the end two times in three, and truncation is rarer than the
    rest: a message cut short only tests the length checks."""
    ops: list[Op] = []
    for _ in range(rng.randint(1, most)):
        kind = rng.choice(kinds)
        if kind == "truncate" and rng.random() < 0.7:
            kind = "flip"
        if focus < size and rng.random() < 0.67:
            position = rng.randrange(focus, size)
        else:
            position = rng.randrange(1 << 16)
        ops.append((kind, position, rng.randrange(300), rng.randbytes(rng.randrange(9))))
    return ops


# -- DHCP -----------------------------------------------------------------------------------------

A = IPv4Address
SERVER = A("10.213.0.1")
ETH0 = dhcp.Interface("eth0", SERVER, mtu=1500)
KNOWN_MACS = {
    "52:54:00:12:34:56": dhcp.Reservation("node-1", hostname="node-1"),
    "52:54:00:00:00:aa": dhcp.Reservation("node-2", ip=A("10.213.0.42")),
}
AGENT_MAC = bytes.fromhex("5254000000aa")
RELAY = bytes([10, 213, 1, 1])
BOOT = dhcp.StaticBootSource(SERVER, "http://10.213.0.1:8080/boot", "http://10.213.0.1:8080/ipxe/{mac}")


def dhcp_cores() -> list[dhcp.DhcpCore]:
    """A full-mode server (two subnets, one behind a relay, unknown clients answered) and a proxy."""
    lan = dhcp.Subnet(
        IPv4Network("10.213.0.0/24"),
        (dhcp.Pool(A("10.213.0.100"), A("10.213.0.199")),),
        routers=(SERVER,),
        dns_servers=(SERVER,),
        lease_time=3600,
    )
    relayed = dhcp.Subnet(IPv4Network("10.213.1.0/24"), (dhcp.Pool(A("10.213.1.100"), A("10.213.1.199")),))
    config = dhcp.DhcpConfig(
        dhcp.Mode.FULL, ("eth0",), (lan, relayed), unknown_clients=dhcp.UnknownClients.DISCOVER
    )
    reservations = dhcp.StaticReservations(KNOWN_MACS)
    return [
        dhcp.DhcpCore(config, BOOT, reservations),
        dhcp.DhcpCore(dhcp.DhcpConfig(dhcp.Mode.PROXY, ("eth0",)), BOOT, reservations),
    ]


def _udhcpc(kind: int, mac: bytes, *extra: bytes, xid: int = 0x55DC, ciaddr: bytes = bytes(4)) -> bytes:
    return message(
        [tlv(53, bytes([kind])), tlv(61, b"\x01" + mac), *extra, tlv(60, b"lab-agent"), tlv(12, b"node-1")],
        mac=mac, flags=0, xid=xid, ciaddr=ciaddr,
    )  # fmt: skip


def dhcp_seeds() -> list[tuple[str, bytes, int]]:
    """(name, datagram, server port): the captured DISCOVERs, then what each client sends after
    a clean exchange with a fresh core (REQUEST for our OFFER, renewal, RELEASE, DECLINE, INFORM)."""
    seeds = [
        ("ovmf-pxe-discover", ovmf_pxe_discover(), 67),
        ("ipxe-discover", ipxe_discover(), 67),
        ("ipxe-bios-discover", ipxe_discover(arch=0, undi="002001"), 67),
        ("http-boot-discover", http_boot_discover(), 67),
        ("udhcpc-discover", udhcpc_discover(AGENT_MAC), 67),
        ("ovmf-pxe-4011-request", ovmf_pxe_request(bytes([10, 213, 0, 1]), bytes([10, 213, 0, 150])), 4011),
    ]
    relay_info = dhcp.encode_relay_agent_info([(1, b"eth1"), (2, b"relay-1"), (5, bytes([10, 213, 1, 0]))])
    relayed = header(0x7E1A, MAC, giaddr=RELAY, hops=1)
    relayed += tlv(53, b"\x01") + tlv(93, b"\x00\x07") + tlv(60, b"PXEClient:Arch:00007:UNDI:003000")
    seeds.append(("relayed-discover", relayed + tlv(82, relay_info) + b"\xff", 67))
    core = dhcp_cores()[0]
    offer = core.receive(ovmf_pxe_discover(), ETH0, 1.0).replies[0]
    yiaddr = dhcp.parse(offer.data).yiaddr
    server = SERVER.packed
    seeds.append(("ovmf-pxe-request", ovmf_pxe_request(server, yiaddr), 67))
    offer = core.receive(udhcpc_discover(AGENT_MAC), ETH0, 2.0).replies[0]
    agent_ip = dhcp.parse(offer.data).yiaddr
    seeds += [
        ("udhcpc-request", _udhcpc(3, AGENT_MAC, tlv(50, agent_ip), tlv(54, server)), 67),
        ("udhcpc-renew", _udhcpc(3, AGENT_MAC, ciaddr=agent_ip), 67),
        ("udhcpc-release", _udhcpc(7, AGENT_MAC, tlv(54, server), ciaddr=agent_ip), 67),
        ("udhcpc-decline", _udhcpc(4, AGENT_MAC, tlv(50, agent_ip), tlv(54, server)), 67),
        ("udhcpc-inform", _udhcpc(8, AGENT_MAC, ciaddr=agent_ip), 67),
    ]
    return seeds


@dataclass
class DhcpFuzzer:
    """Feeds datagrams to the cores with a clock that moves, sweeping now and then."""

    cores: list[dhcp.DhcpCore] = field(default_factory=dhcp_cores)
    now: float = 1000.0
    packets: int = 0
    answered: int = 0
    dropped: int = 0

    def feed(self, datagram: bytes, port: int) -> None:
        src = ("0.0.0.0", 68) if port == 67 else ("10.213.0.150", 4011)
        for core in self.cores:
            before = sum(core.drops.values())
            outcome = core.receive(datagram, ETH0, self.now, src=src, port=port)
            counted = sum(core.drops.values()) - before
            self.packets += 1
            if outcome.dropped is not None:
                assert counted == 1 and core.drops[outcome.dropped] >= 1, (outcome, counted)
                assert outcome.replies == () and outcome.records == ()
                self.dropped += 1
            else:
                assert counted == 0, (outcome, counted)
                self.answered += 1
            for reply in outcome.replies:  # what we send must parse as what we meant
                assert dhcp.parse(reply.data).op == dhcp.BOOTREPLY
        self.now += 0.01
        if self.packets % 997 == 0:
            for core in self.cores:
                core.sweep(self.now)

    def drops(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for core in self.cores:
            total.update(core.drops)
        return total


# -- TFTP -----------------------------------------------------------------------------------------

TFTP_FILES = {
    "bootx64.efi": bytes(range(256)) * 40 + b"tail",  # 10,244 bytes: several blocks
    "undionly.kpxe": bytes(512 * 4),  # a whole number of blocks: an empty last one
    "grub/grub.cfg": b"set timeout=5\nmenuentry x {\n\tlinux /vmlinuz\n}\r\n",
    "empty": b"",
}


def tftp_seeds() -> list[tuple[str, bytes]]:
    """Requests as the clients send them (OVMF's size probe and fetch, iPXE, GRUB, curl,
    tftp-hpa in netascii, a write request), then data-phase packets."""
    return [
        ("ovmf-size-probe", b"\0\x01bootx64.efi\0octet\0tsize\x000\0blksize\x001468\0windowsize\x004\0"),
        ("ovmf-fetch", b"\0\x01bootx64.efi\0octet\0blksize\x001468\0windowsize\x004\0"),
        ("ipxe", b"\0\x01undionly.kpxe\0octet\0blksize\x001432\0tsize\x000\0"),
        ("grub", b"\0\x01/grub/grub.cfg\0octet\0blksize\x001024\0tsize\x000\0"),
        ("curl", b"\0\x01bootx64.efi\0octet\0tsize\x000\0blksize\x00512\0timeout\x006\0"),
        ("tftp-hpa-netascii", b"\0\x01grub/grub.cfg\0netascii\0"),
        ("rfc1350-plain", b"\0\x01empty\0octet\0"),
        ("wrq", b"\0\x02upload.bin\0octet\0"),
        ("ack-0", b"\0\x04\0\0"),
        ("ack-1", b"\0\x04\0\x01"),
        ("error-8", b"\0\x05\0\x08User aborted the transfer\0"),
        ("error-0", b"\0\x05\0\0\0"),
        ("data-1", b"\0\x03\0\x01payload"),
    ]


class _Files:
    def open(self, path: str, client: tftp.ClientAddress) -> tftp.Readable:
        data = TFTP_FILES.get(path)
        if data is None:
            raise FileNotFoundError(path)
        return tftp.BytesReadable(data)


Step = tuple[str, bytes]  # ("ack", b""): the ACK a good client sends next; ("timer", b""); ("send", datagram)


@dataclass
class TftpFuzzer:
    """The request port (parse, then a transfer per request) and each transfer's data phase, as
    the server drives them: lockstep_ack() first, receive() when it declines, timers when due."""

    packets: int = 0
    malformed: int = 0  # request port: not TFTP
    unexpected: int = 0  # request port: TFTP, but not a request
    transfers: int = 0
    acted: int = 0  # data-phase datagrams that moved a transfer
    dropped: int = 0
    stale_acks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    config: tftp.TransferConfig = field(
        default_factory=lambda: tftp.TransferConfig(max_blksize=1468, max_retries=2, readahead=4096)
    )

    def session(self, request: bytes, steps: Sequence[Step]) -> None:
        """One datagram on the request port, then `steps` on the transfer it started (if any)."""
        self.packets += 1
        try:
            packet = tftp.parse_packet(request)
        except tftp.MalformedPacket:
            self.malformed += 1
            return
        if not isinstance(packet, tftp.Request):
            self.unexpected += 1
            return
        self.transfers += 1
        transfer = tftp.TftpTransfer(packet, _Files(), ("10.213.0.50", 1234), self.config)
        now = 0.0
        expect = self._sent(transfer.begin(now))
        for kind, datagram in steps:
            if transfer.result is not None:
                break
            now += 0.001
            if kind == "timer":
                if transfer.deadline is not None:
                    now = transfer.deadline
                    expect = self._sent(transfer.on_timer(now), expect)
                continue
            if kind == "ack":
                datagram = struct.pack("!HH", 4, expect & 0xFFFF)
            expect = self._datagram(transfer, datagram, now, expect)
        if transfer.result is None:
            transfer.abandon()
            self.outcomes["abandoned"] += 1
        else:
            self.outcomes[transfer.result.outcome.value] += 1

    def _datagram(self, transfer: tftp.TftpTransfer, datagram: bytes, now: float, expect: int) -> int:
        self.packets += 1
        before = (transfer.dropped, transfer.stale_acks, transfer.state)
        fast = transfer.lockstep_ack(datagram, now)
        if fast is not None:
            self.acted += 1
            return self._sent([fast], expect)
        out = transfer.receive(datagram, now)
        dropped = transfer.dropped - before[0]
        stale = transfer.stale_acks - before[1]
        moved = bool(out) or transfer.state is not before[2]
        assert dropped + stale == (0 if moved else 1), (datagram, dropped, stale, moved)
        self.dropped += dropped
        self.stale_acks += stale
        self.acted += moved
        return self._sent(out, expect)

    @staticmethod
    def _sent(out: Sequence[bytes | memoryview], expect: int = 0) -> int:
        """The block a good client acknowledges next, from what the transfer just sent (each
        packet must parse: a server never sends what it could not read back)."""
        for wire in out:
            packet = tftp.parse_packet(wire)
            if isinstance(packet, tftp.Data):
                expect = packet.block
            elif isinstance(packet, tftp.OAck):
                expect = 0
        return expect

    def drops(self) -> Counter[str]:
        return Counter(
            {
                "malformed": self.malformed,
                "unexpected": self.unexpected,
                "transfer_dropped": self.dropped,
                "stale_acks": self.stale_acks,
            }
        )
