"""HTTP boot server: iPXE scripts and grub.cfg per node, and artifacts (loaders, kernels, initrds,
images) with HEAD, single byte ranges and zero-copy bodies.

h11 parses and frames; this module owns sockets and files. Connections are raw non-blocking
sockets driven with loop.sock_recv/sock_sendall, and file bodies go out with os.sendfile on the
socket, waiting for writability with add_writer. That is zero-copy on every event loop: asyncio's
loop.sendfile() needs its own selector transport and raises NotImplementedError under uvloop,
which uvicorn picks when it is installed.

Rules:
  1. Only GET and HEAD, no request bodies, request heads bounded by max_request_bytes (h11
     answers 431 past it); every read has the idle timeout, every wait for writability the send
     timeout, so a stalled client costs one socket for a bounded time.
  2. Paths are percent-decoded, then normalized with the TFTP rules (no "..", leading "/"
     stripped); the resolved file must stay under the root and the last component is opened
     with O_NOFOLLOW. Whatever is refused is a 404, never a 500.
  3. Dynamic routes (the iPXE script, grub.cfg) come from an injected BootScripts; published
     loaders come from an explicit name -> absolute path map (bootforge.netboot.boot.loaders).
  4. Every request ends with one HttpFetchEvent for the node's timeline; the product maps the
     client address or the `mac` query parameter to a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
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
    rejected_connections: int = 0  # over max_connections
    requests: int = 0
    files: int = 0
    scripts: int = 0
    ranges: int = 0
    unsatisfiable: int = 0
    not_found: int = 0
    bad_requests: int = 0  # malformed or refused by h11, bodies, unknown methods
    timeouts: int = 0
    socket_errors: int = 0
    script_errors: int = 0
    event_errors: int = 0
    internal_errors: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True, slots=True)
class HttpBootConfig:
    max_request_bytes: int = 8192
    idle_timeout: float = 30.0
    send_timeout: float = 60.0
    max_connections: int = 1024
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
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


def content_type(path: str) -> str:
    return _CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


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
            if len(self._connections) >= self.config.max_connections:
                self.counters.rejected_connections += 1
                sock.close()
                continue
            self.counters.connections += 1
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(sock, (str(peer[0]), int(peer[1]))))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_request_bytes)
        try:
            while await self._one_exchange(conn, sock, peer):
                conn.start_next_cycle()
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

    async def _one_exchange(self, conn: h11.Connection, sock: socket.socket, peer: tuple[str, int]) -> bool:
        """Read one request and answer it; True when the connection can carry another."""
        exchange = _Exchange(peer, time.monotonic())
        try:
            request = await self._read_request(conn, sock)
        except h11.RemoteProtocolError as exc:
            self.counters.bad_requests += 1
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                exchange.status = exc.error_status_hint
                await self._send_simple(conn, sock, exchange, exc.error_status_hint, b"bad request\n")
                self._report(exchange)
            return False
        if request is None:
            return False
        self.counters.requests += 1
        try:
            await self._dispatch(conn, sock, request, exchange)
        finally:
            self._report(exchange)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _read_request(self, conn: h11.Connection, sock: socket.socket) -> h11.Request | None:
        """The next request head, or None when the client closed (cleanly) between requests."""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(self.config.idle_timeout):
                    data = await self._loop_().sock_recv(sock, _RECV)
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
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EACCES, errno.ENOTDIR, errno.EISDIR):
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
            *(event.client[0], event.method, event.path, event.range or ""),
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
