"""HTTP boot server: iPXE scripts and grub.cfg per node, and artifacts (loaders, kernels, initrds,
images) with HEAD, single byte ranges and zero-copy bodies.

h11 parses and frames; this module owns sockets and files. Connections are raw non-blocking
sockets driven with loop.sock_recv/sock_sendall, and file bodies go out with os.sendfile on the
socket, waiting for writability with add_writer. That is zero-copy on every event loop: asyncio's
loop.sendfile() needs its own selector transport and raises NotImplementedError under uvloop,
which uvicorn picks when it is installed.

Rules:
  1. Only GET and HEAD, no request bodies, request heads bounded by max_request_bytes (h11
     answers 431 past it). A request head must arrive whole within head_timeout of its first
     byte (of the connection, for the first request), however it trickles in; a kept-alive
     connection may wait idle_timeout for its next request; every wait for writability has the
     send timeout. So a stalled or slow client costs one socket for a bounded time.
  2. Connections are capped per client address and in total. When every slot is taken, the
     connection that has been reading a request head the longest is dropped for the newcomer:
     slow heads from many addresses cannot lock boot clients out (slowloris).
  3. Paths are percent-decoded, then normalized with the TFTP rules (no "..", leading "/"
     stripped); the resolved file must stay under the root and the last component is opened
     with O_NOFOLLOW. Whatever is refused is a 404 (414 for a name no file system can hold),
     never a 500. Range headers are parsed without int() on unbounded digit strings.
  4. Dynamic routes (the iPXE script, grub.cfg) come from an injected BootScripts; published
     loaders come from an explicit name -> absolute path map (bootforge.netboot.boot.loaders).
  5. Every request ends with one HttpFetchEvent for the node's timeline; the product maps the
     client address or the `mac` query parameter to a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import functools
import http
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import parse_qsl, unquote

import h11

from bootforge.netboot.boot.scripts import BootPlan, RefuseBoot, render_grub, render_ipxe
from bootforge.netboot.tftp import PathRefused, normalize_path
from bootforge.text import printable

__all__ = [
    "BootScripts",
    "HttpBootConfig",
    "HttpBootCounters",
    "HttpBootServer",
    "HttpFetchEvent",
    "StaticBootScripts",
    "Unsatisfiable",
    "content_type",
    "parse_range",
]

log = logging.getLogger("bootforge.http_boot")

Query = Mapping[str, str]
EventSink = Callable[["HttpFetchEvent"], None]

_RECV = 65536
_SENDFILE_MAX = 1 << 30  # per os.sendfile call; the kernel sends what the socket buffer takes
_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)
# Longer numbers are past any file offset; int() is not asked (it refuses 4,300+ digits anyway).
_RANGE_DIGITS = 19
_HUGE = 10**_RANGE_DIGITS
_NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
_PATH_MAX = 1024  # bytes in a decoded path: far beyond any boot artifact's name
_CONTENT_TYPES = {
    ".efi": "application/efi",
    ".signed": "application/efi",  # Debian names signed EFI binaries *.efi.signed
    ".ipxe": "text/plain; charset=utf-8",
    ".cfg": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".iso": "application/x-iso9660-image",
}
_TEXT = "text/plain; charset=utf-8"


class BootScripts(Protocol):
    """What a node should run next; the conductor implements it from node state."""

    def ipxe_script(self, query: Query, client_ip: str) -> str: ...

    def grub_config(self, query: Query, client_ip: str) -> str: ...


class StaticBootScripts:
    """The same plan for every client (tests, single-purpose labs)."""

    def __init__(self, ipxe: BootPlan, grub: BootPlan | None = None) -> None:
        self._ipxe = ipxe
        self._grub = grub or ipxe

    def ipxe_script(self, query: Query, client_ip: str) -> str:
        return render_ipxe(self._counted(self._ipxe, query))

    def grub_config(self, query: Query, client_ip: str) -> str:
        return render_grub(self._counted(self._grub, query))

    @staticmethod
    def _counted(plan: BootPlan, query: Query) -> BootPlan:
        """A refusal continues the retry count the client carries in its query."""
        attempt = query.get("attempt", "1")
        if isinstance(plan, RefuseBoot) and attempt.isdigit() and 0 < int(attempt) <= 1_000_000:
            return replace(plan, attempt=int(attempt))
        return plan


@dataclass(frozen=True, slots=True)
class HttpFetchEvent:
    """One answered (or abandoned) request, for the node's event timeline."""

    client: tuple[str, int]
    method: str
    path: str
    query: dict[str, str]
    status: int
    bytes_sent: int  # body bytes actually written
    duration: float
    range: str | None = None

    @property
    def mac(self) -> str | None:
        return self.query.get("mac")


@dataclass(slots=True)
class HttpBootCounters:
    connections: int = 0
    rejected_connections: int = 0  # over max_connections, nobody to evict
    rejected_per_client: int = 0  # over max_connections_per_client
    evicted: int = 0  # connections still reading a head, dropped to make room (rule 2)
    requests: int = 0
    files: int = 0
    scripts: int = 0
    ranges: int = 0
    unsatisfiable: int = 0
    not_found: int = 0
    bad_requests: int = 0  # malformed or refused by h11, bodies, unknown methods
    timeouts: int = 0  # idle between requests, or a response the client stopped reading
    head_timeouts: int = 0  # request heads not whole within head_timeout
    too_long: int = 0  # 414: a path (part) longer than any file name
    socket_errors: int = 0
    script_errors: int = 0
    event_errors: int = 0
    internal_errors: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True, slots=True)
class HttpBootConfig:
    max_request_bytes: int = 8192
    idle_timeout: float = 30.0  # a kept-alive connection waiting for its next request
    head_timeout: float = 10.0  # a whole request head, from its first byte (rule 1)
    send_timeout: float = 60.0
    max_connections: int = 1024
    # Firmware, iPXE and the agent use one or two connections at a time; a BMC fetching virtual
    # media a few more.
    max_connections_per_client: int = 16
    ipxe_path: str = "/boot/ipxe"
    grub_paths: tuple[str, ...] = ("/boot/grub.cfg", "/grub/grub.cfg")
    backlog: int = 1024


class Unsatisfiable(Exception):
    """A Range header no byte of the file satisfies (416)."""


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes of a single `bytes=` range, or None to serve it all.

    RFC 9110 14.2: a header the server does not understand or does not do (other units, several
    ranges) is ignored; a valid range that starts past the end is unsatisfiable.
    """
    match = _RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = _offset(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = _offset(first)
    end = _offset(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


def _offset(digits: str) -> int:
    """A byte position; every number of more than 19 digits is the same "past any end" value,
    which orders them correctly against file sizes (below 2**63) and against each other except
    huge-against-huge, where a range is unsatisfiable (or all of the file) either way."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _RANGE_DIGITS else _HUGE


def content_type(path: str) -> str:
    return _CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


class _TooLong(Exception):
    pass


class _HeadTimeout(Exception):
    """A request head did not arrive whole within head_timeout."""


@dataclass(slots=True)
class _Exchange:
    """What one request/response pair did, for the event and the counters."""

    client: tuple[str, int]
    started: float
    method: str = "?"
    path: str = "?"
    query: dict[str, str] = field(default_factory=dict)
    status: int = 0
    bytes_sent: int = 0
    range: str | None = None


class _Span:
    """A file body h11 frames without seeing it: only its length matters (h11 sendfile support)."""

    __slots__ = ("count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd, self.offset, self.count = fd, offset, count

    def __len__(self) -> int:
        return self.count


class HttpBootServer:
    """See the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        address: str = "127.0.0.1",
        port: int = 8080,
        scripts: BootScripts | None = None,
        files: Mapping[str, str] | None = None,
        on_event: EventSink | None = None,
        config: HttpBootConfig | None = None,
    ) -> None:
        self._root = os.path.realpath(root)
        self._address = address
        self._port = port
        self._scripts = scripts
        self._files = {normalize_path(k): os.path.abspath(v) for k, v in (files or {}).items()}
        self._on_event = on_event
        self.config = config or HttpBootConfig()
        self.counters = HttpBootCounters()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._per_client: dict[str, int] = {}
        # Connections waiting for or reading a request head, oldest first (dicts keep insertion
        # order): the ones to drop when every slot is taken (rule 2).
        self._heads: dict[asyncio.Task[None], None] = {}
        self._evicted: set[asyncio.Task[None]] = set()  # cancelled, not yet finished
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def local_address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("server not started")
        name: tuple[str, int] = self._listener.getsockname()[:2]
        return name

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._address, self._port))
            sock.listen(self.config.backlog)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._accepting = asyncio.create_task(self._accept_loop(sock), name="http-boot-accept")
        log.info(
            "HTTP boot listening on %s port %d, root %s", self._address, self.local_address[1], self._root
        )

    async def aclose(self) -> None:
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def __aenter__(self) -> HttpBootServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- connections ----------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        assert self._loop is not None
        while True:
            try:
                sock, peer = await self._loop.sock_accept(listener)
            except OSError as exc:
                # EMFILE and friends: count, back off briefly, keep serving the open connections.
                self.counters.socket_errors += 1
                log.warning("HTTP boot: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            client = (str(peer[0]), int(peer[1]))
            if not self._admit(client[0]):
                sock.close()
                continue
            self.counters.connections += 1
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(sock, client))
            self._connections.add(task)
            self._heads[task] = None
            self._per_client[client[0]] = self._per_client.get(client[0], 0) + 1
            task.add_done_callback(functools.partial(self._forget, client[0]))

    def _admit(self, address: str) -> bool:
        """Whether a new connection from `address` may be served, making room if need be (rule 2)."""
        if self._per_client.get(address, 0) >= self.config.max_connections_per_client:
            self.counters.rejected_per_client += 1
            return False
        if len(self._connections) - len(self._evicted) < self.config.max_connections:
            return True
        if not self._heads:
            self.counters.rejected_connections += 1
            return False
        oldest = next(iter(self._heads))
        del self._heads[oldest]
        self._evicted.add(oldest)
        oldest.cancel()
        self.counters.evicted += 1
        return True

    def _forget(self, address: str, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._heads.pop(task, None)
        self._evicted.discard(task)
        left = self._per_client.get(address, 1) - 1
        if left > 0:
            self._per_client[address] = left
        else:
            self._per_client.pop(address, None)

    async def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_request_bytes)
        first = True
        try:
            while await self._one_exchange(conn, sock, peer, first):
                conn.start_next_cycle()
                first = False
        except _HeadTimeout:
            self.counters.head_timeouts += 1
        except TimeoutError:
            self.counters.timeouts += 1
        except OSError:
            self.counters.socket_errors += 1  # reset by the client mid-response: nothing to answer
        except Exception:
            # A bug here must cost one connection, not the server; it is logged loudly.
            self.counters.internal_errors += 1
            log.exception("HTTP boot: connection from %s:%d failed", *peer)
        finally:
            sock.close()

    async def _one_exchange(
        self, conn: h11.Connection, sock: socket.socket, peer: tuple[str, int], first: bool
    ) -> bool:
        """Read one request and answer it; True when the connection can carry another."""
        exchange = _Exchange(peer, time.monotonic())
        task = asyncio.current_task()
        try:
            if task is not None and not first:
                self._heads[task] = None  # waiting for a head again: the newest such
            request = await self._read_request(conn, sock, first)
        except h11.RemoteProtocolError as exc:
            self.counters.bad_requests += 1
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                exchange.status = exc.error_status_hint
                await self._send_simple(conn, sock, exchange, exc.error_status_hint, b"bad request\n")
                self._report(exchange)
            return False
        finally:
            if task is not None:
                self._heads.pop(task, None)
        if request is None:
            return False
        self.counters.requests += 1
        try:
            await self._dispatch(conn, sock, request, exchange)
        finally:
            self._report(exchange)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _read_request(
        self, conn: h11.Connection, sock: socket.socket, first: bool
    ) -> h11.Request | None:
        """The next request head, or None when the client closed (cleanly) between requests.

        Every read waits idle_timeout at most, and the head as a whole has head_timeout from its
        first byte (from the start of the connection for the first request): a client that sends
        a byte now and then cannot hold the connection for longer (rule 1)."""
        loop = self._loop_()
        head_deadline: float | None = None
        if first or conn.trailing_data[0]:
            head_deadline = loop.time() + self.config.head_timeout
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                idle_deadline = loop.time() + self.config.idle_timeout
                if head_deadline is None or idle_deadline <= head_deadline:
                    async with asyncio.timeout_at(idle_deadline):
                        data = await loop.sock_recv(sock, _RECV)
                else:
                    try:
                        async with asyncio.timeout_at(head_deadline):
                            data = await loop.sock_recv(sock, _RECV)
                    except TimeoutError:
                        raise _HeadTimeout from None
                if data and head_deadline is None:
                    head_deadline = loop.time() + self.config.head_timeout
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                # h11 bounds only heads that arrive in pieces; one that came whole is measured here.
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > self.config.max_request_bytes:
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- routing --------------------------------------------------------------------------------

    async def _dispatch(
        self, conn: h11.Connection, sock: socket.socket, request: h11.Request, exchange: _Exchange
    ) -> None:
        exchange.method = request.method.decode("ascii", "replace")
        try:
            path, query = self._split_target(request.target, exchange)
            if request.method not in (b"GET", b"HEAD"):
                self.counters.bad_requests += 1
                allow = [(b"Allow", b"GET, HEAD")]
                await self._send_simple(conn, sock, exchange, 405, b"only GET and HEAD\n", allow)
                return
            if not self._bodyless(conn):
                self.counters.bad_requests += 1
                await self._send_simple(conn, sock, exchange, 413, b"request bodies are not accepted\n")
                return
            script = self._script_for(path, query, exchange.client[0])
            if script is not None:
                await self._send_bytes(conn, sock, exchange, script.encode(), _TEXT)
                self.counters.scripts += 1
                return
            await self._send_file(conn, sock, request, exchange, path)
        except _BadRequest:
            self.counters.bad_requests += 1
            await self._send_simple(conn, sock, exchange, 400, b"bad request\n")
        except _TooLong:
            self.counters.too_long += 1
            await self._send_simple(conn, sock, exchange, 414, b"path too long\n")
        except _NotFound:
            self.counters.not_found += 1
            await self._send_simple(conn, sock, exchange, 404, b"not found\n")

    def _split_target(self, target: bytes, exchange: _Exchange) -> tuple[str, dict[str, str]]:
        raw = target.decode("ascii", "replace")
        raw_path, _, raw_query = raw.partition("?")
        try:
            path = unquote(raw_path, errors="strict")
            query = dict(parse_qsl(raw_query, keep_blank_values=True, max_num_fields=32))
        except (UnicodeDecodeError, ValueError):
            raise _BadRequest from None
        encoded = path.encode()
        if len(encoded) > _PATH_MAX or any(len(part) > _NAME_MAX for part in encoded.split(b"/")):
            exchange.path = path[:80] + "..."  # the timeline does not need the rest
            raise _TooLong
        exchange.path, exchange.query = path, query
        return path, query

    @staticmethod
    def _bodyless(conn: h11.Connection) -> bool:
        # A request without a body has its EndOfMessage ready right after the head.
        return conn.their_state is h11.DONE or isinstance(conn.next_event(), h11.EndOfMessage)

    def _script_for(self, path: str, query: dict[str, str], client_ip: str) -> str | None:
        if self._scripts is None:
            return None
        try:
            if path == self.config.ipxe_path:
                return self._scripts.ipxe_script(query, client_ip)
            if path in self.config.grub_paths:
                return self._scripts.grub_config(query, client_ip)
        except Exception:
            self.counters.script_errors += 1
            log.exception("HTTP boot: rendering %s for %s failed", path, client_ip)
            raise _NotFound from None
        return None

    def _open(self, path: str) -> tuple[int, os.stat_result]:
        if "\x00" in path:
            raise _NotFound
        try:
            rel = normalize_path(path)
        except PathRefused:
            raise _NotFound from None
        real = self._files.get(rel)
        if real is None:
            real = os.path.realpath(os.path.join(self._root, rel))
            if not real.startswith(self._root + os.sep):
                raise _NotFound
        # O_NONBLOCK: a FIFO planted in the root must not hang the loop in open().
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if rel in self._files else os.O_NOFOLLOW)
        try:
            fd = os.open(real, flags)
        except OSError as exc:
            if exc.errno in (
                errno.ENOENT, errno.ELOOP, errno.EACCES, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG
            ):  # fmt: skip
                raise _NotFound from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise _NotFound
        return fd, info

    # -- responses ------------------------------------------------------------------------------

    async def _send_file(
        self, conn: h11.Connection, sock: socket.socket, request: h11.Request, exchange: _Exchange, path: str
    ) -> None:
        fd, info = self._open(path)
        try:
            headers = _file_headers(path, info)
            span = self._select_range(request, info, headers, exchange)
            if span is None:
                unsatisfied = [(b"Content-Range", f"bytes */{info.st_size}".encode())]
                await self._send_simple(conn, sock, exchange, 416, b"range not satisfiable\n", unsatisfied)
                return
            offset, count, partial = span
            status = 206 if partial else 200
            if partial:
                sent_range = f"bytes {offset}-{offset + count - 1}/{info.st_size}"
                headers.append((b"Content-Range", sent_range.encode()))
            headers.append((b"Content-Length", str(count).encode()))
            exchange.status = status
            self.counters.files += 1
            await self._sendall(
                sock, conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            )
            if request.method == b"GET" and count:
                await self._send_span(conn, sock, _Span(fd, offset, count), exchange)
            await self._sendall(sock, conn.send(h11.EndOfMessage()))
        finally:
            os.close(fd)

    def _select_range(
        self,
        request: h11.Request,
        info: os.stat_result,
        headers: list[tuple[bytes, bytes]],
        exchange: _Exchange,
    ) -> tuple[int, int, bool] | None:
        """(offset, count, partial) to send, or None for 416."""
        wanted = if_range = None
        for name, value in request.headers:
            if name == b"range":
                wanted = value.decode("latin-1")
            elif name == b"if-range":
                if_range = value
        whole = 0, info.st_size, False
        if wanted is None:
            return whole
        exchange.range = wanted
        validators = {value for name, value in headers if name in (b"ETag", b"Last-Modified")}
        if if_range is not None and if_range not in validators:
            return whole  # the client's copy is stale: send the whole new file
        try:
            span = parse_range(wanted, info.st_size)
        except Unsatisfiable:
            self.counters.unsatisfiable += 1
            return None
        if span is None:
            return whole
        self.counters.ranges += 1
        return span[0], span[1] - span[0] + 1, True

    async def _send_span(
        self, conn: h11.Connection, sock: socket.socket, span: _Span, exchange: _Exchange
    ) -> None:
        # h11 checks the length against Content-Length and hands the object back untouched.
        framed: list[object] = list(conn.send_with_data_passthrough(h11.Data(data=span)) or [])  # type: ignore[arg-type]
        for chunk in framed:
            if chunk is span:
                await self._sendfile(sock, span, exchange)
            elif isinstance(chunk, bytes):
                await self._sendall(sock, chunk)

    async def _sendfile(self, sock: socket.socket, span: _Span, exchange: _Exchange) -> None:
        out, sent = sock.fileno(), 0
        while sent < span.count:
            try:
                n = os.sendfile(out, span.fd, span.offset + sent, min(span.count - sent, _SENDFILE_MAX))
            except (BlockingIOError, InterruptedError):
                await self._writable(out)
                continue
            if n == 0:  # the file shrank under us: the promised length cannot be kept
                raise ConnectionAbortedError("file truncated while sending")
            sent += n
            exchange.bytes_sent += n
            self.counters.bytes_sent += n

    async def _writable(self, fd: int) -> None:
        loop = self._loop_()
        waiter: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, waiter)
        try:
            async with asyncio.timeout(self.config.send_timeout):
                await waiter
        finally:
            loop.remove_writer(fd)

    async def _sendall(self, sock: socket.socket, data: bytes | None) -> None:
        if data:
            async with asyncio.timeout(self.config.send_timeout):
                await self._loop_().sock_sendall(sock, data)

    async def _send_bytes(
        self,
        conn: h11.Connection,
        sock: socket.socket,
        exchange: _Exchange,
        body: bytes,
        ctype: str,
        status: int = 200,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"Content-Type", ctype.encode()),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cache-Control", b"no-store"),  # scripts change with node state
            (b"Server", b"bootforge"),
            (b"Date", email.utils.formatdate(usegmt=True).encode()),
            *(extra or []),
        ]
        exchange.status = status
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))) or b""
        if exchange.method != "HEAD" and body:
            out += conn.send(h11.Data(data=body)) or b""
            exchange.bytes_sent += len(body)
            self.counters.bytes_sent += len(body)
        out += conn.send(h11.EndOfMessage()) or b""
        await self._sendall(sock, out)

    async def _send_simple(
        self,
        conn: h11.Connection,
        sock: socket.socket,
        exchange: _Exchange,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        if status >= 400 and status not in (404, 416):
            # Errors that leave the request stream in doubt end the connection.
            extra = [*(extra or []), (b"Connection", b"close")]
        await self._send_bytes(conn, sock, exchange, body, _TEXT, status, extra)

    def _report(self, exchange: _Exchange) -> None:
        event = HttpFetchEvent(
            client=exchange.client,
            method=exchange.method,
            path=exchange.path,
            query=exchange.query,
            status=exchange.status,
            bytes_sent=exchange.bytes_sent,
            duration=time.monotonic() - exchange.started,
            range=exchange.range,
        )
        level = logging.INFO if exchange.status < 400 else logging.WARNING
        log.log(
            level,
            "HTTP %s %s %s %s -> %d, %d bytes in %.3fs",
            *(event.client[0], printable(event.method), printable(event.path), printable(event.range or "")),
            *(event.status, event.bytes_sent, event.duration),
        )
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                self.counters.event_errors += 1
                log.exception("HTTP boot event callback failed")


def _reason(status: int) -> bytes:
    return http.HTTPStatus(status).phrase.encode()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _file_headers(path: str, info: os.stat_result) -> list[tuple[bytes, bytes]]:
    etag = f'"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"'
    return [
        (b"Content-Type", content_type(path).encode()),
        (b"Accept-Ranges", b"bytes"),
        (b"ETag", etag.encode()),
        (b"Last-Modified", email.utils.formatdate(info.st_mtime, usegmt=True).encode()),
        (b"Server", b"bootforge"),
        (b"Date", email.utils.formatdate(usegmt=True).encode()),
    ]
