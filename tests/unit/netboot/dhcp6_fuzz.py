"""Mutation fuzzing of the DHCPv6 core, shared by test_dhcp6_fuzz.py and bench/fuzz_netboot.py.

The seeds are dhcp6_samples' client messages; the mutations are netboot_fuzz's generic ones plus
three that know DHCPv6's 16-bit option TLVs (a length set to anything, an option dropped, an option
repeated). Invariants checked on every datagram: nothing raises, every datagram a core did not act
on is counted exactly once in `drops`, every option the parser left out once in `option_drops`, and
every reply parses as a server message.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network

from dhcp6_samples import SERVER_DUID, seeds
from netboot_fuzz import GENERIC, Op, mutate

from bootforge.netboot import dhcp, dhcp6

DHCP6_OPS = (*GENERIC, "tlv6_len", "tlv6_drop", "tlv6_dup")
SERVER = IPv6Address("fd00::1")
PREFIX = IPv6Network("fd00::/64")
BOOT6 = dhcp6.StaticBoot6Source(SERVER, "http://[fd00::1]:8080/boot", "http://[fd00::1]:8080/ipxe/{mac}")
KNOWN = dhcp.StaticReservations({"52:54:00:12:34:56": dhcp.Reservation("node-1")})


def full_config(**overrides: object) -> dhcp6.Dhcp6Config:
    settings: dict[str, object] = {
        "mode": dhcp6.Mode6.FULL,
        "server_duid": SERVER_DUID,
        "prefix": PREFIX,
        "pool_first": IPv6Address("fd00::1:0:0:1000"),
        "pool_last": IPv6Address("fd00::1:0:0:10ff"),
        "dns_servers": (SERVER,),
    }
    settings.update(overrides)
    return dhcp6.Dhcp6Config(**settings)  # type: ignore[arg-type]


def dhcp6_cores() -> list[dhcp6.Dhcp6Core]:
    proxy = dhcp6.Dhcp6Config(dhcp6.Mode6.PROXY, SERVER_DUID, PREFIX)
    return [dhcp6.Dhcp6Core(full_config(), BOOT6, KNOWN), dhcp6.Dhcp6Core(proxy, BOOT6, KNOWN)]


def _tlv6_spans(data: bytearray) -> list[tuple[int, int]]:
    """(start, end) of each top-level option, after a client (4-byte) or relay (34-byte) header."""
    i = 34 if data and data[0] in (12, 13) else 4
    spans = []
    while i + 4 <= len(data):
        end = min(len(data), i + 4 + int.from_bytes(data[i + 2 : i + 4], "big"))
        spans.append((i, end))
        i = end
    return spans


def mutate6(sample: bytes, ops: Sequence[Op]) -> bytes:
    data = bytearray(sample)
    for op in ops:
        kind, position, amount, _ = op
        if not kind.startswith("tlv6"):
            data = bytearray(mutate(bytes(data), [op]))
            continue
        spans = _tlv6_spans(data)
        if not spans:
            continue
        start, end = spans[position % len(spans)]
        if kind == "tlv6_len":
            data[start + 2 : start + 4] = struct.pack("!H", (amount * 37) % 0x10000 if amount % 3 else amount)
        elif kind == "tlv6_drop":
            del data[start:end]
        else:
            data[end:end] = data[start:end]
    return bytes(data)


def random_ops6(rng: random.Random, size: int, most: int = 4) -> list[Op]:
    ops: list[Op] = []
    for _ in range(rng.randint(1, most)):
        kind = rng.choice(DHCP6_OPS)
        if kind == "truncate" and rng.random() < 0.7:
            kind = "flip"
        position = rng.randrange(size) if size and rng.random() < 0.67 else rng.randrange(1 << 16)
        ops.append((kind, position, rng.randrange(300), rng.randbytes(rng.randrange(9))))
    return ops


@dataclass
class Dhcp6Fuzzer:
    cores: list[dhcp6.Dhcp6Core] = field(default_factory=dhcp6_cores)
    now: float = 1000.0
    packets: int = 0
    answered: int = 0
    dropped: int = 0

    def feed(self, datagram: bytes) -> None:
        relayed = bool(datagram) and datagram[0] == 12
        src = ("fd00::1:1", 547) if relayed else ("fe80::5054:ff:fe12:3456", 546)
        for core in self.cores:
            before = sum(core.drops.values())
            outcome = core.receive(datagram, "eth0", self.now, src=src)
            counted = sum(core.drops.values()) - before
            self.packets += 1
            if outcome.dropped is not None:
                assert counted == 1 and core.drops[outcome.dropped] >= 1, (outcome, counted)
                assert outcome.replies == () and outcome.records == ()
                self.dropped += 1
            else:
                assert counted == 0, (outcome, counted)
                self.answered += 1
            for reply in outcome.replies:  # what we send must parse, and be a server's message
                assert len(reply.data) <= dhcp6.MAX_REPLY
                sent = dhcp6.parse(reply.data)
                assert sent.msg_type in (
                    dhcp6.MsgType.ADVERTISE,
                    dhcp6.MsgType.REPLY,
                    dhcp6.MsgType.RELAY_REPL,
                )
                assert sent.defects == ()
        self.now += 0.01
        if self.packets % 997 == 0:
            for core in self.cores:
                core.sweep(self.now)

    def drops(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for core in self.cores:
            total.update(core.drops)
        return total

    def option_drops(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for core in self.cores:
            total.update(core.option_drops)
        return total


SEEDS = seeds()
