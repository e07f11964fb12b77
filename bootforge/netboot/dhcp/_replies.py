"""Request/outcome value types and the reply builder shared by full and proxy mode.

Reply bytes are assembled from pre-encoded pieces: the per-subnet options are encoded once when
the core starts, so a reply costs one header pack, a few small TLVs and a join.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ._boot import BootDecision, Reservation
from ._config import DhcpConfig, Interface, Subnet
from ._leases import LeaseRecord
from ._options import MessageType, Opt, RelayAgentInfo, encode_option
from ._packet import BOOTREPLY, HEADER, MAGIC_COOKIE, ZERO4, DhcpPacket, encode_raw
from ._policy import ClientInfo, reply_destination

__all__ = ["NodeEvent", "Outcome", "Reply", "ReplyBuilder", "Request", "SubnetState"]

M = MessageType
_IP_UDP_HEADERS = 28
_MIN_CLIENT_MAX = 576  # RFC 2131: every client takes a 576-byte datagram; never go below it
# PXE_DISCOVERY_CONTROL = 8: "boot the file named in this offer, no menu, no further discovery".
_PXE_BYPASS = encode_option(Opt.VENDOR_OPTS, b"\x06\x01\x08\xff")
# iPXE's encapsulated options (175): no-pxedhcp (176) = 1, "take this offer, wait for no ProxyDHCP".
_IPXE_NO_PXEDHCP = encode_option(Opt.IPXE_ENCAP, b"\xb0\x01\x01")
_BROADCAST_FLAG = 0x8000


# Not frozen, like DhcpPacket (_packet.py): built for every datagram or reply.
@dataclass(slots=True)
class Request:
    packet: DhcpPacket
    message_type: int
    mac: str
    interface: Interface
    relay: RelayAgentInfo | None
    src: tuple[str, int]
    reservation: Reservation


# Not frozen, like DhcpPacket (_packet.py): built for every datagram or reply.
@dataclass(slots=True)
class Reply:
    data: bytes
    address: str
    port: int
    kind: str  # "offer", "ack", "nak", "proxy_offer", "proxy_ack"


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """One step of a DHCP exchange of a known node, for its event timeline."""

    node_id: str
    mac: str
    kind: str  # "dhcp.offer", "dhcp.ack", "dhcp.nak", "dhcp.release", "dhcp.expired", ...
    ip: str | None
    interface: str
    detail: str = ""
    # The boot file or URL this exchange offered, when it offered one: the machine is network-booting.
    boot_file: str | None = None


# Not frozen, like DhcpPacket (_packet.py): built for every datagram or reply.
@dataclass(slots=True)
class Outcome:
    replies: tuple[Reply, ...] = ()
    records: tuple[LeaseRecord, ...] = ()
    hold: bool = False  # send `replies` only after `records` are committed
    events: tuple[NodeEvent, ...] = ()
    dropped: str | None = None


class SubnetState:
    """A configured subnet with its integer ranges and pre-encoded options."""

    __slots__ = ("config", "lease_options", "mask", "net", "options", "pools")

    def __init__(self, config: Subnet) -> None:
        self.config = config
        self.net = int(config.network.network_address)
        self.mask = int(config.network.netmask)
        self.pools = [(int(p.first), int(p.last)) for p in config.pools]
        parts = [encode_option(Opt.SUBNET_MASK, config.network.netmask.packed)]
        if config.routers:
            parts.append(encode_option(Opt.ROUTER, b"".join(r.packed for r in config.routers)))
        if config.dns_servers:
            dns = b"".join(a.packed for a in config.dns_servers)
            parts.append(encode_option(Opt.DNS, dns))
        if config.domain_name:
            parts.append(encode_option(Opt.DOMAIN_NAME, config.domain_name.encode("idna")))
        if config.mtu:
            parts.append(encode_option(Opt.INTERFACE_MTU, struct.pack("!H", config.mtu)))
        parts.append(encode_option(Opt.BROADCAST, config.network.broadcast_address.packed))
        parts.extend(encode_option(code, value) for code, value in config.extra_options)
        self.options = b"".join(parts)
        t = config.lease_time
        self.lease_options = b"".join(
            encode_option(code, struct.pack("!I", value))
            for code, value in ((Opt.LEASE_TIME, t), (Opt.RENEWAL_TIME, t // 2),
                                (Opt.REBINDING_TIME, t * 7 // 8))
        )  # fmt: skip

    def contains(self, ip: int) -> bool:
        return ip & self.mask == self.net

    def in_pool(self, ip: int) -> bool:
        # A plain loop: any() over a generator costs 3x as much, on every REQUEST.
        for first, last in self.pools:  # noqa: SIM110
            if first <= ip <= last:
                return True
        return False


class ReplyBuilder:
    def __init__(self, config: DhcpConfig) -> None:
        self._config = config
        self._types = {int(t): encode_option(Opt.MESSAGE_TYPE, bytes((t,))) for t in MessageType}
        self._server_ids: dict[str, bytes] = {}

    def offer(
        self, request: Request, subnet: SubnetState, yiaddr: bytes,
        decision: BootDecision | None, client: ClientInfo | None,
    ) -> Reply:  # fmt: skip
        chunks = [subnet.lease_options, subnet.options, *self._host(request)]
        chunks += self._full_boot(request, decision, client)
        return self._emit(request, M.OFFER, "offer", yiaddr, ZERO4, chunks, decision)

    def ack(
        self, request: Request, subnet: SubnetState, yiaddr: bytes,
        decision: BootDecision | None, client: ClientInfo | None,
    ) -> Reply:  # fmt: skip
        chunks = [subnet.lease_options, subnet.options, *self._host(request)]
        chunks += self._full_boot(request, decision, client)
        ciaddr = request.packet.ciaddr
        return self._emit(request, M.ACK, "ack", yiaddr, ciaddr, chunks, decision)

    def inform_ack(
        self, request: Request, subnet: SubnetState, decision: BootDecision | None,
        client: ClientInfo | None,
    ) -> Reply:  # fmt: skip
        # RFC 2131 4.3.5: no lease time and no yiaddr in the answer to an INFORM.
        chunks = [subnet.options, *self._full_boot(request, decision, client)]
        ciaddr = request.packet.ciaddr
        return self._emit(request, M.ACK, "ack", ZERO4, ciaddr, chunks, decision)

    def nak(self, request: Request, message: str) -> Reply:
        chunks = [encode_option(Opt.MESSAGE, message.encode())]
        return self._emit(request, M.NAK, "nak", ZERO4, ZERO4, chunks, None)

    def proxy(self, request: Request, message_type: int, decision: BootDecision, client: ClientInfo) -> Reply:
        """ProxyDHCP: no address, just boot information. An HTTP-boot client accepts a proxy
        offer only as an HTTP offer (60=HTTPClient plus a URL); PXE clients need 60=PXEClient
        and, for BINL, option 97 echoed."""
        chunks = [encode_option(Opt.VENDOR_CLASS, _class_echo(client))]
        if client.guid_raw is not None:
            chunks.append(encode_option(Opt.CLIENT_GUID, client.guid_raw))
        if client.pxe and not client.http_boot and (client.arch_code in self._config.proxy_bypass_archs):
            chunks.append(_PXE_BYPASS)
        kind = "proxy_offer" if message_type == M.OFFER else "proxy_ack"
        if decision.next_server is None:
            # iPXE takes a ProxyDHCP answer only if it has "PXE options": a boot menu, or a
            # next-server (siaddr) *and* a boot file (dhcp_has_pxeopts); with siaddr 0 it retries the
            # proxy request, then boots nothing. For a URL the next-server is unused, so name ourselves.
            decision = replace(decision, next_server=request.interface.address)
        ciaddr = request.packet.ciaddr if message_type == M.ACK else ZERO4
        return self._emit(request, message_type, kind, ZERO4, ciaddr, chunks, decision)

    # -- pieces -------------------------------------------------------------------------------

    def _host(self, request: Request) -> Iterable[bytes]:
        hostname = request.reservation.hostname
        return (encode_option(Opt.HOSTNAME, hostname.encode()),) if hostname else ()

    def _full_boot(
        self, request: Request, decision: BootDecision | None, client: ClientInfo | None
    ) -> list[bytes]:
        # No 60=PXEClient here: with it and without option 43, edk2 treats our offer as BINL
        # and waits for a second answer on port 4011. A plain offer with a boot file works.
        if decision is not None and client is not None and client.http_boot:
            return [encode_option(Opt.VENDOR_CLASS, b"HTTPClient")]
        if decision is not None and client is not None and client.ipxe:
            # iPXE holds a plain offer ~3 s for ProxyDHCP offers that would carry boot options;
            # ours has them already, and iPXE's no-pxedhcp setting says not to wait.
            return [_IPXE_NO_PXEDHCP]
        return []

    def _server_id(self, interface: Interface) -> bytes:
        chunk = self._server_ids.get(interface.name)
        if chunk is None:
            chunk = encode_option(Opt.SERVER_ID, interface.address.packed)
            self._server_ids[interface.name] = chunk
        return chunk

    def _emit(
        self, request: Request, message_type: int, kind: str, yiaddr: bytes, ciaddr: bytes,
        chunks: list[bytes], decision: BootDecision | None,
    ) -> Reply:  # fmt: skip
        packet, options = request.packet, request.packet.options
        siaddr, file_field = ZERO4, b""
        head = [self._types[message_type], self._server_id(request.interface)]
        if decision is not None:
            filename = decision.filename.encode()
            if decision.next_server is not None:
                siaddr = decision.next_server.packed
            file_field = filename if len(filename) < 128 else b""
            # Some clients read only option 67 (HTTP-boot firmware, iPXE asks for it).
            if not file_field or Opt.BOOTFILE in options.get(Opt.PARAM_REQUEST, b""):
                chunks.append(encode_option(Opt.BOOTFILE, filename))
        client_id = options.get(Opt.CLIENT_ID)
        if client_id is not None:
            chunks.append(encode_option(Opt.CLIENT_ID, client_id))  # RFC 6842
        flags = packet.flags
        if message_type == M.NAK and packet.giaddr != ZERO4:
            flags |= _BROADCAST_FLAG  # RFC 2131 4.3.2: the relay must broadcast a NAK
        header = HEADER.pack(
            BOOTREPLY, packet.htype, len(packet.chaddr), 0, packet.xid, 0, flags, ciaddr,
            yiaddr, siaddr, packet.giaddr, packet.chaddr, b"", file_field, MAGIC_COOKIE,
        )  # fmt: skip
        relay = request.relay
        tail = encode_option(Opt.RELAY_AGENT_INFO, relay.raw) if relay is not None else b""
        data = encode_raw(header, head + chunks, tail, _max_size(packet, request.interface),
                          sname_free=True, file_free=not file_field)  # fmt: skip
        if kind == "proxy_ack":  # port 4011: answer whoever asked, where they asked from
            return Reply(data, request.src[0], request.src[1], kind)
        destination = reply_destination(packet, message_type)
        return Reply(data, destination.address, destination.port, kind)


def _max_size(packet: DhcpPacket, interface: Interface) -> int:
    """Option 57 bounds the reply, but never below 576 or above the MTU: OVMF sends 57=65280."""
    raw = packet.options.get(Opt.MAX_MESSAGE_SIZE)
    client_max = int.from_bytes(raw, "big") if raw is not None and len(raw) == 2 else 0
    return min(max(client_max, _MIN_CLIENT_MAX), interface.mtu) - _IP_UDP_HEADERS


def _class_echo(client: ClientInfo) -> bytes:
    return b"HTTPClient" if client.http_boot else b"PXEClient"
