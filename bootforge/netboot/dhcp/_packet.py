"""BOOTP/DHCP message <-> `DhcpPacket` (RFC 2131 section 2, RFC 2132, RFC 3396).

Contract: `parse(bytes)` returns a `DhcpPacket` or raises `DhcpParseError`, never anything else
(the fuzz tests hold us to that). `encode(packet, max_size=...)` returns bytes or raises
`DhcpEncodeError`.

Options are kept as `{code: raw value}` in arrival order. Repeated codes are concatenated
(RFC 3396), across the options field, then `file`, then `sname` when option 52 overloads them;
a parsed packet therefore never shows option 52, and an overloaded `file`/`sname` reads as empty.
Encoding does the reverse: it moves options into `file` and then `sname` (if those are unused)
when the options field would push the message past `max_size`.

Option 82 is always encoded last in the options field (RFC 3046 2.2: the relay agent strips it
and expects to find it at the end).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._options import DhcpEncodeError, DhcpParseError, Opt, encode_option

__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "MAGIC_COOKIE",
    "MIN_REPLY_SIZE",
    "DhcpPacket",
    "encode",
    "encode_raw",
    "parse",
]

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
# dnsmasq: "the Linux in-kernel DHCP client silently ignores any packet smaller than this".
MIN_REPLY_SIZE = 300
# RFC 2131: every client accepts a 576-byte IP datagram, i.e. 548 bytes of DHCP message.
DEFAULT_MAX_SIZE = 576 - 28
ZERO4 = b"\x00\x00\x00\x00"

HEADER = _HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
_FIXED = _HEADER.size  # 240, including the magic cookie
_SNAME_AT, _FILE_AT = 44, 108
_OVERLOAD_FILE, _OVERLOAD_SNAME = 1, 2


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, ~3x the
# cost of a plain one, and one of these is built for every datagram (bench/netboot_dhcp.py).
@dataclass(slots=True)
class DhcpPacket:
    """One DHCP message. Addresses are 4 raw bytes; `chaddr` is the first `hlen` bytes only."""

    op: int
    xid: int
    chaddr: bytes
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: bytes = ZERO4
    yiaddr: bytes = ZERO4
    siaddr: bytes = ZERO4
    giaddr: bytes = ZERO4
    sname: bytes = b""  # without trailing NULs
    file: bytes = b""  # without trailing NULs
    options: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int | None:
        value = self.options.get(Opt.MESSAGE_TYPE)
        return value[0] if value is not None and len(value) == 1 else None

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & 0x8000)


def parse(data: bytes) -> DhcpPacket:
    if len(data) < _FIXED:
        raise DhcpParseError("too_short", f"{len(data)} bytes")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file, cookie) = _HEADER.unpack_from(data)  # fmt: skip
    if cookie != MAGIC_COOKIE:
        raise DhcpParseError("bad_cookie")
    if hlen > 16:
        raise DhcpParseError("bad_hlen", str(hlen))
    options: dict[int, bytes] = {}
    _scan(data, _FIXED, len(data), options)
    overload = options.pop(Opt.OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or not 1 <= overload[0] <= 3:
            raise DhcpParseError("bad_overload")
        # RFC 3396 order: options field, then file, then sname.
        if overload[0] & _OVERLOAD_FILE:
            _scan(data, _FILE_AT, _FILE_AT + 128, options)
            file = b""
        if overload[0] & _OVERLOAD_SNAME:
            _scan(data, _SNAME_AT, _SNAME_AT + 64, options)
            sname = b""
        options.pop(Opt.OVERLOAD, None)
    return DhcpPacket(
        op, xid, chaddr[:hlen], htype, hops, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
        sname.rstrip(b"\x00"), file.rstrip(b"\x00"), options,
    )  # fmt: skip


def _scan(data: bytes, i: int, end: int, out: dict[int, bytes]) -> None:
    """TLVs from data[i:end] into `out`. A missing END is tolerated (some relays drop it)."""
    while i < end:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            return
        if i + 1 >= end:
            raise DhcpParseError("truncated_option", f"code {code}")
        j = i + 2 + data[i + 1]
        if j > end:
            raise DhcpParseError("truncated_option", f"code {code}")
        previous = out.get(code)
        out[code] = data[i + 2 : j] if previous is None else previous + data[i + 2 : j]
        i = j


def encode(packet: DhcpPacket, *, max_size: int = 1500 - 28) -> bytes:
    """`packet` as bytes no longer than `max_size` (which must allow at least 300)."""
    if len(packet.sname) > 64 or len(packet.file) > 128 or len(packet.chaddr) > 16:
        raise DhcpEncodeError("bad_field", "sname, file or chaddr too long")
    chunks = [encode_option(c, v) for c, v in packet.options.items() if c != Opt.RELAY_AGENT_INFO]
    relay = packet.options.get(Opt.RELAY_AGENT_INFO)
    tail = encode_option(Opt.RELAY_AGENT_INFO, relay) if relay is not None else b""
    header = _HEADER.pack(
        packet.op, packet.htype, len(packet.chaddr), packet.hops, packet.xid, packet.secs,
        packet.flags, packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr, packet.chaddr,
        packet.sname, packet.file, MAGIC_COOKIE,
    )  # fmt: skip
    return encode_raw(header, chunks, tail, max_size, sname_free=not packet.sname,
                      file_free=not packet.file)  # fmt: skip


def encode_raw(
    header: bytes,
    chunks: list[bytes],
    tail: bytes,
    max_size: int,
    *,
    sname_free: bool = False,
    file_free: bool = False,
) -> bytes:
    """The hot-path encoder: a packed 240-byte header, pre-encoded option TLVs and `tail`
    (option 82, placed last). Overloads `file`/`sname` only when it must."""
    body = b"".join(chunks)
    size = _FIXED + len(body) + len(tail) + 1
    if size <= max_size:
        message = b"".join((header, body, tail, b"\xff"))
        if size < MIN_REPLY_SIZE:
            message += bytes(MIN_REPLY_SIZE - size)
        return message
    return _encode_overloaded(header, chunks, tail, max_size, sname_free, file_free)


def _encode_overloaded(
    header: bytes, chunks: list[bytes], tail: bytes, max_size: int, sname_free: bool,
    file_free: bool,
) -> bytes:  # fmt: skip
    # Option 52 itself (3 bytes) and END take room in the options field.
    room = max_size - _FIXED - len(tail) - 3 - 1
    if room < 0:
        raise DhcpEncodeError("reply_too_large", "no room for options")
    areas: list[list[bytes]] = [[], [], []]  # options field, file, sname (RFC 3396 order)
    limits = [room, 127 if file_free else -1, 63 if sname_free else -1]
    used = [0, 0, 0]
    area = 0
    for chunk in chunks:
        while area < 3 and used[area] + len(chunk) > limits[area]:
            area += 1
        if area == 3:
            raise DhcpEncodeError("reply_too_large", f"{sum(map(len, chunks))} bytes of options")
        areas[area].append(chunk)
        used[area] += len(chunk)
    flag = (_OVERLOAD_FILE if areas[1] else 0) | (_OVERLOAD_SNAME if areas[2] else 0)
    out = bytearray(header)
    if areas[2]:
        out[_SNAME_AT : _SNAME_AT + 64] = _field(areas[2], 64)
    if areas[1]:
        out[_FILE_AT : _FILE_AT + 128] = _field(areas[1], 128)
    out += b"".join(areas[0])
    if flag:
        out += bytes((Opt.OVERLOAD, 1, flag))
    out += tail + b"\xff"
    if len(out) < MIN_REPLY_SIZE:
        out += bytes(MIN_REPLY_SIZE - len(out))
    return bytes(out)


def _field(chunks: list[bytes], size: int) -> bytes:
    data = b"".join(chunks) + b"\xff"
    return data + bytes(size - len(data))
