"""DHCP option codes and the codecs for the options whose structure we read or write.

Values stay raw `bytes` in a parsed packet; these functions decode one option only when a decision
needs it, which keeps parsing a plain TLV scan (most requests are answered after reading four or
five options). Every decoder raises `DhcpParseError` for malformed input and nothing else.
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DhcpEncodeError",
    "DhcpError",
    "DhcpParseError",
    "MessageType",
    "Opt",
    "RelayAgentInfo",
    "decode_client_arch",
    "decode_guid",
    "decode_ip",
    "decode_u16",
    "decode_u32",
    "decode_user_class",
    "encode_ip_list",
    "encode_option",
    "encode_relay_agent_info",
    "encode_user_class",
    "parse_relay_agent_info",
]


class DhcpError(Exception):
    """Base class; `reason` is a short stable token used as a drop-counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class DhcpParseError(DhcpError):
    """The peer sent bytes we cannot read: the datagram is dropped and counted."""


class DhcpEncodeError(DhcpError):
    """We asked for a message that cannot be encoded (e.g. larger than the client accepts)."""


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Opt(enum.IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    BROADCAST = 28
    INTERFACE_MTU = 26
    VENDOR_OPTS = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_REQUEST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    RELAY_AGENT_INFO = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_GUID = 97
    SUBNET_SELECTION = 118
    IPXE_ENCAP = 175
    END = 255


def encode_option(code: int, value: bytes) -> bytes:
    """One option as TLV bytes; values over 255 bytes become several instances (RFC 3396)."""
    n = len(value)
    if n <= 255:
        return bytes((code, n)) + value
    parts = []
    for i in range(0, n, 255):
        piece = value[i : i + 255]
        parts.append(bytes((code, len(piece))) + piece)
    return b"".join(parts)


def decode_ip(value: bytes) -> bytes:
    if len(value) != 4:
        raise DhcpParseError("bad_option", "address option is not 4 bytes")
    return value


def encode_ip_list(addresses: Iterable[bytes]) -> bytes:
    return b"".join(addresses)


def decode_u16(value: bytes) -> int:
    if len(value) != 2:
        raise DhcpParseError("bad_option", "16-bit option is not 2 bytes")
    return int.from_bytes(value, "big")


def decode_u32(value: bytes) -> int:
    if len(value) != 4:
        raise DhcpParseError("bad_option", "32-bit option is not 4 bytes")
    return int.from_bytes(value, "big")


def decode_client_arch(value: bytes) -> tuple[int, ...]:
    """Option 93 (RFC 4578): a list of 16-bit architecture codes, most preferred first."""
    if not value or len(value) % 2:
        raise DhcpParseError("bad_option", "option 93 length is not a positive multiple of 2")
    return struct.unpack(f"!{len(value) // 2}H", value)


def decode_guid(value: bytes) -> uuid.UUID | None:
    """Option 97: type 0 and 16 bytes, first three UUID fields little-endian (as SMBIOS stores
    them; seen from OVMF). An all-zero GUID means "no UUID" (QEMU without -smbios uuid)."""
    if len(value) != 17 or value[0] != 0:
        raise DhcpParseError("bad_option", "option 97 is not type 0 + 16 bytes")
    if value[1:] == bytes(16):
        return None
    return uuid.UUID(bytes_le=value[1:])


def decode_user_class(value: bytes) -> tuple[bytes, ...]:
    """Option 77 in either form clients actually send.

    RFC 3004 says length-prefixed entries, but iPXE (and ISC dhclient's `user-class "x"`) send
    the raw text. A raw string reads as RFC 3004 only by accident, when its first byte happens to
    be a plausible length that exactly tiles the value; "iPXE" starts with 0x69 and never does.
    """
    if not value:
        raise DhcpParseError("bad_option", "empty option 77")
    entries: list[bytes] = []
    i, n = 0, len(value)
    while i < n:
        size = value[i]
        if size == 0 or i + 1 + size > n:
            return (value,)
        entries.append(value[i + 1 : i + 1 + size])
        i += 1 + size
    return tuple(entries)


def encode_user_class(entries: Iterable[bytes]) -> bytes:
    return b"".join(bytes((len(e),)) + e for e in entries)


@dataclass(frozen=True, slots=True)
class RelayAgentInfo:
    """Option 82 (RFC 3046). `raw` is echoed verbatim; the sub-options are only read."""

    raw: bytes
    circuit_id: bytes | None = None
    remote_id: bytes | None = None
    link_selection: bytes | None = None  # sub-option 5, RFC 3527: a 4-byte address


def parse_relay_agent_info(value: bytes) -> RelayAgentInfo:
    subs: dict[int, bytes] = {}
    i, n = 0, len(value)
    while i < n:
        if i + 2 > n or i + 2 + value[i + 1] > n:
            raise DhcpParseError("bad_option", "truncated option 82 sub-option")
        size = value[i + 1]
        subs[value[i]] = value[i + 2 : i + 2 + size]
        i += 2 + size
    link = subs.get(5)
    if link is not None and len(link) != 4:
        raise DhcpParseError("bad_option", "option 82 link selection is not 4 bytes")
    return RelayAgentInfo(value, subs.get(1), subs.get(2), link)


def encode_relay_agent_info(subs: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((code, len(v))) + v for code, v in subs)
