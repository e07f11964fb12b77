"""Dhcp6Core: one DHCPv6 server's decisions (RFC 8415), sans IO, full and proxy-style.

Rules (the DHCPv4 core's):
1. `receive(datagram, interface, now, src=...)` is the only way in. It returns an `Outcome6` and never
   raises for anything a peer sent: every `Dhcp6Error` becomes a counted drop in `self.drops`, and
   every option the parser left out is counted by reason in `self.option_drops`.
2. No sockets, no clock: `now` is passed in; `sweep(now)` reports expiries.
3. Replies in an `Outcome6` with `hold` set go out only after `records` are durably committed.
4. What a machine boots comes from the injected `Boot6Source`; whether it is known from
   `Reservations` (the v4 protocol, keyed by MAC). A fixed address in a `Reservation` is IPv4 and
   is not used here.

Relays: a RELAY-FORW is unwrapped level by level (at most `max_relay_depth`, RFC 8415's
HOP_COUNT_LIMIT), the client's message handled, and the reply wrapped in one RELAY-REPL per level,
each echoing its relay's addresses and Interface-ID, sent to the outermost relay on port 547.

Proxy-style mode answers only boot options (Boot File URL, no IA) to netboot clients' SOLICIT and
INFORMATION-REQUEST, beside a site DHCPv6 server that gives the addresses; and the REQUEST that UEFI
firmware (edk2's "ProxyBinl" path) sends to the host of that URL on port 4011 once the site server
bound its address: a copy of its REQUEST to the site server, without IA, with our Server ID.

Not here: the unicast option and UseMulticast, reconfigure, prefix delegation (IA_PD), temporary
addresses (IA_TA), authentication; messages needing them are dropped and counted.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from bootforge.netboot.dhcp import NoBootFile, NodeEvent, Reservation, Reservations, UnknownClients

from ._boot import Boot6Source, Client6Info, classify6, is_netboot6
from ._codec import (
    Dhcp6Error,
    Duid,
    IaAddress,
    IaNa,
    Message,
    MsgType,
    Opt6,
    RelayMessage,
    Status,
    VendorClass,
    decode_duid,
    decode_ia_na,
    decode_link_layer,
    decode_oro,
    encode,
    encode_ia_address,
    encode_ia_na,
    encode_status,
    encode_vendor_class,
    parse,
)
from ._leases import Lease6, Lease6Event, Lease6Record, Lease6State, Lease6Table

__all__ = ["Dhcp6Config", "Dhcp6Core", "Mode6", "Outcome6", "Reply6", "eui64_mac"]

CLIENT_PORT = 546
SERVER_PORT = 547  # also where relays listen
# IPv6's minimum MTU (1280) less the IPv6 and UDP headers: a reply that fits is never fragmented.
MAX_REPLY = 1280 - 40 - 8
M = MsgType
# Room kept for the client's own reply inside relay wrappings: two DUIDs (at most 134 bytes each),
# four IA_NAs with an address (44 each), a boot URL and DNS servers.
_REPLY_BUDGET = 640
_EDK2_ENTERPRISE = 343  # the enterprise number edk2 puts in its vendor class (Intel's)


def eui64_mac(address: str | bytes) -> bytes | None:
    """The MAC inside a link-local address formed by modified EUI-64 (RFC 4291 appendix A), else None."""
    try:
        packed = address if isinstance(address, bytes) else IPv6Address(address.partition("%")[0]).packed
    except ValueError:
        return None
    if len(packed) != 16 or packed[:8] != b"\xfe\x80" + bytes(6) or packed[11:13] != b"\xff\xfe":
        return None
    return bytes((packed[8] ^ 0x02,)) + packed[9:11] + packed[13:16]


class Mode6(enum.Enum):
    FULL = "full"
    PROXY = "proxy"


@dataclass(frozen=True)
class Dhcp6Config:
    mode: Mode6
    server_duid: bytes
    prefix: IPv6Network
    pool_first: IPv6Address | None = None  # FULL mode: the addresses handed out
    pool_last: IPv6Address | None = None
    dns_servers: tuple[IPv6Address, ...] = ()
    preferred_lifetime: int = 3600
    valid_lifetime: int = 7200
    advertise_hold: float = 60.0
    decline_hold: float = 3600.0
    preference: int = 0
    rapid_commit: bool = True
    unknown_clients: UnknownClients = UnknownClients.DISCOVER
    max_relay_depth: int = 8  # RFC 8415 HOP_COUNT_LIMIT
    max_ias: int = 4
    max_leases: int = 65536

    def __post_init__(self) -> None:
        if not 4 <= len(self.server_duid) <= 130:
            raise ValueError("server_duid: a DUID is 4 to 130 bytes")
        if self.mode is Mode6.FULL:
            if self.pool_first is None or self.pool_last is None:
                raise ValueError("pool_first/pool_last: full mode needs an address pool")
            if self.pool_first not in self.prefix or self.pool_last not in self.prefix:
                raise ValueError(f"pool_first/pool_last: the pool must lie inside {self.prefix}")
            if int(self.pool_first) > int(self.pool_last):
                raise ValueError("pool_first: after pool_last")
        if not 0 < self.preferred_lifetime <= self.valid_lifetime:
            raise ValueError("preferred_lifetime: must be positive and at most valid_lifetime")
        if not 0 <= self.preference <= 255:
            raise ValueError("preference: 0..255")
        if len(self.dns_servers) > 8:
            raise ValueError("dns_servers: at most 8 (the reply must fit in 1232 bytes)")
        if not 1 <= self.max_relay_depth <= 32:
            raise ValueError("max_relay_depth: 1..32")


@dataclass(frozen=True, slots=True)
class Reply6:
    data: bytes
    address: str
    port: int
    kind: str  # "advertise", "reply", "proxy_advertise", "proxy_reply"


@dataclass(frozen=True, slots=True)
class Outcome6:
    replies: tuple[Reply6, ...] = ()
    records: tuple[Lease6Record, ...] = ()
    hold: bool = False
    events: tuple[NodeEvent, ...] = ()
    dropped: str | None = None


class _Drop(Dhcp6Error):
    def __init__(self, reason: str, detail: str = "", event: str = "", site: _Request | None = None) -> None:
        super().__init__(reason, detail)
        self.event = event
        self.site = site  # a netboot client's REQUEST to the site server (proxy mode); event: its address


@dataclass(frozen=True, slots=True)
class _Request:
    message: Message
    relays: tuple[RelayMessage, ...]  # outermost first
    src: tuple[str, int]
    interface: str
    duid: Duid
    mac: str | None
    reservation: Reservation


_UNKNOWN = Reservation(node_id=None)
_CLIENT_TYPES = frozenset(
    {M.SOLICIT, M.REQUEST, M.CONFIRM, M.RENEW, M.REBIND, M.RELEASE, M.DECLINE, M.INFORMATION_REQUEST}
)
# RFC 8415 16: which messages must carry our Server ID, and which must carry none.
_NEEDS_OUR_ID = frozenset({M.REQUEST, M.RENEW, M.RELEASE, M.DECLINE})
_NO_ID = frozenset({M.SOLICIT, M.CONFIRM, M.REBIND})


class Dhcp6Core:
    def __init__(
        self,
        config: Dhcp6Config,
        boot_source: Boot6Source,
        reservations: Reservations,
        leases: Iterable[Lease6Record] = (),
    ) -> None:
        self.config = config
        self.drops: Counter[str] = Counter()
        self.option_drops: Counter[str] = Counter()
        self.no_boot_file: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._boot_source = boot_source
        self._reservations = reservations
        self._table = Lease6Table(leases, config.max_leases)
        if config.pool_first is not None and config.pool_last is not None:
            self._first, self._size = (
                int(config.pool_first),
                int(config.pool_last) - int(config.pool_first) + 1,
            )
        else:
            self._first, self._size = 0, 0
        self._dns = b"".join(a.packed for a in config.dns_servers)

    # -- entry points -------------------------------------------------------------------------

    def receive(
        self, datagram: bytes, interface: str, now: float, *, src: tuple[str, int] = ("fe80::1", CLIENT_PORT)
    ) -> Outcome6:
        request: _Request | None = None
        try:
            request = self._request(datagram, interface, src)
            handler = _HANDLERS.get((self.config.mode, request.message.msg_type))
            if handler is None:
                raise _Drop("unhandled_message", f"type {request.message.msg_type}")
            outcome = handler(self, request, now)
        except Dhcp6Error as exc:
            self.drops[exc.reason] += 1
            event = exc.event if isinstance(exc, _Drop) else ""
            events: tuple[NodeEvent, ...] = ()
            site = exc.site if isinstance(exc, _Drop) else None
            if site is not None and event:
                # Not a drop worth a warning: the node took this address from the site server.
                ip = int(IPv6Address(event))
                events = self._event(
                    site, "dhcp6.site_request", ip, detail="address from the site DHCPv6 server"
                )
                return Outcome6(events=events, dropped=exc.reason)
            if request is not None and (event or exc.reason in _TIMELINE_DROPS):
                events = self._event(request, "dhcp6.dropped", None, detail=event or exc.reason)
            return Outcome6(events=events, dropped=exc.reason)
        for reply in outcome.replies:
            self.sent[reply.kind] += 1
        return outcome

    def sweep(self, now: float) -> Outcome6:
        records, events = [], []
        for lease, durable in self._table.sweep(now):
            if durable:
                records.append(lease.record())
            if lease.node_id is not None and lease.state is Lease6State.EXPIRED:
                ip = str(IPv6Address(lease.ip))
                events.append(NodeEvent(lease.node_id, lease.mac or "", "dhcp6.expired", ip, ""))
        return Outcome6(records=tuple(records), events=tuple(events))

    def binding(self, duid: bytes, iaid: int) -> Lease6Record | None:
        lease = self._table.binding(duid, iaid)
        return lease.record() if lease is not None else None

    # -- request validation -------------------------------------------------------------------

    def _request(self, datagram: bytes, interface: str, src: tuple[str, int]) -> _Request:
        parsed = parse(datagram)
        self.option_drops.update(parsed.defects)
        relays: list[RelayMessage] = []
        overhead = 0
        while isinstance(parsed, RelayMessage):
            if parsed.msg_type != M.RELAY_FORW:
                raise _Drop("not_request", "RELAY-REPL")
            if len(relays) >= self.config.max_relay_depth or parsed.hop_count >= self.config.max_relay_depth:
                raise _Drop("too_many_hops")
            relays.append(parsed)
            # What wrapping the reply for this relay costs: its header, the Relay Message option
            # header and the echoed Interface-ID. Checked now, because a reply found too large
            # only after the handler ran would leave leases changed that no reply announces.
            interface_id = parsed.get(Opt6.INTERFACE_ID)
            overhead += 34 + 4 + (4 + len(interface_id) if interface_id is not None else 0)
            if overhead > MAX_REPLY - _REPLY_BUDGET:
                raise _Drop("relay_too_large", f"{overhead} bytes of relay headers")
            inner = parsed.get(Opt6.RELAY_MSG)
            if inner is None:
                raise _Drop("relay_without_message")
            parsed = parse(inner)
            self.option_drops.update(parsed.defects)
        message = parsed
        if message.msg_type not in _CLIENT_TYPES:
            raise _Drop("not_request", f"type {message.msg_type}")
        raw_client = message.get(Opt6.CLIENTID)
        if raw_client is None:
            if message.msg_type != M.INFORMATION_REQUEST:
                raise _Drop("no_client_id")
            raw_client = b""
        server_id = message.get(Opt6.SERVERID)
        if message.msg_type in _NO_ID and server_id is not None:
            raise _Drop("server_id_not_allowed")
        ours = server_id == self.config.server_duid
        foreign = (message.msg_type in _NEEDS_OUR_ID or server_id is not None) and not ours
        if foreign and not (self.config.mode is Mode6.PROXY and message.msg_type == M.REQUEST):
            raise _Drop("other_server")
        duid = decode_duid(raw_client) if raw_client else Duid(b"", 0, None)
        mac = duid.mac
        if mac is None and relays:
            # RFC 6939: the relay next to the client saw its link-layer address.
            raw79 = relays[-1].get(Opt6.CLIENT_LINKLAYER_ADDR)
            if raw79 is not None:
                hardware, address = decode_link_layer(raw79)
                mac = address if hardware == 1 and len(address) == 6 else None
        if mac is None:
            # iPXE and edk2 identify themselves with a DUID-UUID; both form their link-local address
            # from the MAC (EUI-64). The client's own address: the source, or the innermost relay's
            # peer-address. A stable-privacy or random link-local address names no MAC.
            mac = eui64_mac(relays[-1].peer_address if relays else src[0])
        mac_text = mac.hex(":") if mac is not None else None
        reservation = self._reservations.reservation_for(mac_text) if mac_text is not None else None
        if reservation is None:
            if self.config.unknown_clients is UnknownClients.IGNORE:
                raise _Drop("unknown_client")
            reservation = _UNKNOWN
        request = _Request(message, tuple(relays), src, interface, duid, mac_text, reservation)
        if foreign:
            raise _Drop("other_server", event=self._site_request(request), site=request)
        return request

    def _site_request(self, request: _Request) -> str:
        """Proxy mode: a netboot client's REQUEST to the site server (multicast, so we see it)
        names the address it takes; that address ties its TFTP and HTTP fetches to the node (edk2
        may send its port-4011 request from another of its addresses). Not answered."""
        if request.reservation.node_id is None or not is_netboot6(request.message):
            return ""
        for ia in self._ias(request):
            for address in ia.addresses():
                return str(IPv6Address(address.address))
        return ""

    # -- reply machinery ----------------------------------------------------------------------

    def _reply(
        self, request: _Request, msg_type: int, options: Sequence[tuple[int, bytes]], kind: str
    ) -> Reply6:
        head: list[tuple[int, bytes]] = [(Opt6.SERVERID, self.config.server_duid)]
        if request.duid.raw:
            head.append((Opt6.CLIENTID, request.duid.raw))
        data = encode(Message(msg_type, request.message.transaction_id, (*head, *options)))
        for relay in reversed(request.relays):
            wrapped: list[tuple[int, bytes]] = []
            interface_id = relay.get(Opt6.INTERFACE_ID)
            if interface_id is not None:  # RFC 8415 19.3: echoed so the relay knows the link
                wrapped.append((Opt6.INTERFACE_ID, interface_id))
            wrapped.append((Opt6.RELAY_MSG, data))
            data = encode(
                RelayMessage(
                    M.RELAY_REPL, relay.hop_count, relay.link_address, relay.peer_address, tuple(wrapped)
                )
            )
        if len(data) > MAX_REPLY:
            raise _Drop("reply_too_large", f"{len(data)} bytes")
        port = SERVER_PORT if request.relays else request.src[1]
        return Reply6(data, request.src[0], port, kind)

    def _oro(self, request: _Request) -> tuple[int, ...]:
        raw = request.message.get(Opt6.ORO)
        return decode_oro(raw) if raw is not None else ()

    def _common_options(self, request: _Request) -> list[tuple[int, bytes]]:
        if self._dns and Opt6.DNS_SERVERS in self._oro(request):
            return [(Opt6.DNS_SERVERS, self._dns)]
        return []

    def _boot(self, request: _Request) -> tuple[str | None, Client6Info | None, NoBootFile | None]:
        if not is_netboot6(request.message):
            return None, None, None
        client = classify6(request.message, request.duid, request.mac, request.interface)
        decision = self._boot_source.boot_for(client, request.reservation.node_id)
        if isinstance(decision, NoBootFile):
            return None, client, decision
        if (
            decision is not None
            and (client.ipxe or client.http_boot)
            and not decision.startswith(("http://", "https://"))
        ):
            raise _Drop("boot_needs_url")
        return decision, client, None

    def _boot_options(self, url: str | None, client: Client6Info | None) -> list[tuple[int, bytes]]:
        if url is None:
            return []
        options: list[tuple[int, bytes]] = [(Opt6.BOOTFILE_URL, url.encode())]
        if client is not None and client.http_boot:
            # edk2 counts an offer as an HTTP-boot offer only when it carries vendor class 16 with
            # "HTTPClient" (as DHCPv4 must echo option 60): without it the URL is ignored.
            options.append(
                (Opt6.VENDOR_CLASS, encode_vendor_class(VendorClass(_EDK2_ENTERPRISE, (b"HTTPClient",))))
            )
        elif client is not None and client.pxe and self.config.mode is Mode6.PROXY:
            # A proxy offer (no IA_NA) is a PXE "ProxyBinl" offer to edk2 only with "PXEClient"
            # under enterprise 343; it then asks us on port 4011. Not in full mode: there an offer
            # with it would be "DhcpBinl" and edk2 would ask on 4011, where full mode listens not.
            options.append(
                (Opt6.VENDOR_CLASS, encode_vendor_class(VendorClass(_EDK2_ENTERPRISE, (b"PXEClient",))))
            )
        return options

    def _ias(self, request: _Request) -> list[IaNa]:
        raws = request.message.all(Opt6.IA_NA)
        if len(raws) > self.config.max_ias:
            raise _Drop("too_many_ias", str(len(raws)))
        ias = [decode_ia_na(raw) for raw in raws]
        if len({ia.iaid for ia in ias}) != len(ias):
            raise _Drop("duplicate_iaid")
        return ias

    def _ia_option(
        self, ia: IaNa, address: int | None, preferred: int, valid: int, status: int | None = None
    ) -> tuple[int, bytes]:
        options: list[tuple[int, bytes]] = []
        t1 = t2 = 0
        if address is not None:
            addr = IaAddress(address.to_bytes(16, "big"), preferred, valid)
            options.append((Opt6.IAADDR, encode_ia_address(addr)))
            t1, t2 = preferred // 2, preferred * 4 // 5
        if status is not None:
            options.append((Opt6.STATUS_CODE, encode_status(status, Status(status).name.lower())))
        return (Opt6.IA_NA, encode_ia_na(IaNa(ia.iaid, t1, t2, tuple(options))))

    def _event(
        self, request: _Request, kind: str, ip: int | None, client: Client6Info | None = None,
        boot: str | None = None, detail: str = "",
    ) -> tuple[NodeEvent, ...]:  # fmt: skip
        node_id = request.reservation.node_id
        if node_id is None:
            return ()
        address = str(IPv6Address(ip)) if ip is not None else None
        if not detail and client is not None:
            arch = client.arch.name if client.arch is not None else f"arch-{client.arch_code}"
            kind_of = "ipxe" if client.ipxe else "http-boot" if client.http_boot else "pxe"
            detail = f"{kind_of} {arch} boot={boot or '-'}"
        return (NodeEvent(node_id, request.mac or "", kind, address, request.interface, detail, boot),)

    def _refused(self, request: _Request, refused: NoBootFile | None) -> tuple[NodeEvent, ...]:
        if refused is None:
            return ()
        self.no_boot_file[refused.reason] += 1  # the address is still given, the boot file is not
        return self._event(request, "dhcp6.no_boot_file", None, detail=refused.message)

    # -- address assignment -------------------------------------------------------------------

    def _in_pool(self, ip: int) -> bool:
        return 0 <= ip - self._first < self._size

    def _pick(self, request: _Request, ia: IaNa, now: float) -> int | None:
        table, duid = self._table, request.duid.raw
        current = table.binding(duid, ia.iaid)
        if (
            current is not None
            and self._in_pool(current.ip)
            and table.available(current.ip, duid, ia.iaid, now)
        ):
            return current.ip
        for hint in ia.addresses():
            ip = int.from_bytes(hint.address, "big")
            if self._in_pool(ip) and table.available(ip, duid, ia.iaid, now):
                return ip
        # A stable start per client (the same address after a server restart without a store),
        # and a bounded probe: a huge /64 pool is never walked.
        digest = hashlib.blake2b(duid + ia.iaid.to_bytes(4, "big"), digest_size=16).digest()
        start = int.from_bytes(digest, "big") % self._size
        for k in range(min(self._size, 256)):
            ip = self._first + (start + k) % self._size
            if table.available(ip, duid, ia.iaid, now):
                return ip
        return None

    def _assign(
        self, request: _Request, now: float, event: Lease6Event
    ) -> tuple[list[tuple[int, bytes]], list[Lease6], bool, int | None]:
        options: list[tuple[int, bytes]] = []
        leases: list[Lease6] = []
        durable = False
        first_ip: int | None = None
        duration = (
            self.config.advertise_hold if event is Lease6Event.ADVERTISE else self.config.valid_lifetime
        )
        ias = self._ias(request)
        self._table.ensure_room(
            sum(self._table.binding(request.duid.raw, ia.iaid) is None for ia in ias), now
        )
        for ia in ias:
            ip = self._pick(request, ia, now)
            if ip is None:
                options.append(self._ia_option(ia, None, 0, 0, Status.NO_ADDRS_AVAIL))
                continue
            lease = self._table.claim(
                ip, request.duid.raw, ia.iaid, request.mac, request.reservation.node_id, now
            )
            durable |= self._table.apply(lease, event, now, duration)
            leases.append(lease)
            first_ip = ip if first_ip is None else first_ip
            options.append(
                self._ia_option(ia, ip, self.config.preferred_lifetime, self.config.valid_lifetime)
            )
        return options, leases, durable, first_ip

    # -- full mode ----------------------------------------------------------------------------

    def _solicit(self, request: _Request, now: float) -> Outcome6:
        rapid = self.config.rapid_commit and request.message.get(Opt6.RAPID_COMMIT) is not None
        url, client, refused = self._boot(request)
        event = Lease6Event.BIND if rapid else Lease6Event.ADVERTISE
        ia_options, leases, durable, ip = self._assign(request, now, event)
        if request.message.all(Opt6.IA_NA) and not leases:
            raise _Drop("pool_exhausted")
        options = ia_options + self._common_options(request) + self._boot_options(url, client)
        if rapid:
            reply = self._reply(request, M.REPLY, [(Opt6.RAPID_COMMIT, b""), *options], "reply")
            kind = "dhcp6.reply"
        else:
            reply = self._reply(
                request,
                M.ADVERTISE,
                [(Opt6.PREFERENCE, bytes((self.config.preference,))), *options],
                "advertise",
            )
            kind = "dhcp6.advertise"
        return Outcome6(
            replies=(reply,),
            records=tuple(lease.record() for lease in leases) if durable else (),
            hold=durable,
            events=self._event(request, kind, ip, client, url) + self._refused(request, refused),
        )

    def _request_msg(self, request: _Request, now: float) -> Outcome6:
        url, client, refused = self._boot(request)
        ia_options, leases, durable, ip = self._assign(request, now, Lease6Event.BIND)
        options = ia_options + self._common_options(request) + self._boot_options(url, client)
        reply = self._reply(request, M.REPLY, options, "reply")
        return Outcome6(
            replies=(reply,),
            records=tuple(lease.record() for lease in leases) if durable else (),
            hold=durable,
            events=self._event(request, "dhcp6.reply", ip, client, url) + self._refused(request, refused),
        )

    def _extend(self, request: _Request, now: float) -> Outcome6:
        """RENEW and REBIND (RFC 8415 18.3.4, 18.3.5)."""
        rebind = request.message.msg_type == M.REBIND
        ias = self._ias(request)
        if not ias:
            raise _Drop("no_ia")
        options: list[tuple[int, bytes]] = []
        records: list[Lease6Record] = []
        first_ip: int | None = None
        for ia in ias:
            lease = self._table.binding(request.duid.raw, ia.iaid)
            listed = [int.from_bytes(a.address, "big") for a in ia.addresses()]
            if (
                lease is not None
                and lease.state is Lease6State.BOUND
                and lease.ip in listed
                and self._table.available(lease.ip, request.duid.raw, ia.iaid, now)
            ):
                self._table.apply(lease, Lease6Event.BIND, now, self.config.valid_lifetime)
                records.append(lease.record())
                first_ip = lease.ip if first_ip is None else first_ip
                options.append(
                    self._ia_option(ia, lease.ip, self.config.preferred_lifetime, self.config.valid_lifetime)
                )
            elif rebind and listed and not all(IPv6Address(a) in self.config.prefix for a in listed):
                # Addresses not on this link: tell the client to stop using them (lifetimes 0).
                addrs = tuple(
                    (Opt6.IAADDR, encode_ia_address(IaAddress(a.to_bytes(16, "big"), 0, 0))) for a in listed
                )
                options.append((Opt6.IA_NA, encode_ia_na(IaNa(ia.iaid, 0, 0, addrs))))
            else:
                options.append(self._ia_option(ia, None, 0, 0, Status.NO_BINDING))
        url, client, refused = self._boot(request)
        options += self._common_options(request) + self._boot_options(url, client)
        reply = self._reply(request, M.REPLY, options, "reply")
        return Outcome6(
            replies=(reply,), records=tuple(records), hold=bool(records),
            events=self._event(request, "dhcp6.reply", first_ip, client, url)
            + self._refused(request, refused),
        )  # fmt: skip

    def _release(self, request: _Request, now: float) -> Outcome6:
        return self._give_back(request, now, Lease6Event.RELEASE, 0.0)

    def _decline(self, request: _Request, now: float) -> Outcome6:
        return self._give_back(request, now, Lease6Event.DECLINE, self.config.decline_hold)

    def _give_back(self, request: _Request, now: float, event: Lease6Event, hold: float) -> Outcome6:
        ias = self._ias(request)
        if not ias:
            raise _Drop("no_ia")
        options: list[tuple[int, bytes]] = [(Opt6.STATUS_CODE, encode_status(Status.SUCCESS, "success"))]
        records: list[Lease6Record] = []
        first_ip: int | None = None
        for ia in ias:
            lease = self._table.binding(request.duid.raw, ia.iaid)
            listed = [int.from_bytes(a.address, "big") for a in ia.addresses()]
            if (
                lease is not None
                and lease.state in (Lease6State.BOUND, Lease6State.ADVERTISED)
                and lease.ip in listed
            ):
                if lease.state is Lease6State.ADVERTISED and event is Lease6Event.RELEASE:
                    options.append(self._ia_option(ia, None, 0, 0, Status.NO_BINDING))
                    continue
                self._table.apply(lease, event, now, hold)
                records.append(lease.record())
                first_ip = lease.ip if first_ip is None else first_ip
            else:
                options.append(self._ia_option(ia, None, 0, 0, Status.NO_BINDING))
        reply = self._reply(request, M.REPLY, options, "reply")
        return Outcome6(
            replies=(reply,), records=tuple(records), hold=bool(records),
            events=self._event(request, f"dhcp6.{event.value}", first_ip),
        )  # fmt: skip

    def _confirm(self, request: _Request, now: float) -> Outcome6:
        listed = [a.address for ia in self._ias(request) for a in ia.addresses()]
        if not listed:
            raise _Drop("confirm_without_addresses")  # RFC 8415 18.3.3: no reply
        on_link = all(IPv6Address(a) in self.config.prefix for a in listed)
        status = Status.SUCCESS if on_link else Status.NOT_ON_LINK
        options = [(Opt6.STATUS_CODE, encode_status(status, status.name.lower()))]
        reply = self._reply(request, M.REPLY, options, "reply")
        return Outcome6(
            replies=(reply,), events=self._event(request, "dhcp6.confirm", None, detail=status.name.lower())
        )

    def _information(self, request: _Request, now: float) -> Outcome6:
        if request.message.get(Opt6.IA_NA) is not None:
            raise _Drop("ia_in_information_request")  # RFC 8415 16.12
        url, client, refused = self._boot(request)
        options = self._common_options(request) + self._boot_options(url, client)
        reply = self._reply(request, M.REPLY, options, "reply")
        return Outcome6(
            replies=(reply,),
            events=self._event(request, "dhcp6.inform", None, client, url) + self._refused(request, refused),
        )

    # -- proxy-style mode ---------------------------------------------------------------------

    def _proxy_boot(self, request: _Request) -> tuple[str, Client6Info]:
        url, client, refused = self._boot(request)
        if client is None:
            raise _Drop("not_netboot")
        if refused is not None:
            raise _Drop(refused.reason, event=refused.message)
        if url is None:
            raise _Drop("no_boot")
        return url, client

    def _proxy_solicit(self, request: _Request, now: float) -> Outcome6:
        url, client = self._proxy_boot(request)
        options = [(Opt6.PREFERENCE, bytes((self.config.preference,))), *self._boot_options(url, client)]
        reply = self._reply(request, M.ADVERTISE, options, "proxy_advertise")
        return Outcome6(
            replies=(reply,), events=self._event(request, "dhcp6.proxy_advertise", None, client, url)
        )

    def _proxy_request(self, request: _Request, now: float) -> Outcome6:
        """edk2's boot-service request (PxeBcRequestBootService): our Server ID was checked in
        `_request`; any IA it carries is another server's business and is not answered."""
        url, client = self._proxy_boot(request)
        reply = self._reply(request, M.REPLY, self._boot_options(url, client), "proxy_reply")
        # Sent from the address the site server bound: the node's, for its TFTP and HTTP fetches.
        source = IPv6Address(request.src[0].partition("%")[0])
        bound = int(source) if not (request.relays or source.is_link_local) else None
        return Outcome6(
            replies=(reply,), events=self._event(request, "dhcp6.proxy_reply", bound, client, url)
        )

    def _proxy_information(self, request: _Request, now: float) -> Outcome6:
        if request.message.get(Opt6.IA_NA) is not None:
            raise _Drop("ia_in_information_request")
        url, client = self._proxy_boot(request)
        reply = self._reply(
            request, M.REPLY, self._common_options(request) + self._boot_options(url, client), "proxy_reply"
        )
        return Outcome6(replies=(reply,), events=self._event(request, "dhcp6.proxy_reply", None, client, url))


# Drops that mean "this node cannot boot or get an address", worth a line on its timeline.
_TIMELINE_DROPS = frozenset({"boot_needs_url", "no_boot", "pool_exhausted", "lease_table_full"})

_Handler = Callable[[Dhcp6Core, _Request, float], Outcome6]
_HANDLERS: dict[tuple[Mode6, int], _Handler] = {
    (Mode6.FULL, M.SOLICIT): Dhcp6Core._solicit,
    (Mode6.FULL, M.REQUEST): Dhcp6Core._request_msg,
    (Mode6.FULL, M.RENEW): Dhcp6Core._extend,
    (Mode6.FULL, M.REBIND): Dhcp6Core._extend,
    (Mode6.FULL, M.RELEASE): Dhcp6Core._release,
    (Mode6.FULL, M.DECLINE): Dhcp6Core._decline,
    (Mode6.FULL, M.CONFIRM): Dhcp6Core._confirm,
    (Mode6.FULL, M.INFORMATION_REQUEST): Dhcp6Core._information,
    (Mode6.PROXY, M.SOLICIT): Dhcp6Core._proxy_solicit,
    (Mode6.PROXY, M.INFORMATION_REQUEST): Dhcp6Core._proxy_information,
    (Mode6.PROXY, M.REQUEST): Dhcp6Core._proxy_request,
}
