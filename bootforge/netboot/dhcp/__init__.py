"""DHCPv4 as a sans-IO core: full server and proxyDHCP (RFC 2131/2132, 3046, 3396, 3527, 4578).

Containing no networking code at all: `DhcpCore.receive(datagram, interface, now)` returns an
`Outcome`; the asyncio shell is `bootforge.servers.dhcp`. Stdlib only; only the data-only
architecture table is shared from `bootforge.netboot.boot.arch`.
"""

from ._boot import (
    LOADER_MISSING,
    BootDecision,
    BootSource,
    NoBootFile,
    Reservation,
    Reservations,
    StaticBootSource,
    StaticReservations,
    choose_boot,
)
from ._config import DhcpConfig, Interface, Mode, Pool, Subnet, UnknownClients
from ._core import DhcpCore
from ._leases import (
    TRANSITIONS,
    InMemoryLeaseStore,
    LeaseEvent,
    LeaseRecord,
    LeaseState,
    LeaseStore,
    LeaseTransitionError,
)
from ._options import (
    DhcpEncodeError,
    DhcpError,
    DhcpParseError,
    MessageType,
    Opt,
    RelayAgentInfo,
    decode_client_arch,
    decode_guid,
    decode_user_class,
    encode_option,
    encode_relay_agent_info,
    encode_user_class,
    parse_relay_agent_info,
)
from ._packet import BOOTREPLY, BOOTREQUEST, MIN_REPLY_SIZE, DhcpPacket, encode, parse
from ._policy import ClientInfo, Destination, classify, is_netboot_client, reply_destination
from ._replies import NodeEvent, Outcome, Reply

# Everything in __all__ gets re-exported.
__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "LOADER_MISSING",
    "MIN_REPLY_SIZE",
    "TRANSITIONS",
    "BootDecision",
    "BootSource",
    "ClientInfo",
    "Destination",
    "DhcpConfig",
    "DhcpCore",
    "DhcpEncodeError",
    "DhcpError",
    "DhcpPacket",
    "DhcpParseError",
    "InMemoryLeaseStore",
    "Interface",
    "LeaseEvent",
    "LeaseRecord",
    "LeaseState",
    "LeaseStore",
    "LeaseTransitionError",
    "MessageType",
    "Mode",
    "NoBootFile",
    "NodeEvent",
    "Opt",
    "Outcome",
    "Pool",
    "RelayAgentInfo",
    "Reply",
    "Reservation",
    "Reservations",
    "StaticBootSource",
    "StaticReservations",
    "Subnet",
    "UnknownClients",
    "choose_boot",
    "classify",
    "decode_client_arch",
    "decode_guid",
    "decode_user_class",
    "encode",
    "encode_option",
    "encode_relay_agent_info",
    "encode_user_class",
    "is_netboot_client",
    "parse",
    "parse_relay_agent_info",
    "reply_destination",
]
