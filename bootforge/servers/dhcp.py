"""asyncio shell around `DhcpCore`: sockets, the group-commit loop, the expiry timer.

One UDP socket per configured interface and port, bound to 0.0.0.0 (broadcasts never reach a
socket bound to the interface address) and pinned with SO_BINDTODEVICE, so the interface of each
datagram is known without IP_PKTINFO and broadcast replies leave through the interface the
request came in on. Proxy mode adds the same on port 4011.

Readiness is handled with `loop.add_reader` and a drain loop rather than a DatagramProtocol:
one wakeup reads every queued datagram, which is what makes group commit effective. ACKs whose
leases must be durable are queued; one `LeaseStore.commit` covers everything queued while the
previous commit ran, and only then are those ACKs sent.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from ipaddress import IPv4Address

from bootforge.netboot.dhcp import (
    BootSource,
    DhcpConfig,
    DhcpCore,
    Interface,
    LeaseRecord,
    LeaseStore,
    Mode,
    NodeEvent,
    Outcome,
    Reservations,
)
from bootforge.servers.group_commit import GroupCommit

__all__ = ["DhcpServer", "read_interface"]

log = logging.getLogger(__name__)

_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921
_DRAIN_LIMIT = 256  # datagrams per wakeup; bounds the time one wakeup holds the loop
_MAX_DATAGRAM = 4096

SocketFactory = Callable[[], socket.socket]
Clock = Callable[[], float]


def _udp_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def read_interface(sock: socket.socket, name: str) -> Interface:
    """Address and MTU of `name`, seen from the namespace `sock` lives in."""
    request = struct.pack("16s16x", name.encode())
    try:
        addr = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        mtu = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, request)
    except OSError as exc:
        raise OSError(exc.errno, f"interface {name!r} has no IPv4 address: {exc}") from exc
    address = IPv4Address(addr[20:24])
    return Interface(name, address, struct.unpack_from("i", mtu, 16)[0])


class DhcpServer:
    def __init__(
        self,
        config: DhcpConfig,
        boot_source: BootSource,
        reservations: Reservations,
        store: LeaseStore,
        *,
        socket_factory: SocketFactory = _udp_socket,
        on_event: Callable[[NodeEvent], None] | None = None,
        clock: Clock = time.time,
        server_port: int = 67,
        pxe_port: int = 4011,
        sweep_interval: float = 10.0,
        recv_buffer: int = 1 << 20,
    ) -> None:
        self.config = config
        self._boot_source = boot_source
        self._reservations = reservations
        self._store = store
        self._socket_factory = socket_factory
        self._on_event = on_event
        self._clock = clock  # wall clock: lease deadlines are persisted
        self._ports = (server_port, pxe_port)
        self._sweep_interval = sweep_interval
        # Enough to absorb a boot storm's burst (~2,000 requests), small enough that an
        # overloaded server drops early instead of answering seconds late (clients will have
        # retransmitted by then). The kernel caps it at net.core.rmem_max.
        self._recv_buffer = recv_buffer
        self.core: DhcpCore | None = None
        self.interfaces: dict[str, Interface] = {}
        self.shell_drops: Counter[str] = Counter()
        self.commits = 0
        self._sockets: list[socket.socket] = []
        self._batches: GroupCommit[tuple[socket.socket, Outcome]] = GroupCommit(self._commit, "dhcp-commit")
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def drops(self) -> Counter[str]:
        """Every dropped datagram or reply, by reason (core and shell)."""
        total = Counter(self.shell_drops)
        if self.core is not None:
            total.update(self.core.drops)
        return total

    async def start(self) -> None:
        records = await self._store.load()
        self.core = DhcpCore(self.config, self._boot_source, self._reservations, records)
        loop = asyncio.get_running_loop()
        ports = [self._ports[0]] + ([self._ports[1]] if self.config.mode is Mode.PROXY else [])
        try:
            for name in self.config.interfaces:
                for port in ports:
                    sock = self._open(name, port)
                    interface = read_interface(sock, name)
                    self.interfaces[name] = interface
                    loop.add_reader(sock.fileno(), self._readable, sock, interface, port)
        except BaseException:
            await self.close()
            raise
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="dhcp-sweep")
        self._batches.start()
        log.info("dhcp %s serving %s", self.config.mode.value, list(self.interfaces.values()))

    def _open(self, name: str, port: int) -> socket.socket:
        sock = self._socket_factory()
        self._sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        return sock

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
        # Drain: queued ACKs are still written and sent before the sockets close.
        await self._batches.close()
        # A store with a thread or connection of its own (conductor.netboot.DbLeaseStore on SQLite)
        # releases it once nothing more will be committed.
        release = getattr(self._store, "close", None)
        if callable(release):
            release()
        for sock in self._sockets:
            with suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    # -- receive path -------------------------------------------------------------------------

    def _readable(self, sock: socket.socket, interface: Interface, port: int) -> None:
        core = self.core
        assert core is not None
        now = self._clock()
        for _ in range(_DRAIN_LIMIT):
            try:
                data, src = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                self.shell_drops[f"recv_error_{exc.errno}"] += 1
                break
            try:
                outcome = core.receive(data, interface, now, src=src, port=port)
            except Exception:  # a bug in the core must not take the server down: count it
                log.exception("dhcp core failed on a %d-byte datagram from %s", len(data), src)
                self.shell_drops["internal_error"] += 1
                continue
            self._dispatch(sock, outcome)
        self._batches.kick()

    def _dispatch(self, sock: socket.socket, outcome: Outcome) -> None:
        if outcome.records:
            # Replies wait for the write when `hold` is set; RELEASE/DECLINE writes have none.
            self._batches.add((sock, outcome))
        if not outcome.hold:
            self._send(sock, outcome)
        if outcome.events and self._on_event is not None:
            for event in outcome.events:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("node event callback failed for %s", event)
                    self.shell_drops["event_callback_error"] += 1

    def _send(self, sock: socket.socket, outcome: Outcome) -> None:
        for reply in outcome.replies:
            try:
                sock.sendto(reply.data, (reply.address, reply.port))
            except BlockingIOError:
                self.shell_drops["send_would_block"] += 1
            except OSError as exc:
                self.shell_drops[f"send_error_{exc.errno}"] += 1

    async def _commit(self, batch: list[tuple[socket.socket, Outcome]]) -> None:
        records: list[LeaseRecord] = [r for _, outcome in batch for r in outcome.records]
        try:
            await self._store.commit(records)
        except Exception:
            log.exception("lease commit of %d records failed", len(records))
            self.shell_drops["commit_failed"] += sum(len(o.replies) for _, o in batch)
            return
        self.commits += 1
        for sock, outcome in batch:
            if outcome.hold:
                self._send(sock, outcome)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            assert self.core is not None
            outcome = self.core.sweep(self._clock())
            if self._sockets and (outcome.records or outcome.events):
                self._dispatch(self._sockets[0], outcome)
                self._batches.kick()
