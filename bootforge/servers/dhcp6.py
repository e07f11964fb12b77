"""asyncio shell around `Dhcp6Core`: one UDP socket per interface, group commit, expiry, rate limit.

Each socket is bound to [::]:547 and pinned to its interface with SO_BINDTODEVICE, and joins the
All_DHCP_Relay_Agents_and_Servers group (ff02::1:2) on that interface's index only: a client's
SOLICIT (multicast) and a relay's RELAY-FORW (unicast to us) both arrive there, and nothing from
another interface does. Proxy mode adds [::]:4011 per interface, where UEFI firmware sends its
boot-service REQUEST (edk2's ProxyBinl) and expects the answer from. Replies go to the client's
address (a link-local one with the interface's scope), or to the relay on port 547, as the core says.

As the DHCPv4 shell: readiness by `loop.add_reader` and a bounded drain per wakeup; replies whose
bindings must be durable wait until one `commit` covers everything queued meanwhile; the core's
counters plus the shell's own (`shell_drops`) say what was dropped and why. Anyone on the link can
send DHCPv6, so each client address is held to `rate` datagrams per second (burst `burst`); the
rest are dropped and counted (`rate_limited`), and the map of addresses is bounded.

Leases live in a JSON file beside the database (`FileLease6Store`): the v4 lease table has no
column for a DUID and IAID, which is what a DHCPv6 binding is keyed by.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from ipaddress import IPv6Address
from pathlib import Path
from typing import Protocol

from bootforge.netboot.dhcp import NodeEvent, Reservations
from bootforge.netboot.dhcp6 import (
    SERVER_PORT,
    Boot6Source,
    Dhcp6Config,
    Dhcp6Core,
    Lease6Record,
    Lease6State,
    Mode6,
    MsgType,
    Outcome6,
)
from bootforge.servers.group_commit import GroupCommit

__all__ = ["ALL_DHCP_SERVERS", "AsyncLease6Store", "Dhcp6Server", "FileLease6Store"]

log = logging.getLogger(__name__)

ALL_DHCP_SERVERS = "ff02::1:2"  # All_DHCP_Relay_Agents_and_Servers (RFC 8415 7.1)
_DRAIN_LIMIT = 256
_SIOCGIFINDEX = 0x8933
_MAX_DATAGRAM = 4096
_MAX_TRACKED_CLIENTS = 4096

SocketFactory = Callable[[], socket.socket]

# /metrics labels for the message type of a received datagram (its first byte): a fixed set, so a
# stranger's junk cannot grow the series (anything else is "unknown").
_TYPE_LABELS = {int(t): t.name.lower() for t in MsgType}
RECEIVED_LABELS = (*_TYPE_LABELS.values(), "unknown")


def _udp6_socket() -> socket.socket:
    return socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)


class AsyncLease6Store(Protocol):
    async def load(self) -> Sequence[Lease6Record]: ...
    async def commit(self, records: Sequence[Lease6Record]) -> None: ...


class FileLease6Store:
    """Lease6Records in one JSON file, keyed by address (the newest record wins), replaced atomically.

    At most `max_records` are kept: the oldest-expiring free ones go first. Written off the event
    loop; one writer at a time (the server commits from a single task)."""

    def __init__(self, path: Path, max_records: int = 65536) -> None:
        self.path = path
        self.max_records = max_records
        self._records: dict[str, Lease6Record] = {}

    async def load(self) -> Sequence[Lease6Record]:
        self._records = await asyncio.to_thread(self._read)
        return list(self._records.values())

    def _read(self) -> dict[str, Lease6Record]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A damaged file must not stop serve: the leases are rebuilt as clients renew.
            log.warning("DHCPv6 leases in %s unreadable, starting without them: %s", self.path, exc)
            return {}
        out: dict[str, Lease6Record] = {}
        for row in raw if isinstance(raw, list) else []:
            try:
                record = Lease6Record(
                    ip=IPv6Address(row["ip"]),
                    duid=bytes.fromhex(row["duid"]),
                    iaid=int(row["iaid"]),
                    state=Lease6State(row["state"]),
                    expires=float(row["expires"]),
                    mac=row.get("mac"),
                    node_id=row.get("node_id"),
                )
            except (KeyError, TypeError, ValueError):
                continue
            out[str(record.ip)] = record
        return out

    def state_counts(self) -> Counter[str]:
        """The leases in the file by state, as last committed (for /metrics at scrape time)."""
        return Counter(r.state.value for r in self._records.values())

    async def commit(self, records: Sequence[Lease6Record]) -> None:
        if not records:
            return
        for record in records:
            self._records[str(record.ip)] = record
        if len(self._records) > self.max_records:
            keep = sorted(
                self._records.values(),
                key=lambda r: (r.state in (Lease6State.BOUND, Lease6State.DECLINED), r.expires),
            )[-self.max_records :]
            self._records = {str(r.ip): r for r in keep}
        rows = [
            {
                "ip": str(r.ip),
                "duid": r.duid.hex(),
                "iaid": r.iaid,
                "state": r.state.value,
                "expires": r.expires,
                "mac": r.mac,
                "node_id": r.node_id,
            }
            for r in self._records.values()
        ]
        await asyncio.to_thread(self._write, json.dumps(rows))

    def _write(self, text: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)  # a crash mid-write leaves the previous file


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp = tokens, stamp


class Dhcp6Server:
    def __init__(
        self,
        config: Dhcp6Config,
        boot_source: Boot6Source,
        reservations: Reservations,
        store: AsyncLease6Store,
        interfaces: Sequence[str],
        *,
        socket_factory: SocketFactory = _udp6_socket,
        on_event: Callable[[NodeEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
        port: int = SERVER_PORT,
        boot_service_port: int = 4011,
        sweep_interval: float = 10.0,
        recv_buffer: int = 1 << 20,
        rate: float = 20.0,
        burst: int = 40,
    ) -> None:
        if not interfaces:
            raise ValueError("interfaces: DHCPv6 serves only interfaces named to it")
        self.config = config
        self._boot_source = boot_source
        self._reservations = reservations
        self._store = store
        self._interfaces = tuple(interfaces)
        self._socket_factory = socket_factory
        self._on_event = on_event
        self._clock = clock  # wall clock: lease deadlines are persisted
        self._port = port
        self._boot_service_port = boot_service_port
        self._sweep_interval = sweep_interval
        self._recv_buffer = recv_buffer
        self._rate, self._burst = rate, float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self.core: Dhcp6Core | None = None
        self.shell_drops: Counter[str] = Counter()
        # Every datagram read, by its (outer) message type, before the rate limit: drops are a subset.
        self.received: Counter[str] = Counter()
        self.commits = 0
        self._sockets: list[tuple[socket.socket, str, int]] = []
        self._batches: GroupCommit[tuple[socket.socket, int, Outcome6]] = GroupCommit(
            self._commit, "dhcp6-commit"
        )
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def drops(self) -> Counter[str]:
        total = Counter(self.shell_drops)
        if self.core is not None:
            total.update(self.core.drops)
        return total

    @property
    def sent(self) -> Counter[str]:
        return Counter(self.core.sent) if self.core is not None else Counter()

    def lease_states(self) -> Counter[str]:
        """Leases by state as the store last committed them (empty for a store that cannot say)."""
        counts = getattr(self._store, "state_counts", None)
        return counts() if callable(counts) else Counter()

    async def start(self) -> None:
        records = await self._store.load()
        self.core = Dhcp6Core(self.config, self._boot_source, self._reservations, records)
        loop = asyncio.get_running_loop()
        try:
            ports = [self._port]
            if self.config.mode is Mode6.PROXY:
                ports.append(self._boot_service_port)
            for name in self._interfaces:
                for port in ports:
                    sock, index = self._open(name, port, join=port == self._port)
                    loop.add_reader(sock.fileno(), self._readable, sock, name, index)
        except BaseException:
            await self.close()
            raise
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="dhcp6-sweep")
        self._batches.start()
        log.info("dhcp6 %s serving %s on port %d", self.config.mode.value, list(self._interfaces), self._port)

    def _open(self, name: str, port: int, join: bool) -> tuple[socket.socket, int]:
        sock = self._socket_factory()
        # The index as the socket's namespace sees it (a test's socket is made in another one).
        try:
            ifreq = fcntl.ioctl(sock.fileno(), _SIOCGIFINDEX, struct.pack("16s16x", name.encode()))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"DHCPv6: no interface {name!r} here: {exc}") from exc
        index = struct.unpack_from("i", ifreq, 16)[0]
        self._sockets.append((sock, name, index))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
        sock.bind(("::", port))
        if join:
            group = socket.inet_pton(socket.AF_INET6, ALL_DHCP_SERVERS) + struct.pack("@I", index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        sock.setblocking(False)
        return sock, index

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
        await self._batches.close()  # queued replies are still committed and sent
        for sock, _, _ in self._sockets:
            with suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    # -- receive path -------------------------------------------------------------------------

    def _admit(self, address: str, now: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED_CLIENTS:
                # Strangers rotating source addresses must not grow the map: start over.
                self._buckets.clear()
            bucket = self._buckets[address] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _readable(self, sock: socket.socket, name: str, index: int) -> None:
        core = self.core
        assert core is not None
        now = self._clock()
        tick = time.monotonic()
        for _ in range(_DRAIN_LIMIT):
            try:
                data, src = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                self.shell_drops[f"recv_error_{exc.errno}"] += 1
                break
            self.received[_TYPE_LABELS.get(data[0], "unknown") if data else "unknown"] += 1
            address, port = str(src[0]).partition("%")[0], int(src[1])
            if not self._admit(address, tick):
                self.shell_drops["rate_limited"] += 1
                continue
            try:
                outcome = core.receive(data, name, now, src=(address, port))
            except Exception:  # a bug in the core must not take the server down: count it
                log.exception("dhcp6 core failed on a %d-byte datagram from %s", len(data), address)
                self.shell_drops["internal_error"] += 1
                continue
            self._dispatch(sock, index, outcome)
        self._batches.kick()

    def _dispatch(self, sock: socket.socket, index: int, outcome: Outcome6) -> None:
        if outcome.records:
            self._batches.add((sock, index, outcome))
        if not outcome.hold:
            self._send(sock, index, outcome)
        if outcome.events and self._on_event is not None:
            for event in outcome.events:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("node event callback failed for %s", event)
                    self.shell_drops["event_callback_error"] += 1

    def _send(self, sock: socket.socket, index: int, outcome: Outcome6) -> None:
        for reply in outcome.replies:
            # A link-local destination needs the interface; anything else is routed as usual.
            scope = index if reply.address.lower().startswith("fe80:") else 0
            try:
                sock.sendto(reply.data, (reply.address, reply.port, 0, scope))
            except BlockingIOError:
                self.shell_drops["send_would_block"] += 1
            except OSError as exc:
                self.shell_drops[f"send_error_{exc.errno}"] += 1

    async def _commit(self, batch: list[tuple[socket.socket, int, Outcome6]]) -> None:
        records = [r for _, _, outcome in batch for r in outcome.records]
        try:
            await self._store.commit(records)
        except Exception:
            log.exception("DHCPv6 lease commit of %d records failed", len(records))
            self.shell_drops["commit_failed"] += sum(len(o.replies) for _, _, o in batch)
            return
        self.commits += 1
        for sock, index, outcome in batch:
            if outcome.hold:
                self._send(sock, index, outcome)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            assert self.core is not None
            outcome = self.core.sweep(self._clock())
            if self._sockets and (outcome.records or outcome.events):
                sock, _, index = self._sockets[0]
                self._dispatch(sock, index, outcome)
                self._batches.kick()
