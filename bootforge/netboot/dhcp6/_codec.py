"""DHCPv6 messages and the options network boot needs (RFC 8415, RFC 5970, RFC 6939), as bytes <-> values.

Contract: `parse(bytes)` returns a `Message` or a `RelayMessage`, or raises `Dhcp6ParseError`, never
anything else (the fuzz tests hold us to that). Option values stay raw `bytes` in arrival order; the
decoders below read one option when a decision needs it and raise `Dhcp6ParseError` for bad input.

An option that cannot be kept does not sink the message, it is left out and its reason recorded in
`defects` (which the core counts): one that runs past the end ("truncated_option", which also ends
the scan), one whose length is wrong for its code ("bad_length_option"), a second copy of an option
that may appear once ("duplicate_option"), and anything past `MAX_OPTIONS` ("too_many_options").
`defects` is not part of a message's equality, so encode -> parse is the identity.

A Relay Message option (9) stays raw here: the core unwraps nested relays itself, one level at a
time, so the depth is bounded by a counter rather than by recursion in the parser.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_MESSAGE",
    "MAX_OPTIONS",
    "Dhcp6EncodeError",
    "Dhcp6Error",
    "Dhcp6ParseError",
    "Duid",
    "IaAddress",
    "IaNa",
    "Message",
    "MsgType",
    "Opt6",
    "RelayMessage",
    "Status",
    "VendorClass",
    "decode_addresses",
    "decode_client_arch",
    "decode_duid",
    "decode_ia_address",
    "decode_ia_na",
    "decode_link_layer",
    "decode_oro",
    "decode_status",
    "decode_string_list",
    "decode_vendor_class",
    "duid_en",
    "duid_ll",
    "duid_llt",
    "duid_uuid",
    "encode",
    "encode_ia_address",
    "encode_ia_na",
    "encode_option",
    "encode_status",
    "encode_string_list",
    "encode_vendor_class",
    "parse",
]

# A DHCPv6 message rides in one UDP datagram; a client's or a relay's is far smaller than this, and
# anything bigger is not worth reading.
MAX_MESSAGE = 4096
MAX_OPTIONS = 64
_OPTION = struct.Struct("!HH")
_RELAY = struct.Struct("!BB16s16s")


class Dhcp6Error(Exception):
    """Base class; `reason` is a short stable token used as a drop-counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Dhcp6ParseError(Dhcp6Error):
    """The peer sent bytes we cannot read: the datagram is dropped and counted."""


class Dhcp6EncodeError(Dhcp6Error):
    """We asked for a message that cannot be encoded."""


class MsgType(enum.IntEnum):
    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


RELAY_TYPES = frozenset({MsgType.RELAY_FORW, MsgType.RELAY_REPL})


class Opt6(enum.IntEnum):
    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    USER_CLASS = 15
    VENDOR_CLASS = 16
    INTERFACE_ID = 18
    DNS_SERVERS = 23
    BOOTFILE_URL = 59
    BOOTFILE_PARAM = 60
    CLIENT_ARCH_TYPE = 61
    CLIENT_LINKLAYER_ADDR = 79


class Status(enum.IntEnum):
    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5


# Options that may appear once per message (or once per IA for IAADDR's parent); a second copy
# is dropped. IA_NA, VENDOR_CLASS and IAADDR legitimately repeat.
_SINGLE = frozenset(
    {
        Opt6.CLIENTID, Opt6.SERVERID, Opt6.ORO, Opt6.PREFERENCE, Opt6.ELAPSED_TIME, Opt6.RELAY_MSG,
        Opt6.STATUS_CODE, Opt6.RAPID_COMMIT, Opt6.USER_CLASS, Opt6.INTERFACE_ID, Opt6.DNS_SERVERS,
        Opt6.BOOTFILE_URL, Opt6.BOOTFILE_PARAM, Opt6.CLIENT_ARCH_TYPE, Opt6.CLIENT_LINKLAYER_ADDR,
    }
)  # fmt: skip


def _length_ok(code: int, n: int) -> bool:
    """Whether `n` bytes is a possible value length for option `code` (RFC 8415 section 21)."""
    if code in (Opt6.CLIENTID, Opt6.SERVERID):
        return 4 <= n <= 130  # type code + at most 128 octets (RFC 8415 11.1)
    if code == Opt6.IA_NA:
        return n >= 12
    if code == Opt6.IAADDR:
        return n >= 24
    if code == Opt6.ORO:
        return n % 2 == 0
    if code == Opt6.PREFERENCE:
        return n == 1
    if code == Opt6.ELAPSED_TIME:
        return n == 2
    if code == Opt6.STATUS_CODE:
        return n >= 2
    if code == Opt6.RAPID_COMMIT:
        return n == 0
    if code == Opt6.VENDOR_CLASS:
        return n >= 4
    if code == Opt6.DNS_SERVERS:
        return n % 16 == 0
    if code == Opt6.CLIENT_ARCH_TYPE:
        return n >= 2 and n % 2 == 0
    if code == Opt6.CLIENT_LINKLAYER_ADDR:
        return 3 <= n <= 2 + 20
    if code == Opt6.BOOTFILE_URL:
        return 1 <= n <= 1024
    if code == Opt6.INTERFACE_ID:
        return 1 <= n <= 256
    return True


@dataclass(frozen=True, slots=True)
class Message:
    """A client/server message: type, 24-bit transaction id, options as (code, value) pairs."""

    msg_type: int
    transaction_id: int
    options: tuple[tuple[int, bytes], ...] = ()
    defects: tuple[str, ...] = field(default=(), compare=False)

    def get(self, code: int) -> bytes | None:
        for c, value in self.options:
            if c == code:
                return value
        return None

    def all(self, code: int) -> list[bytes]:
        return [value for c, value in self.options if c == code]


@dataclass(frozen=True, slots=True)
class RelayMessage:
    """RELAY-FORW / RELAY-REPL (RFC 8415 9): addresses are 16 raw bytes."""

    msg_type: int
    hop_count: int
    link_address: bytes
    peer_address: bytes
    options: tuple[tuple[int, bytes], ...] = ()
    defects: tuple[str, ...] = field(default=(), compare=False)

    def get(self, code: int) -> bytes | None:
        for c, value in self.options:
            if c == code:
                return value
        return None


def scan_options(data: bytes | memoryview, start: int, end: int) -> tuple[list[tuple[int, bytes]], list[str]]:
    """TLVs in data[start:end] and the defects of the ones left out."""
    options: list[tuple[int, bytes]] = []
    defects: list[str] = []
    seen: set[int] = set()
    i = start
    while i < end:
        if i + 4 > end:
            defects.append("truncated_option")
            break
        code, n = _OPTION.unpack_from(data, i)
        j = i + 4 + n
        if j > end:
            defects.append("truncated_option")
            break
        i = j
        if len(options) >= MAX_OPTIONS:
            defects.append("too_many_options")
            break
        if not _length_ok(code, n):
            defects.append("bad_length_option")
            continue
        if code in _SINGLE:
            if code in seen:
                defects.append("duplicate_option")
                continue
            seen.add(code)
        options.append((code, bytes(data[j - n : j])))
    return options, defects


def parse(data: bytes) -> Message | RelayMessage:
    if len(data) > MAX_MESSAGE:
        raise Dhcp6ParseError("too_long", f"{len(data)} bytes")
    if len(data) < 4:
        raise Dhcp6ParseError("too_short", f"{len(data)} bytes")
    msg_type = data[0]
    if msg_type in RELAY_TYPES:
        if len(data) < _RELAY.size:
            raise Dhcp6ParseError("too_short", f"{len(data)}-byte relay message")
        _, hops, link, peer = _RELAY.unpack_from(data)
        options, defects = scan_options(data, _RELAY.size, len(data))
        return RelayMessage(msg_type, hops, link, peer, tuple(options), tuple(defects))
    xid = int.from_bytes(data[1:4], "big")
    options, defects = scan_options(data, 4, len(data))
    return Message(msg_type, xid, tuple(options), tuple(defects))


def encode_option(code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise Dhcp6EncodeError("option_too_long", f"option {code}: {len(value)} bytes")
    return _OPTION.pack(code, len(value)) + value


def encode(message: Message | RelayMessage) -> bytes:
    body = b"".join(encode_option(c, v) for c, v in message.options)
    if isinstance(message, RelayMessage):
        if len(message.link_address) != 16 or len(message.peer_address) != 16:
            raise Dhcp6EncodeError("bad_field", "relay addresses must be 16 bytes")
        head = _RELAY.pack(message.msg_type, message.hop_count, message.link_address, message.peer_address)
    else:
        if not 0 <= message.transaction_id < 1 << 24:
            raise Dhcp6EncodeError("bad_field", "transaction id is 24 bits")
        head = bytes((message.msg_type,)) + message.transaction_id.to_bytes(3, "big")
    return head + body


# -- DUIDs (RFC 8415 11) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Duid:
    """A DUID as received (`raw`), with its type and, for DUID-LLT/LL of Ethernet, the MAC."""

    raw: bytes
    duid_type: int
    mac: bytes | None


def decode_duid(value: bytes) -> Duid:
    if not 4 <= len(value) <= 130:
        raise Dhcp6ParseError("bad_duid", f"{len(value)} bytes")
    duid_type = int.from_bytes(value[:2], "big")
    mac: bytes | None = None
    if duid_type == 1:  # LLT: hardware type, time, link-layer address
        if len(value) < 8:
            raise Dhcp6ParseError("bad_duid", "DUID-LLT shorter than 8 bytes")
        if value[2:4] == b"\x00\x01" and len(value) == 14:
            mac = value[8:]
    elif duid_type == 2:  # EN: enterprise number, identifier
        if len(value) < 7:
            raise Dhcp6ParseError("bad_duid", "DUID-EN shorter than 7 bytes")
    elif duid_type == 3:  # LL: hardware type, link-layer address
        if value[2:4] == b"\x00\x01" and len(value) == 10:
            mac = value[4:]
    elif duid_type == 4 and len(value) != 18:  # UUID (RFC 6355)
        raise Dhcp6ParseError("bad_duid", "DUID-UUID is not 18 bytes")
    return Duid(value, duid_type, mac)


def duid_llt(mac: bytes, time: int, hardware_type: int = 1) -> bytes:
    return struct.pack("!HHI", 1, hardware_type, time) + mac


def duid_en(enterprise: int, identifier: bytes) -> bytes:
    return struct.pack("!HI", 2, enterprise) + identifier


def duid_ll(mac: bytes, hardware_type: int = 1) -> bytes:
    return struct.pack("!HH", 3, hardware_type) + mac


def duid_uuid(uuid_bytes: bytes) -> bytes:
    if len(uuid_bytes) != 16:
        raise Dhcp6EncodeError("bad_field", "a UUID is 16 bytes")
    return b"\x00\x04" + uuid_bytes


# -- IA_NA and IA Address (RFC 8415 21.4, 21.6) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class IaAddress:
    address: bytes  # 16 bytes
    preferred: int
    valid: int
    options: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class IaNa:
    iaid: int
    t1: int
    t2: int
    options: tuple[tuple[int, bytes], ...] = ()

    def addresses(self) -> list[IaAddress]:
        """The IA Address options; a malformed one raises `Dhcp6ParseError` (the core drops the message)."""
        out = []
        for code, value in self.options:
            if code == Opt6.IAADDR:
                out.append(decode_ia_address(value))
        return out


def decode_ia_na(value: bytes) -> IaNa:
    if len(value) < 12:
        raise Dhcp6ParseError("bad_option", "IA_NA shorter than 12 bytes")
    iaid, t1, t2 = struct.unpack_from("!III", value)
    options, defects = scan_options(value, 12, len(value))
    if defects:
        raise Dhcp6ParseError("bad_option", f"IA_NA: {defects[0]}")
    return IaNa(iaid, t1, t2, tuple(options))


def encode_ia_na(ia: IaNa) -> bytes:
    return struct.pack("!III", ia.iaid, ia.t1, ia.t2) + b"".join(encode_option(c, v) for c, v in ia.options)


def decode_ia_address(value: bytes) -> IaAddress:
    if len(value) < 24:
        raise Dhcp6ParseError("bad_option", "IA Address shorter than 24 bytes")
    address, preferred, valid = struct.unpack_from("!16sII", value)
    options, defects = scan_options(value, 24, len(value))
    if defects:
        raise Dhcp6ParseError("bad_option", f"IA Address: {defects[0]}")
    return IaAddress(address, preferred, valid, tuple(options))


def encode_ia_address(ia: IaAddress) -> bytes:
    if len(ia.address) != 16:
        raise Dhcp6EncodeError("bad_field", "an IPv6 address is 16 bytes")
    head = struct.pack("!16sII", ia.address, ia.preferred, ia.valid)
    return head + b"".join(encode_option(c, v) for c, v in ia.options)


# -- the small options ----------------------------------------------------------------------------


def decode_oro(value: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise Dhcp6ParseError("bad_option", "ORO length is odd")
    return struct.unpack(f"!{len(value) // 2}H", value)


def decode_client_arch(value: bytes) -> tuple[int, ...]:
    """Option 61 (RFC 5970 3.3): 16-bit architecture types, most preferred first (as option 93)."""
    if not value or len(value) % 2:
        raise Dhcp6ParseError("bad_option", "option 61 length is not a positive multiple of 2")
    return struct.unpack(f"!{len(value) // 2}H", value)


def decode_status(value: bytes) -> tuple[int, str]:
    if len(value) < 2:
        raise Dhcp6ParseError("bad_option", "status code shorter than 2 bytes")
    return int.from_bytes(value[:2], "big"), value[2:].decode("utf-8", "replace")


def encode_status(code: int, message: str = "") -> bytes:
    return code.to_bytes(2, "big") + message.encode()


def decode_addresses(value: bytes) -> tuple[bytes, ...]:
    if len(value) % 16:
        raise Dhcp6ParseError("bad_option", "address list is not a multiple of 16 bytes")
    return tuple(value[i : i + 16] for i in range(0, len(value), 16))


def decode_string_list(value: bytes) -> tuple[bytes, ...]:
    """User Class (15) data, Boot File Parameters (60): 16-bit length-prefixed strings."""
    out: list[bytes] = []
    i, n = 0, len(value)
    while i < n:
        if i + 2 > n:
            raise Dhcp6ParseError("bad_option", "truncated string length")
        size = int.from_bytes(value[i : i + 2], "big")
        if i + 2 + size > n:
            raise Dhcp6ParseError("bad_option", "string runs past the option")
        out.append(value[i + 2 : i + 2 + size])
        i += 2 + size
    return tuple(out)


def encode_string_list(entries: Iterable[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(2, "big") + e for e in entries)


@dataclass(frozen=True, slots=True)
class VendorClass:
    """Option 16: an enterprise number and opaque class strings ("PXEClient:Arch:00007:...")."""

    enterprise: int
    data: tuple[bytes, ...]


def decode_vendor_class(value: bytes) -> VendorClass:
    if len(value) < 4:
        raise Dhcp6ParseError("bad_option", "vendor class shorter than 4 bytes")
    return VendorClass(int.from_bytes(value[:4], "big"), decode_string_list(value[4:]))


def encode_vendor_class(vendor: VendorClass) -> bytes:
    return vendor.enterprise.to_bytes(4, "big") + encode_string_list(vendor.data)


def decode_link_layer(value: bytes) -> tuple[int, bytes]:
    """Option 79 (RFC 6939): the client's hardware type and link-layer address, added by a relay."""
    if len(value) < 3:
        raise Dhcp6ParseError("bad_option", "option 79 shorter than 3 bytes")
    return int.from_bytes(value[:2], "big"), value[2:]


def options_bytes(options: Sequence[tuple[int, bytes]]) -> bytes:
    return b"".join(encode_option(c, v) for c, v in options)
