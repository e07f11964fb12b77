"""DhcpCore: one DHCP server's decisions, sans IO.

Rules:
1. `receive(datagram, interface, now, src=..., port=...)` is the only way in. It returns an
   `Outcome` (replies to send, lease records to commit, node events, or a drop reason) and never
   raises for anything a peer sent: every `DhcpError` becomes a counted drop in `self.drops`.
2. No sockets, no clock: `now` is passed in. Lease timers are deadlines compared with `now`;
   `sweep(now)` reports expiries.
3. Replies in `Outcome.replies` with `Outcome.hold` set must not be sent before
   `Outcome.records` are durably committed (ACK after the write; OFFER never waits).
4. Everything about what a machine boots comes from the injected `BootSource`; whether it is
   known at all from `Reservations`. This module only enforces protocol invariants, e.g. that
   iPXE and HTTP-boot clients get URLs (a TFTP loader for iPXE is the endless chainload).

Theory of operation: `receive` parses, validates the relay fields, builds a `_Request`, and
dispatches on (mode, port, message type) through `_HANDLERS`, a table like h11's. Full and
proxy mode are two handler sets over the same request and reply machinery (`_replies.py`).
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from ._boot import BootDecision, BootSource, NoBootFile, Reservation, Reservations
from ._config import DhcpConfig, Interface, Mode, UnknownClients
from ._leases import LeaseEvent, LeaseRecord, LeaseState, LeaseTable
from ._options import DhcpError, MessageType, Opt, parse_relay_agent_info
from ._packet import BOOTREQUEST, ZERO4, parse
from ._policy import ClientInfo, classify, format_mac, is_netboot_client
from ._replies import NodeEvent, Outcome, Reply, ReplyBuilder, Request, SubnetState

__all__ = ["DhcpCore", "NodeEvent", "Outcome", "Reply"]

PXE_PORT = 4011
M = MessageType


class _Drop(DhcpError):
    """Internal: stop handling this request, count `reason`; `event` is the node's timeline text
    when it is not the reason itself."""

    def __init__(self, reason: str, detail: str = "", event: str = "") -> None:
        super().__init__(reason, detail)
        self.event = event


class DhcpCore:
    def __init__(
        self,
        config: DhcpConfig,
        boot_source: BootSource,
        reservations: Reservations,
        leases: Iterable[LeaseRecord] = (),
    ) -> None:
        self.config = config
        self.drops: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._boot_source = boot_source
        self._reservations = reservations
        self._table = LeaseTable(leases)
        self._subnets = [SubnetState(s) for s in config.subnets]
        self._build = ReplyBuilder(config)

    # -- entry points -------------------------------------------------------------------------

    def receive(
        self,
        datagram: bytes,
        interface: Interface,
        now: float,
        *,
        src: tuple[str, int] = ("0.0.0.0", 68),
        port: int = 67,
    ) -> Outcome:
        request: Request | None = None
        try:
            request = self._request(datagram, interface, src, port)
            handler = _HANDLERS.get((self.config.mode, port == PXE_PORT, request.message_type))
            if handler is None:
                raise _Drop("unhandled_message", f"type {request.message_type}")
            outcome = handler(self, request, now)
        except DhcpError as exc:
            self.drops[exc.reason] += 1
            events: tuple[NodeEvent, ...] = ()
            event = exc.event if isinstance(exc, _Drop) else ""
            if request is not None and (event or exc.reason in _TIMELINE_DROPS):
                events = self._event(request, "dhcp.dropped", None, detail=event or exc.reason)
            return Outcome(events=events, dropped=exc.reason)
        for reply in outcome.replies:
            self.sent[reply.kind] += 1
        return outcome

    def sweep(self, now: float) -> Outcome:
        """Expire leases past their deadline; records to commit and events for known nodes."""
        records, events = [], []
        for lease, durable in self._table.sweep(now):
            if durable:
                records.append(lease.record())
            if lease.node_id is not None and lease.state is LeaseState.EXPIRED:
                ip = str(lease.record().ip)
                events.append(NodeEvent(lease.node_id, lease.mac, "dhcp.expired", ip, ""))
        return Outcome(records=tuple(records), events=tuple(events))

    def lease_for(self, mac: str) -> LeaseRecord | None:
        lease = self._table.by_mac.get(mac)
        return lease.record() if lease is not None else None

    # -- request validation -------------------------------------------------------------------

    def _request(self, datagram: bytes, interface: Interface, src: tuple[str, int], port: int) -> Request:
        packet = parse(datagram)
        if packet.op != BOOTREQUEST:
            raise _Drop("not_request")
        message_type = packet.message_type
        if message_type is None:
            raise _Drop("no_message_type")  # BOOTP: not served
        if packet.hops > self.config.max_hops:
            raise _Drop("too_many_hops")
        raw82 = packet.options.get(Opt.RELAY_AGENT_INFO)
        relay = parse_relay_agent_info(raw82) if raw82 is not None else None
        if relay is not None and packet.giaddr == ZERO4:
            # RFC 3046 2.1.1: option 82 without giaddr comes from a misbehaving relay.
            raise _Drop("relay_info_without_giaddr")
        mac = format_mac(packet.chaddr)
        reservation = self._reservations.reservation_for(mac)
        if reservation is None:
            if self.config.unknown_clients is UnknownClients.IGNORE:
                raise _Drop("unknown_client")
            reservation = _UNKNOWN
        request = Request(packet, message_type, mac, interface, relay, src, reservation)
        if reservation is _UNKNOWN and self.config.unknown_networks:
            link = IPv4Address(self._link_address(request))
            if not any(link in net for net in self.config.unknown_networks):
                raise _Drop("unknown_client")
        return request

    def _link_address(self, request: Request) -> int:
        """RFC 3527 link selection, then RFC 3011 subnet selection, then giaddr; unrelayed
        requests belong to the link of the interface they arrived on."""
        packet = request.packet
        if packet.giaddr != ZERO4:
            link = request.relay.link_selection if request.relay is not None else None
            selection = packet.options.get(Opt.SUBNET_SELECTION)
            if link is None and selection is not None and len(selection) == 4:
                link = selection
            return int.from_bytes(link or packet.giaddr, "big")
        if packet.ciaddr != ZERO4:
            # RENEWING and INFORM unicast straight to us, also from behind a router: the
            # client's own address says where it is (RFC 2131 4.3.2 / 4.3.5).
            return int.from_bytes(packet.ciaddr, "big")
        return int(request.interface.address)

    def _subnet(self, request: Request) -> SubnetState:
        address = self._link_address(request)
        for subnet in self._subnets:
            if address & subnet.mask == subnet.net:
                return subnet
        raise _Drop("no_subnet")

    def _boot(self, request: Request) -> tuple[BootDecision | None, ClientInfo | None, NoBootFile | None]:
        """The boot file for this client; a NoBootFile means none, for a reason that is counted
        and told on the node's timeline (_no_boot_file in full mode, a _Drop in proxy mode)."""
        if not is_netboot_client(request.packet):
            return None, None, None
        client = classify(request.packet, request.relay, request.interface.name)
        client = dataclasses.replace(client, link=IPv4Address(self._link_address(request)))
        decision = self._boot_source.boot_for(client, request.reservation.node_id)
        if isinstance(decision, NoBootFile):
            return None, client, decision
        if decision is not None and (client.ipxe or client.http_boot) and not decision.is_url:
            # iPXE must fetch its script over HTTP, and HTTP-boot firmware only accepts a URL.
            raise _Drop("boot_needs_url")
        return decision, client, None

    def _no_boot_file(self, request: Request, refused: NoBootFile | None) -> tuple[NodeEvent, ...]:
        if refused is None:
            return ()
        self.drops[refused.reason] += 1  # the address is still offered, its boot file is not
        return self._event(request, "dhcp.no_boot_file", None, detail=refused.message)

    def _event(
        self,
        request: Request,
        kind: str,
        ip: bytes | None,
        client: ClientInfo | None = None,
        decision: BootDecision | None = None,
        detail: str = "",
    ) -> tuple[NodeEvent, ...]:
        node_id = request.reservation.node_id
        if node_id is None:
            return ()
        address = socket.inet_ntoa(ip) if ip is not None else None
        detail = detail or _detail(client, decision)
        boot_file = decision.filename if decision is not None else None
        return (NodeEvent(node_id, request.mac, kind, address, request.interface.name, detail, boot_file),)

    # -- full mode ----------------------------------------------------------------------------

    def _discover(self, request: Request, now: float) -> Outcome:
        subnet = self._subnet(request)
        decision, client, refused = self._boot(request)
        ip = self._pick_address(request, subnet, now)
        lease = self._table.claim(ip, request.mac, request.reservation.node_id, now)
        self._table.apply(lease, LeaseEvent.OFFER, now, self.config.offer_hold)
        yiaddr = ip.to_bytes(4, "big")
        reply = self._build.offer(request, subnet, yiaddr, decision, client)
        return Outcome(
            replies=(reply,),
            events=self._event(request, "dhcp.offer", yiaddr, client, decision)
            + self._no_boot_file(request, refused),
        )

    def _pick_address(self, request: Request, subnet: SubnetState, now: float) -> int:
        table, mac = self._table, request.mac
        fixed = request.reservation.ip
        if fixed is not None and subnet.contains(int(fixed)):
            if not table.available(int(fixed), mac, now):
                raise _Drop("reservation_conflict")
            return int(fixed)
        current = table.by_mac.get(mac)
        if current is not None and subnet.in_pool(current.ip) and table.available(current.ip, mac, now):
            return current.ip
        wanted = request.packet.options.get(Opt.REQUESTED_IP)
        if wanted is not None and len(wanted) == 4:
            ip = int.from_bytes(wanted, "big")
            if subnet.in_pool(ip) and table.available(ip, mac, now):
                return ip
        for first, last in subnet.pools:
            found = table.find_free(first, last, mac, now)
            if found is not None:
                return found
        raise _Drop("pool_exhausted")

    def _request_msg(self, request: Request, now: float) -> Outcome:
        packet, options = request.packet, request.packet.options
        server_id = options.get(Opt.SERVER_ID)
        requested = options.get(Opt.REQUESTED_IP)
        if server_id is not None:  # SELECTING: the answer to someone's OFFER
            if server_id != request.interface.address.packed:
                raise _Drop("other_server")
            ip = requested
        elif requested is not None and packet.ciaddr == ZERO4:  # INIT-REBOOT
            ip = requested
        elif packet.ciaddr != ZERO4:  # RENEWING / REBINDING
            ip = packet.ciaddr
        else:
            raise _Drop("bad_request")
        if ip is None or len(ip) != 4:
            raise _Drop("bad_request")
        return self._ack_or_nak(request, self._subnet(request), ip, now, server_id is None)

    def _ack_or_nak(
        self, request: Request, subnet: SubnetState, ip: bytes, now: float, may_be_silent: bool
    ) -> Outcome:
        address = int.from_bytes(ip, "big")
        lease = self._table.by_mac.get(request.mac)
        if lease is None and may_be_silent and subnet.contains(address):
            # RFC 2131 4.3.2: no record of this client: stay silent, another server may own it.
            raise _Drop("unknown_binding")
        fixed = request.reservation.ip
        allowed = subnet.in_pool(address) or (fixed is not None and int(fixed) == address)
        if (
            lease is None
            or lease.ip != address
            or not allowed
            or not self._table.available(address, request.mac, now)
        ):
            reply = self._build.nak(request, "address not available")
            return Outcome(replies=(reply,), events=self._event(request, "dhcp.nak", ip))
        decision, client, refused = self._boot(request)
        lease = self._table.claim(address, request.mac, request.reservation.node_id, now)
        durable = self._table.apply(lease, LeaseEvent.ACK, now, subnet.config.lease_time)
        reply = self._build.ack(request, subnet, ip, decision, client)
        return Outcome(
            replies=(reply,),
            records=(lease.record(),) if durable else (),
            hold=durable,
            events=self._event(request, "dhcp.ack", ip, client, decision)
            + self._no_boot_file(request, refused),
        )

    def _decline(self, request: Request, now: float) -> Outcome:
        return self._give_back(request, now, LeaseEvent.DECLINE, self.config.decline_hold)

    def _release(self, request: Request, now: float) -> Outcome:
        return self._give_back(request, now, LeaseEvent.RELEASE, 0.0)

    def _give_back(self, request: Request, now: float, event: LeaseEvent, hold: float) -> Outcome:
        packet = request.packet
        ip = packet.ciaddr if event is LeaseEvent.RELEASE else packet.options.get(Opt.REQUESTED_IP)
        server_id = packet.options.get(Opt.SERVER_ID)
        if server_id is not None and server_id != request.interface.address.packed:
            raise _Drop("other_server")
        lease = self._table.by_mac.get(request.mac)
        if ip is None or lease is None or lease.ip != int.from_bytes(ip, "big"):
            raise _Drop("unknown_binding")
        durable = self._table.apply(lease, event, now, hold)
        return Outcome(
            records=(lease.record(),) if durable else (),
            events=self._event(request, f"dhcp.{event.value}", ip),
        )

    def _inform(self, request: Request, now: float) -> Outcome:
        if request.packet.ciaddr == ZERO4:
            raise _Drop("inform_without_ciaddr")
        subnet = self._subnet(request)
        decision, client, refused = self._boot(request)
        reply = self._build.inform_ack(request, subnet, decision, client)
        events = self._event(request, "dhcp.inform", None) + self._no_boot_file(request, refused)
        return Outcome(replies=(reply,), events=events)

    # -- proxy mode ---------------------------------------------------------------------------

    def _proxy_discover(self, request: Request, now: float) -> Outcome:
        decision, client = self._proxy_boot(request)
        reply = self._build.proxy(request, M.OFFER, decision, client)
        return Outcome(
            replies=(reply,),
            events=self._event(request, "dhcp.proxy_offer", None, client, decision),
        )

    def _proxy_request(self, request: Request, now: float) -> Outcome:
        """Port 4011: the BINL step, after the client got its address elsewhere (its ciaddr,
        in the event: the node's TFTP and HTTP fetches come from it)."""
        decision, client = self._proxy_boot(request)
        reply = self._build.proxy(request, M.ACK, decision, client)
        ciaddr = request.packet.ciaddr
        return Outcome(
            replies=(reply,),
            events=self._event(
                request, "dhcp.proxy_ack", ciaddr if ciaddr != ZERO4 else None, client, decision
            ),
        )

    def _proxy_seen_request(self, request: Request, now: float) -> Outcome:
        """A client's broadcast REQUEST to the site's DHCP server: never answered by a proxy, but
        the address it takes (option 50, or its ciaddr) is what its fetches will come from, so a
        known node's is reported (kind dhcp.proxy_seen) to tie them to it."""
        packet = request.packet
        wanted = packet.options.get(Opt.REQUESTED_IP)
        ip = wanted if wanted is not None and len(wanted) == 4 else packet.ciaddr
        self.drops["other_server"] += 1
        if ip == ZERO4:
            return Outcome(dropped="other_server")
        return Outcome(events=self._event(request, "dhcp.proxy_seen", ip), dropped="other_server")

    def _proxy_boot(self, request: Request) -> tuple[BootDecision, ClientInfo]:
        decision, client, refused = self._boot(request)
        if client is None:
            raise _Drop("not_netboot")
        if refused is not None:
            raise _Drop(refused.reason, event=refused.message)
        if decision is None:
            raise _Drop("no_boot")
        return decision, client


_UNKNOWN = Reservation(node_id=None)

# Drops that mean "this node cannot boot or get an address", worth a line on its timeline.
# Routine ones (a REQUEST for another server, a non-PXE client at a proxy) are only counted.
# A drop with its own timeline text (_Drop.event, e.g. a missing loader) always gets a line.
_TIMELINE_DROPS = frozenset(
    {"boot_needs_url", "no_boot", "no_subnet", "pool_exhausted", "reservation_conflict"}
)

_Handler = Callable[[DhcpCore, Request, float], Outcome]
# (mode, arrived on port 4011, message type) -> handler. Anything missing is dropped and counted
# as "unhandled_message". A proxy never ACKs address requests on port 67: it only notes the address
# (_proxy_seen_request) and counts them as "other_server".
_HANDLERS: dict[tuple[Mode, bool, int], _Handler] = {
    (Mode.FULL, False, M.DISCOVER): DhcpCore._discover,
    (Mode.FULL, False, M.REQUEST): DhcpCore._request_msg,
    (Mode.FULL, False, M.DECLINE): DhcpCore._decline,
    (Mode.FULL, False, M.RELEASE): DhcpCore._release,
    (Mode.FULL, False, M.INFORM): DhcpCore._inform,
    (Mode.PROXY, False, M.DISCOVER): DhcpCore._proxy_discover,
    (Mode.PROXY, False, M.REQUEST): DhcpCore._proxy_seen_request,
    (Mode.PROXY, True, M.REQUEST): DhcpCore._proxy_request,
    (Mode.PROXY, True, M.INFORM): DhcpCore._proxy_request,
}


def _detail(client: ClientInfo | None, decision: BootDecision | None) -> str:
    if client is None:
        return ""
    arch = client.arch.name if client.arch is not None else f"arch-{client.arch_code}"
    kind = "ipxe" if client.ipxe else "http-boot" if client.http_boot else "pxe"
    boot = decision.filename if decision is not None else "-"
    return f"{kind} {arch} boot={boot}"
