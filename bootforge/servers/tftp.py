"""asyncio shell around the sans-IO TFTP core: sockets, timers, counters, logs and events.

One listening socket takes requests (port 69). Each accepted request gets its own socket on an
ephemeral port (its TID, RFC 1350 section 4) bound to the address the request arrived on, so the
reply leaves through the interface the client used. Sockets are raw non-blocking sockets.

The data phase of lockstep (windowsize 1) transfers of real files runs in native code when the
C extension bootforge.servers._tftp_dataplane is built (dataplane "auto" or "native"): right
after DATA block 1 the transfer's socket leaves our epoll set and a thread of its own does
blocking recvfrom / pread / sendto without the GIL, keeping the core's rules, and reports one
record that TftpTransfer.finish_external() turns into the core's own result. Why: on
bench/netboot_tftp.py this event loop reached 0.8x-1.0x of tftpd-hpa's lockstep throughput (a
bare blocking Python loop 0.95x at one client; Python threads 0.4x-0.6x at 16-64 clients, the
GIL), a C thread per transfer (tftpd-hpa's own shape: a process per transfer) 0.9x-1.1x at one
client and 1.0x-1.4x at 16-64, with a third less server CPU. Requests, negotiation, windowsize
> 1 (3.3x-4.6x of tftpd-hpa from here: one GSO send per window), netascii, virtual files and
size probes stay here, and so does all of lockstep with dataplane="python" or when a thread
cannot be made. netascii is converted as it is sent (netboot.tftp.NetasciiReadable), so a
transfer holds no copy of its file. The rest of this docstring is the Python data path.

Lockstep TFTP is one small datagram each way per block, so the cost per ACK decides throughput.
The transfer sockets sit in one epoll set of our own, and the loop watches only that set's fd:
one loop callback handles every transfer that has an ACK waiting (no per-socket handle, and a
batch per wake-up when many clients are busy). An in-order lockstep ACK takes the core's fast
path (TftpTransfer.lockstep_ack: bytes in, the next DATA packet out, read ahead of time); all
else goes through the core's transition table. One receive buffer is shared by the whole server
(callbacks never interleave), and the per-packet path neither logs nor touches timers.

Timers are lazy: each transfer has at most one loop.call_at pending. When it fires early because
the transfer made progress and moved its deadline, it is re-armed for the new deadline instead of
being cancelled and re-created on every ACK.

Nothing a peer sends can raise out of here: the core parses and drops, and socket errors are
counted. Every transfer ends with one TftpEvent for the node timeline (the product maps the
client address to a node).
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from bootforge.netboot.tftp import (
    Error as ErrorPacket,
)
from bootforge.netboot.tftp import (
    ErrorCode,
    FileSource,
    MalformedPacket,
    Outcome,
    Request,
    State,
    TftpTransfer,
    TransferConfig,
    encode_packet,
    parse_packet,
)
from bootforge.text import printable

if TYPE_CHECKING:
    from bootforge.servers._tftp_dataplane import DataPlane as _DataPlane
    from bootforge.servers._tftp_dataplane import Record as _Record

__all__ = ["TftpCounters", "TftpEvent", "TftpServer"]

log = logging.getLogger("bootforge.tftp")

SocketFactory = Callable[[int, int], socket.socket]
Address = tuple[str, int]
EventSink = Callable[["TftpEvent"], None]
DataPlaneChoice = Literal["auto", "native", "python"]

# Python 3.11 has no socket.IP_PKTINFO; these are the Linux values.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_CMSG_SPACE = socket.CMSG_SPACE(20)
_MAX_DATAGRAM = 65536
# UDP segmentation offload (Linux 4.18+): one sendmsg carries a window, the kernel cuts it into
# datagrams. The kernel caps a send at 64 segments and a 64 KiB UDP payload.
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65507
_DRAIN = 64  # datagrams handled per wake-up before yielding to other sockets
_BATCH = 64  # transfer sockets served per poll of our epoll set
# Polls per wake-up: while ACKs keep arriving during a batch, serve them without going back to
# the loop (and to sleep); bounded so requests and other servers on the loop wait a few ms at most.
_ROUNDS = 4
_UNKNOWN_TID = encode_packet(ErrorPacket(ErrorCode.UNKNOWN_TID, "unknown transfer ID"))
_QUIET_OUTCOMES = (Outcome.COMPLETED, Outcome.SIZE_PROBE, Outcome.NOT_FOUND)
_NATIVE_MODULE = "bootforge.servers._tftp_dataplane"
_STOP_WAIT = 5.0  # seconds aclose() waits for native transfers (they stop in microseconds)
_stuck: list[object] = []  # data planes whose threads would not stop: kept, never freed under them


@dataclass(frozen=True, slots=True)
class TftpEvent:
    """One finished transfer, for the node's event timeline."""

    client: Address
    server: Address
    filename: str
    outcome: str  # an Outcome value: completed, size_probe, not_found, denied, timed_out, ...
    bytes_sent: int
    duration: float
    blksize: int
    windowsize: int
    retransmits: int
    error_code: int | None = None
    message: str = ""


@dataclass(slots=True)
class TftpCounters:
    requests: int = 0
    malformed: int = 0  # datagrams on the request port that are not TFTP
    unexpected: int = 0  # TFTP packets other than RRQ/WRQ on the request port
    duplicate_requests: int = 0  # a retransmitted RRQ for a transfer already running
    overloaded: int = 0  # requests dropped because max_transfers were running
    client_limited: int = 0  # requests dropped: max_transfers_per_client of that address running
    foreign_tid: int = 0  # datagrams on a transfer port from someone else (answered ERROR 5)
    dropped: int = 0  # datagrams a transfer had no use for
    stale_acks: int = 0
    retransmits: int = 0  # DATA/OACK packets sent again after a timeout
    send_errors: int = 0
    socket_errors: int = 0
    completed: int = 0
    size_probes: int = 0
    failed: int = 0
    event_errors: int = 0  # the event callback raised
    native: int = 0  # transfers whose data phase ran in the native data plane
    native_fallbacks: int = 0  # hand-offs the native data plane refused (no thread): run in Python


class _Session:
    __slots__ = ("client", "handed_off_at", "key", "local", "sock", "timer", "token", "transfer")

    def __init__(
        self, key: tuple[tuple[object, ...], bytes], sock: socket.socket, transfer: TftpTransfer
    ) -> None:
        self.key = key
        self.client = key[0]  # as recvmsg gave it: IPv6 keeps flow info and scope id
        self.sock = sock
        self.local: Address = sock.getsockname()[:2]
        self.transfer = transfer
        self.timer: asyncio.TimerHandle | None = None
        self.token = 0  # its id in the native data plane; 0: not handed off (yet), -1: never
        self.handed_off_at = 0.0


class TftpServer:
    """Read-only TFTP server for one address; see the module docstring.

    `address` may be a wildcard ("0.0.0.0", "::"): IP_PKTINFO then tells which local address
    each request came to. `mtu` caps blksize so DATA is never fragmented (1468 for IPv4 on
    Ethernet). `socket_factory(family, type)` makes every socket, e.g. inside a network
    namespace. `on_event` gets one TftpEvent per finished transfer and must not block; `source`
    (and its virtual-file hook) is called on the event loop, so it must answer from memory or
    the local filesystem. `gso` sends each window with one UDP_SEGMENT call when the kernel
    allows it, and falls back to one call per packet by itself. `reuse_port` lets several
    processes listen on the same address and port (SO_REUSEPORT): the kernel spreads requests
    over them by the client's address and port, so a retransmitted RRQ reaches the same one.
    `dataplane` picks who runs the data phase of lockstep transfers from real files: "native"
    (the C extension; an error if it is not built), "python", or "auto" (native when built).
    `max_transfers` bounds the transfers running at once and `max_transfers_per_client` those of
    one client address (firmware and boot loaders fetch one file at a time): requests past either
    are dropped and counted, and the client's retransmitted RRQ is served once a slot frees.
    """

    def __init__(
        self,
        source: FileSource,
        address: str,
        *,
        port: int = 69,
        config: TransferConfig | None = None,
        mtu: int | None = 1500,
        on_event: EventSink | None = None,
        socket_factory: SocketFactory | None = None,
        max_transfers: int = 1024,
        max_transfers_per_client: int = 16,
        gso: bool = True,
        reuse_port: bool = False,
        dataplane: DataPlaneChoice = "auto",
    ) -> None:
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._address = address
        self._port = port
        self._wildcard = ipaddress.ip_address(address).is_unspecified
        config = config or TransferConfig()
        if mtu is not None:
            # IP header (20 or 40), UDP (8) and TFTP (4): the largest block that is not fragmented.
            overhead = (40 if self._family == socket.AF_INET6 else 20) + 8 + 4
            config = replace(config, max_blksize=min(config.max_blksize, mtu - overhead))
        self.config = config
        self.counters = TftpCounters()
        self._source = source
        self._on_event = on_event
        self._socket_factory: SocketFactory = socket_factory or socket.socket
        self._max_transfers = max_transfers
        self._max_per_client = max_transfers_per_client
        self._per_client: dict[str, int] = {}  # client address -> transfers running
        self._gso = gso
        self._reuse_port = reuse_port
        self._sessions: dict[tuple[tuple[object, ...], bytes], _Session] = {}
        self._by_fd: dict[int, _Session] = {}
        self._epoll: select.epoll | None = None
        self._buffer = bytearray(_MAX_DATAGRAM)
        self._view = memoryview(self._buffer)
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._native_module = _load_native(dataplane)
        self._native_outcomes = _native_outcomes(self._native_module)
        self._plane: _DataPlane | None = None
        self._native_sessions: dict[int, _Session] = {}
        self._next_token = 1

    @property
    def dataplane(self) -> str:
        """Who runs lockstep data phases: "native" or "python"."""
        return "python" if self._native_module is None else "native"

    @property
    def local_address(self) -> Address:
        if self._listener is None:
            raise RuntimeError("server not started")
        name: Address = self._listener.getsockname()[:2]
        return name

    @property
    def active_transfers(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock = self._socket_factory(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self._wildcard:
                self._enable_pktinfo(sock)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._address, self._port))
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._epoll = select.epoll()
        self._loop.add_reader(self._epoll.fileno(), self._on_transfers_readable)
        self._loop.add_reader(sock.fileno(), self._on_request_readable)
        if self._native_module is not None:
            self._plane = self._native_module.DataPlane()
            self._loop.add_reader(self._plane.fileno(), self._on_native_readable)
        log.info(
            "TFTP listening on %s port %d (lockstep data phases: %s)",
            self._address,
            self.local_address[1],
            self.dataplane,
        )

    async def aclose(self) -> None:
        self._stop_native()
        for session in list(self._sessions.values()):
            self._end(session, cancelled=True)
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._epoll is not None and self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    async def __aenter__(self) -> TftpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests -------------------------------------------------------------------------------

    def _enable_pktinfo(self, sock: socket.socket) -> None:
        if self._family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)

    def _on_request_readable(self) -> None:
        assert self._listener is not None
        for _ in range(_DRAIN):
            try:
                data, ancdata, _flags, client = self._listener.recvmsg(_MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters.socket_errors += 1
                return
            self._on_request(data, client, self._local_for(ancdata))

    def _local_for(self, ancdata: list[tuple[int, int, bytes]]) -> str:
        if not self._wildcard:
            return self._address
        for level, kind, payload in ancdata:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(payload) >= 12:
                # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                return socket.inet_ntop(socket.AF_INET, payload[8:12])
            if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(payload) >= 20:
                address = socket.inet_ntop(socket.AF_INET6, payload[:16])
                if address.startswith("fe80"):
                    (ifindex,) = struct.unpack_from("=I", payload, 16)
                    address = f"{address}%{socket.if_indextoname(ifindex)}"
                return address
        return self._address

    def _on_request(self, data: bytes, client: tuple[object, ...], local: str) -> None:
        try:
            request = parse_packet(data)
        except MalformedPacket:
            self.counters.malformed += 1
            return
        if not isinstance(request, Request):
            self.counters.unexpected += 1
            return
        key = (client, data)
        if key in self._sessions:
            # The client retransmitted its RRQ; the running transfer's own timer answers it.
            self.counters.duplicate_requests += 1
            return
        if len(self._sessions) >= self._max_transfers:
            self.counters.overloaded += 1
            return
        if self._per_client.get(str(client[0]), 0) >= self._max_per_client:
            self.counters.client_limited += 1
            return
        self.counters.requests += 1
        self._start_session(key, request, client, local)

    def _start_session(
        self,
        key: tuple[tuple[object, ...], bytes],
        request: Request,
        client: tuple[object, ...],
        local: str,
    ) -> None:
        assert self._loop is not None and self._epoll is not None
        try:
            sock = self._socket_factory(self._family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((local, 0))
        except OSError:
            self.counters.socket_errors += 1
            log.exception("TFTP: cannot open a transfer socket on %s", local)
            return
        peer: Address = (str(client[0]), int(client[1]))  # type: ignore[call-overload]
        transfer = TftpTransfer(request, self._source, peer, self.config)
        session = _Session(key, sock, transfer)
        self._sessions[key] = session
        address = str(client[0])
        self._per_client[address] = self._per_client.get(address, 0) + 1
        self._send(session, transfer.begin(self._loop.time()))
        if transfer.result is not None:
            self._end(session)
            return
        if self._plane is not None and self._hand_off(session):
            return
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._by_fd[sock.fileno()] = session
        self._arm(session)

    # -- transfers ------------------------------------------------------------------------------

    def _on_transfers_readable(self) -> None:
        assert self._loop is not None and self._epoll is not None
        for _ in range(_ROUNDS):
            try:
                ready = self._epoll.poll(0, _BATCH)
            except OSError:
                self.counters.socket_errors += 1
                return
            if not ready:
                return
            self._serve(ready, self._loop.time())

    def _serve(self, ready: list[tuple[int, int]], now: float) -> None:
        # One datagram per ready socket: a transfer socket mostly holds a single ACK, and
        # draining would pay for a BlockingIOError on every packet. Level-triggered epoll
        # reports a socket again on the next poll if more wait.
        buffer, view, by_fd = self._buffer, self._view, self._by_fd
        for fd, _ in ready:
            session = by_fd.get(fd)
            if session is None:
                continue  # ended earlier in this batch
            try:
                n, source = session.sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self.counters.socket_errors += 1
                continue
            if source != session.client:
                self._answer_stranger(session.sock, source)
                continue
            packet = session.transfer.lockstep_ack(view[:n], now)
            if packet is None:
                self._on_datagram(session, view[:n], now)
                continue
            try:
                session.sock.sendto(packet, source)
            except OSError:
                self.counters.send_errors += 1  # lost like on a wire: the timer recovers it

    def _on_datagram(self, session: _Session, datagram: memoryview, now: float) -> None:
        transfer = session.transfer
        self._send(session, transfer.receive(datagram, now))
        if transfer.result is not None:
            self._end(session)
        elif session.token == 0 and self._plane is not None and self._hand_off(session):
            pass
        elif session.timer is None:
            self._arm(session)

    def _answer_stranger(self, sock: socket.socket, source: tuple[object, ...]) -> None:
        self.counters.foreign_tid += 1
        try:
            sock.sendto(_UNKNOWN_TID, source)
        except OSError:
            self.counters.send_errors += 1

    def _send(self, session: _Session, packets: list[bytes | memoryview]) -> None:
        if self._gso and len(packets) > 1:
            run = session.transfer.data_run()
            if run is not None and self._send_segmented(session, *run):
                return
        sendto, client = session.sock.sendto, session.client
        for packet in packets:
            try:
                sendto(packet, client)
            except OSError:
                # A full socket buffer loses this packet; the client's gap ACK or our timer
                # recovers it, exactly as if the network had dropped it.
                self.counters.send_errors += 1

    def _send_segmented(self, session: _Session, run: memoryview, segment: int) -> bool:
        """Send a window with UDP GSO; False (and GSO off for good) if the kernel refuses."""
        per_send = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // segment) * segment
        control = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", segment))]
        for start in range(0, len(run), per_send):
            try:
                session.sock.sendmsg([run[start : start + per_send]], control, 0, session.client)
            except BlockingIOError:
                self.counters.send_errors += 1  # lost like on a wire: gap ACK or timer recovers
            except OSError as exc:
                if start:
                    self.counters.send_errors += 1
                    continue
                log.info("TFTP: UDP segmentation offload unavailable (%s); sending per packet", exc)
                self._gso = False
                return False
        return True

    # -- the native data plane -----------------------------------------------------------------

    def _hand_off(self, session: _Session) -> bool:
        """Give a lockstep transfer's data phase to the native data plane, when it qualifies;
        True when it runs there now (its socket leaves our epoll set, its timer is cancelled)."""
        transfer = session.transfer
        phase = transfer.external_data_phase()
        if phase is None or self._plane is None or self._loop is None:
            if transfer.state is State.SENDING:
                session.token = -1  # it will not qualify later either: stop asking
            return False
        token, self._next_token = self._next_token, self._next_token + 1
        handed_off_at = self._loop.time()
        client = _sockaddr(session.client)
        started = self._plane.start(
            token, session.sock.fileno(), phase.fileno, client, phase.blksize, phase.size,
            phase.timeout, phase.max_retries, phase.retries, phase.acked, phase.sent,
        )  # fmt: skip
        if not started:
            self.counters.native_fallbacks += 1
            session.token = -1  # served here to its end
            return False
        self.counters.native += 1
        fd = session.sock.fileno()
        if self._by_fd.pop(fd, None) is not None and self._epoll is not None:
            self._epoll.unregister(fd)
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        session.token, session.handed_off_at = token, handed_off_at
        self._native_sessions[token] = session
        return True

    def _on_native_readable(self) -> None:
        assert self._plane is not None
        for record in self._plane.drain():
            self._finish_native(record)

    def _finish_native(self, record: _Record) -> None:
        token, outcome, acked, retransmits, dropped, stale, strangers, send_errors, socket_errors = record[:9]
        elapsed, error = record[9:]
        session = self._native_sessions.pop(token)
        counters = self.counters
        counters.foreign_tid += strangers
        counters.send_errors += send_errors
        counters.socket_errors += socket_errors
        result = self._native_outcomes[outcome]
        if result is None:
            counters.dropped += dropped
            counters.stale_acks += stale
            counters.retransmits += retransmits
            self._end(session, cancelled=True)
            return
        packet = parse_packet(error) if error else None  # the data plane checked it is an ERROR
        session.transfer.finish_external(
            session.handed_off_at + elapsed,
            result,
            acked=acked,
            retransmits=retransmits,
            dropped=dropped,
            stale_acks=stale,
            error=packet if isinstance(packet, ErrorPacket) else None,
        )
        self._end(session)

    def _stop_native(self) -> None:
        """Cancel the native transfers and wait for their threads; finished ones still report."""
        plane, self._plane = self._plane, None
        if plane is None:
            return
        left = plane.stop(_STOP_WAIT)
        for record in plane.drain():
            self._finish_native(record)
        if self._loop is not None:
            self._loop.remove_reader(plane.fileno())
        if left:
            # Their sockets and files stay open (a thread still uses them) and so does the plane.
            log.error("TFTP: %d native transfers did not stop; their descriptors are leaked", left)
            for session in self._native_sessions.values():
                if self._sessions.pop(session.key, None) is not None:
                    self._release_client(session)
            self._native_sessions.clear()
            _stuck.append(plane)
            return
        plane.close()

    def _release_client(self, session: _Session) -> None:
        address = str(session.client[0])
        left = self._per_client.get(address, 1) - 1
        if left > 0:
            self._per_client[address] = left
        else:
            self._per_client.pop(address, None)

    # -- timers ---------------------------------------------------------------------------------

    def _arm(self, session: _Session) -> None:
        deadline = session.transfer.deadline
        if session.timer is None and deadline is not None and self._loop is not None:
            session.timer = self._loop.call_at(deadline, self._on_timer, session)

    def _on_timer(self, session: _Session) -> None:
        assert self._loop is not None
        session.timer = None
        transfer = session.transfer
        self._send(session, transfer.on_timer(self._loop.time()))
        if transfer.result is not None:
            self._end(session)
        else:
            self._arm(session)

    def _end(self, session: _Session, *, cancelled: bool = False) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            self._release_client(session)
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        if self._by_fd.get(session.sock.fileno()) is session:
            del self._by_fd[session.sock.fileno()]
            if self._epoll is not None:
                self._epoll.unregister(session.sock.fileno())
        session.sock.close()
        transfer = session.transfer
        if cancelled:
            transfer.abandon()
        self.counters.dropped += transfer.dropped
        self.counters.stale_acks += transfer.stale_acks
        self.counters.retransmits += transfer.retransmits
        if not cancelled:
            self._report(session)

    def _report(self, session: _Session) -> None:
        transfer, result = session.transfer, session.transfer.result
        if result is None:
            return
        event = TftpEvent(
            client=transfer.client,
            server=session.local,
            filename=transfer.request.filename,
            outcome=result.outcome.value,
            bytes_sent=result.bytes_sent,
            duration=result.duration,
            blksize=transfer.blksize,
            windowsize=transfer.windowsize,
            retransmits=result.retransmits,
            error_code=getattr(result, "error_code", None),
            message=getattr(result, "message", ""),
        )
        self._count_and_log(event, result.outcome)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                self.counters.event_errors += 1
                log.exception("TFTP event callback failed")

    def _count_and_log(self, event: TftpEvent, outcome: Outcome) -> None:
        if outcome is Outcome.COMPLETED:
            self.counters.completed += 1
        elif outcome is Outcome.SIZE_PROBE:
            self.counters.size_probes += 1
        else:
            self.counters.failed += 1
        level = logging.INFO if outcome in _QUIET_OUTCOMES else logging.WARNING
        if outcome is Outcome.SIZE_PROBE:
            what = "size probe (tsize asked, then ERROR 8: normal for UEFI firmware)"
        else:
            what = f"{outcome.value} {printable(event.message)}".rstrip()
        log.log(
            level,
            "TFTP %s:%d %s: %s, %d bytes in %.3fs (blksize %d, windowsize %d, %d retransmits)",
            *event.client,
            printable(event.filename),
            what,
            event.bytes_sent,
            event.duration,
            event.blksize,
            event.windowsize,
            event.retransmits,
        )


def _load_native(choice: DataPlaneChoice) -> ModuleType | None:
    if choice == "python":
        return None
    try:
        return importlib.import_module(_NATIVE_MODULE)
    except ImportError as exc:
        if choice == "native":
            raise RuntimeError(f"the native TFTP data plane is not built ({exc})") from exc
        log.info("TFTP: native data plane not available (%s); lockstep transfers run in Python", exc)
        return None


def _native_outcomes(module: ModuleType | None) -> dict[int, Outcome | None]:
    """The data plane's outcome numbers; None: cancelled by aclose(), no result."""
    if module is None:
        return {}
    return {
        module.COMPLETED: Outcome.COMPLETED,
        module.CLIENT_ERROR: Outcome.CLIENT_ERROR,
        module.TIMED_OUT: Outcome.TIMED_OUT,
        module.READ_ERROR: Outcome.READ_ERROR,
        module.CANCELLED: None,
    }


def _sockaddr(client: tuple[object, ...]) -> bytes:
    """The client as the C struct sockaddr_in / sockaddr_in6 the data plane sends to."""
    host, port = str(client[0]), int(client[1])  # type: ignore[call-overload]
    if len(client) == 2:
        addr4 = socket.inet_pton(socket.AF_INET, host)
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, addr4)
    flowinfo, scope_id = int(client[2]), int(client[3])  # type: ignore[call-overload]
    addr6 = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    head = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16s", port, flowinfo, addr6)
    return head + struct.pack("=I", scope_id)
