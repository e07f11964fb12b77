# TFTP wire format (RFC 1350) and option negotiation (RFC 2347, 2348, 2349, 7440).
#
# Rules for this file:
#   1. Parsing never raises anything but MalformedPacket. Anything a socket can hand us is either
#      a packet or a MalformedPacket; the servers count those and drop them.
#   2. Encoding is the exact inverse of parsing for every packet parse_packet() accepts, except
#      that option names come back lower-cased (RFC 2347 makes them case-insensitive).
#   3. Strings on the wire are bytes. We decode them as UTF-8 with surrogateescape, which is what
#      os.fsdecode does on Linux, so any filename a client sends maps to exactly one path and the
#      round trip is lossless.
#   4. negotiate() is pure: it looks only at the request and the limits it is given. It returns
#      only options the client asked for, which is the RFC 2347 rule that firmware enforces
#      (edk2 and others reject an OACK carrying an unrequested tsize).
#
# The DATA hot path does not go through the dataclasses here: the transfer writes headers into a
# preallocated buffer and reads ACKs with struct. These codecs are for everything else and tests.

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BLKSIZE",
    "MAX_BLKSIZE",
    "MAX_WINDOWSIZE",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "MalformedPacket",
    "Negotiated",
    "OAck",
    "Opcode",
    "Packet",
    "Request",
    "encode_packet",
    "negotiate",
    "parse_packet",
]

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464  # RFC 2348
MAX_WINDOWSIZE = 65535  # RFC 7440
_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347; edk2 also uses it to end its tsize probe


class MalformedPacket(ValueError):
    """The datagram is not a TFTP packet we can parse; the caller drops and counts it."""


@dataclass(frozen=True, slots=True)
class Request:
    opcode: Opcode  # RRQ or WRQ
    filename: str
    mode: str  # lower-cased: "octet", "netascii" or "mail"
    options: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int  # ErrorCode, but peers send values outside the enum and we keep them
    message: str


@dataclass(frozen=True, slots=True)
class OAck:
    options: dict[str, str] = field(default_factory=dict, hash=False)


Packet = Request | Data | Ack | Error | OAck


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    if "\0" in text:
        raise ValueError("TFTP strings cannot contain NUL")
    return text.encode("utf-8", "surrogateescape")


def _split_strings(body: bytes) -> list[str]:
    # Every string is NUL-terminated, including the last one (RFC 1350 figure 5-1).
    if not body.endswith(b"\0"):
        raise MalformedPacket("string field without NUL terminator")
    return [_decode(part) for part in body[:-1].split(b"\0")]


def _parse_options(parts: list[str]) -> dict[str, str]:
    if len(parts) % 2:
        raise MalformedPacket("option name without value")
    options: dict[str, str] = {}
    for name, value in zip(parts[::2], parts[1::2], strict=True):
        if not name:
            raise MalformedPacket("empty option name")
        # A repeated option is ambiguous; keeping the first is what tftpd-hpa does.
        options.setdefault(name.lower(), value)
    return options


def _parse_request(opcode: Opcode, body: bytes) -> Request:
    parts = _split_strings(body)
    if len(parts) < 2 or not parts[0]:
        raise MalformedPacket("request without filename or mode")
    return Request(opcode, parts[0], parts[1].lower(), _parse_options(parts[2:]))


def _parse_error(body: bytes) -> Error:
    if len(body) < 3:
        raise MalformedPacket("short ERROR packet")
    (code,) = _OPCODE.unpack_from(body)
    # Some stacks omit the terminator on the message; accept that rather than lose the code.
    message = body[2:]
    message = message[: message.index(0)] if 0 in message else message
    return Error(code, _decode(bytes(message)))


def parse_packet(datagram: bytes | bytearray | memoryview) -> Packet:
    """Parse one datagram; raise MalformedPacket (and nothing else) if it is not TFTP."""
    data = bytes(datagram)
    if len(data) < 4:
        raise MalformedPacket(f"datagram of {len(data)} bytes is too short")
    (raw_opcode,) = _OPCODE.unpack_from(data)
    try:
        opcode = Opcode(raw_opcode)
    except ValueError:
        raise MalformedPacket(f"unknown opcode {raw_opcode}") from None
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _parse_request(opcode, data[2:])
    if opcode is Opcode.DATA:
        return Data(_OPCODE.unpack_from(data, 2)[0], data[4:])
    if opcode is Opcode.ACK:
        if len(data) != 4:
            raise MalformedPacket("ACK must be 4 bytes")
        return Ack(_OPCODE.unpack_from(data, 2)[0])
    if opcode is Opcode.ERROR:
        return _parse_error(data[2:])
    return OAck(_parse_options(_split_strings(data[2:])))


def _strings(*parts: str) -> bytes:
    return b"".join(_encode(p) + b"\0" for p in parts)


def _option_strings(options: dict[str, str]) -> bytes:
    return b"".join(_strings(k, v) for k, v in options.items())


def encode_packet(packet: Packet) -> bytes:
    """Serialise a packet. Raises ValueError for values that do not fit the wire format."""
    if isinstance(packet, Request):
        head = _OPCODE.pack(packet.opcode) + _strings(packet.filename, packet.mode)
        return head + _option_strings(packet.options)
    if isinstance(packet, Data):
        return _HEADER.pack(Opcode.DATA, packet.block) + packet.payload
    if isinstance(packet, Ack):
        return _HEADER.pack(Opcode.ACK, packet.block)
    if isinstance(packet, Error):
        return _HEADER.pack(Opcode.ERROR, packet.code) + _strings(packet.message)
    if not packet.options:
        raise ValueError("an OACK needs at least one option; send DATA instead (RFC 2347)")
    return _OPCODE.pack(Opcode.OACK) + _option_strings(packet.options)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a transfer runs with, and the OACK options (empty: send DATA straight away)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None  # seconds from the RFC 2349 option, None: the server default
    oack: dict[str, str] = field(default_factory=dict, hash=False)


def _as_int(text: str) -> int | None:
    # int() accepts "+5", " 5" and "5_0"; the RFCs mean plain ASCII digits.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def negotiate(
    options: dict[str, str], size: int | None, *, max_blksize: int, max_windowsize: int
) -> Negotiated:
    """Answer a read request's options. Options we cannot honour are left out of the OACK,
    which RFC 2347 defines as declining them; nothing here fails the request."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    oack: dict[str, str] = {}
    for name, raw in options.items():
        value = _as_int(raw)
        if value is None:
            continue
        if name == "blksize" and value >= MIN_BLKSIZE:
            # RFC 2348 lets the server answer with a smaller size; we cap to fit the MTU.
            blksize = min(value, max_blksize, MAX_BLKSIZE)
            oack[name] = str(blksize)
        elif name == "windowsize" and value >= 1:
            windowsize = min(value, max_windowsize, MAX_WINDOWSIZE)
            oack[name] = str(windowsize)
        elif name == "timeout" and 1 <= value <= 255:
            # RFC 2349: the server must use the value as given or decline the option.
            timeout = float(value)
            oack[name] = str(value)
        elif name == "tsize" and size is not None:
            # In a read request the client sends 0 and we answer with the real size.
            oack[name] = str(size)
    return Negotiated(blksize, windowsize, timeout, oack)
