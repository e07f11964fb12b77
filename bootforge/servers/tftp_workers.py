"""Extra TFTP processes that share the request port with the main one (SO_REUSEPORT).

Lockstep TFTP is all small packets. One process's CPU per packet is about tftpd-hpa's
(12-17 us on the bench, most of it the kernel's send), but tftpd-hpa forks a process per
transfer and so uses every core, and gets more of the CPU when the host is busy. Here N-1 worker
processes each run a TftpServer with reuse_port on the same address and port as the main
process. The kernel spreads requests over the sockets by a hash of the client's address and
port, so a retransmitted RRQ reaches the same process, and each process serves its transfers
entirely, on its own per-transfer sockets.

A worker is `python -m bootforge.servers.tftp_workers FD SPEC`: SPEC (JSON) names the address,
the transfer config and a `module:function` that builds the FileSource in the worker (a source
holds closures and open state, so it is rebuilt there rather than pickled). FD is the worker's
end of a SOCK_SEQPACKET socketpair: it sends one JSON message when it listens, one per finished
transfer (the parent hands it to `on_event`, e.g. to tie it to a node) and its counters when it
stops. The worker stops on SIGTERM/SIGINT and when its end of the pair reaches EOF, which is
also what happens when the parent dies: no worker outlives its parent.

Virtual files that only the parent can render (a node's GRUB config: it needs the conductor's view
of the node, which a worker does not have) are asked of the parent: with `virtual_from_parent` (a
regular expression over the normalized, lower-cased path) set, each worker gets a second socketpair,
and a request for a matching path sends {"seq", "path", "client"} and waits for the parent's answer
({"seq", "data"} with the file base64-encoded, or null for "no such file"). The wait blocks the
worker's loop (a FileSource answers synchronously), so it is bounded by `virtual_timeout` (1 s); the
parent answers from memory in a reader callback on its loop. A worker that gets no answer in time
refuses the file (ERROR 1) and logs it: one such request per boot of a Secure Boot node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bootforge.netboot.tftp import (
    BytesReadable,
    ClientAddress,
    FileSource,
    Readable,
    TransferConfig,
    VirtualFiles,
    normalize_path,
)
from bootforge.servers.tftp import DataPlaneChoice, EventSink, TftpCounters, TftpEvent, TftpServer

__all__ = ["TftpWorkers", "WorkerSpec", "filesystem_source"]

log = logging.getLogger("bootforge.tftp")

_MAX_MESSAGE = 65536


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker serves; everything in it crosses a process boundary as JSON."""

    address: str
    port: int
    source_factory: str  # "module:function", called in the worker with **source_args
    source_args: dict[str, Any] = field(default_factory=dict)
    config: TransferConfig = field(default_factory=TransferConfig)
    mtu: int | None = 1500
    log_level: int = logging.INFO
    uvloop: bool = False
    dataplane: DataPlaneChoice = "auto"  # TftpServer's: who runs lockstep data phases
    max_transfers_per_client: int = 16  # TftpServer's, per worker process
    # Paths (regex over the normalized, lower-cased path) whose content the parent renders.
    virtual_from_parent: str | None = None
    virtual_timeout: float = 1.0

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "config": dataclasses.asdict(self.config)})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        return cls(**{**raw, "config": TransferConfig(**raw["config"])})


def filesystem_source(root: str) -> FileSource:
    """A source factory for workers that serve one directory."""
    from bootforge.netboot.tftp import FileSystemSource

    return FileSystemSource(root)


def _load_factory(name: str) -> Any:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


# A parent's answer must fit one SOCK_SEQPACKET message, base64 and JSON included.
_MAX_VIRTUAL = 32 * 1024


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    sock: socket.socket
    ready: asyncio.Future[None]
    open: bool = True
    lookups: socket.socket | None = None  # the parent's end of the virtual-file channel


class TftpWorkers:
    """Starts `count` worker processes for `spec` and relays their events to `on_event`."""

    def __init__(
        self,
        spec: WorkerSpec,
        count: int,
        *,
        on_event: EventSink | None = None,
        ready_timeout: float = 30.0,
        virtual: VirtualFiles | None = None,
    ) -> None:
        if (spec.virtual_from_parent is None) != (virtual is None):
            raise ValueError("virtual_from_parent and virtual go together")
        self.spec = spec
        self.count = count
        self.counters = TftpCounters()  # the workers', summed as each one stops
        self.events = 0
        self.bad_messages = 0
        self.virtual_answered = 0  # virtual files the parent rendered for a worker
        self._virtual = virtual
        self._on_event = on_event
        self._ready_timeout = ready_timeout
        self._workers: list[_Worker] = []

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for _ in range(self.count):
                parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                asks, answers = (
                    socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    if self._virtual
                    else (None, None)
                )
                fds = [child.fileno()] + ([answers.fileno()] if answers is not None else [])
                argv = [
                    sys.executable,
                    "-m",
                    __name__,
                    *map(str, fds[:1]),
                    self.spec.to_json(),
                    *map(str, fds[1:]),
                ]
                try:
                    proc = await asyncio.create_subprocess_exec(*argv, pass_fds=fds)
                finally:
                    child.close()
                    if answers is not None:
                        answers.close()
                parent.setblocking(False)
                worker = _Worker(proc, parent, loop.create_future(), lookups=asks)
                self._workers.append(worker)
                loop.add_reader(parent.fileno(), self._on_readable, worker)
                if asks is not None:
                    asks.setblocking(False)
                    loop.add_reader(asks.fileno(), self._on_lookup, worker)
            async with asyncio.timeout(self._ready_timeout):
                await asyncio.gather(*(w.ready for w in self._workers))
        except BaseException:
            await self.aclose()
            raise
        log.info("TFTP: %d worker processes share port %d: %s", self.count, self.spec.port, self.pids)

    async def aclose(self) -> None:
        for worker in self._workers:
            if worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.proc.wait(), 5.0)
            except TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()
            self._on_readable(worker, limit=1 << 20)  # what it sent last, its counters among them
            self._close(worker)
        self._workers.clear()

    async def __aenter__(self) -> TftpWorkers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _close(self, worker: _Worker) -> None:
        if worker.open:
            worker.open = False
            asyncio.get_running_loop().remove_reader(worker.sock.fileno())
            worker.sock.close()
        if worker.lookups is not None:
            asyncio.get_running_loop().remove_reader(worker.lookups.fileno())
            worker.lookups.close()
            worker.lookups = None
        if not worker.ready.done():
            worker.ready.set_exception(
                RuntimeError(f"TFTP worker {worker.proc.pid} exited before it listened")
            )

    def _on_readable(self, worker: _Worker, limit: int = 64) -> None:
        for _ in range(limit):
            if not worker.open:
                return
            try:
                data = worker.sock.recv(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                if worker.proc.returncode is None and worker.ready.done():
                    log.warning("TFTP worker %d closed its event channel", worker.proc.pid)
                self._close(worker)
                return
            self._on_message(worker, data)

    def _on_lookup(self, worker: _Worker) -> None:
        """A worker asks for a virtual file: rendered here, from memory, and answered at once."""
        sock = worker.lookups
        if sock is None or self._virtual is None:
            return
        for _ in range(64):
            try:
                data = sock.recv(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the worker is gone
                asyncio.get_running_loop().remove_reader(sock.fileno())
                sock.close()
                worker.lookups = None
                return
            try:
                ask = json.loads(data)
                seq, path, client = int(ask["seq"]), str(ask["path"]), ask["client"]
                address: ClientAddress = (str(client[0]), int(client[1]))
            except (ValueError, TypeError, KeyError, IndexError):
                self.bad_messages += 1
                continue
            try:
                rendered = self._virtual(path, address)
            except Exception:
                log.exception("TFTP: rendering %r for a worker failed", path[:64])
                rendered = None
            if rendered is not None and len(rendered) > _MAX_VIRTUAL:
                log.error(
                    "TFTP: virtual file %r is %d bytes, over %d: refused",
                    path[:64],
                    len(rendered),
                    _MAX_VIRTUAL,
                )
                rendered = None
            body = None if rendered is None else base64.b64encode(rendered).decode()
            self.virtual_answered += rendered is not None
            with contextlib.suppress(OSError):  # full or gone: the worker's wait times out
                sock.send(json.dumps({"seq": seq, "data": body}).encode())

    def _on_message(self, worker: _Worker, data: bytes) -> None:
        try:
            message = json.loads(data)
            if "event" in message:
                raw = message["event"]
                event = TftpEvent(**{**raw, "client": tuple(raw["client"]), "server": tuple(raw["server"])})
            elif "counters" in message:
                for name, value in message["counters"].items():
                    setattr(self.counters, name, getattr(self.counters, name) + int(value))
                return
            elif "ready" in message:
                if not worker.ready.done():
                    worker.ready.set_result(None)
                return
            else:
                raise ValueError("unknown message")
        except (ValueError, TypeError, KeyError, AttributeError):
            self.bad_messages += 1
            return
        self.events += 1
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("TFTP event callback failed")


# -- the worker process ------------------------------------------------------------------------


class _AskParent:
    """A worker's FileSource: paths matching `pattern` are rendered by the parent (see the module
    docstring), everything else comes from `inner`."""

    def __init__(self, inner: FileSource, pattern: str, channel: socket.socket, timeout: float) -> None:
        self._inner = inner
        self._pattern = re.compile(pattern)
        self._channel = channel
        self._timeout = timeout
        self._seq = 0
        self.timeouts = 0

    def open(self, path: str, client: ClientAddress) -> Readable:
        normalized = normalize_path(path)
        if self._pattern.fullmatch(normalized.lower()) is None:
            return self._inner.open(path, client)
        data = self._ask(normalized, client)
        if data is None:
            raise FileNotFoundError(normalized)
        return BytesReadable(data)

    def _ask(self, path: str, client: ClientAddress) -> bytes | None:
        self._seq += 1
        seq = self._seq
        deadline = time.monotonic() + self._timeout
        try:
            self._channel.settimeout(self._timeout)
            self._channel.send(json.dumps({"seq": seq, "path": path, "client": list(client)}).encode())
            while (left := deadline - time.monotonic()) > 0:
                self._channel.settimeout(left)
                answer = json.loads(self._channel.recv(_MAX_MESSAGE) or b"null")
                if answer is None:
                    return None  # the parent closed the channel
                if answer.get("seq") != seq:
                    continue  # a late answer to a request that already timed out
                body = answer.get("data")
                return None if body is None else base64.b64decode(body)
        except TimeoutError:
            pass
        except (OSError, ValueError, AttributeError) as e:
            log.warning("TFTP worker: asking the parent for %s failed: %s", path, e)
            return None
        self.timeouts += 1
        log.warning("TFTP worker: the parent did not render %s within %.1f s; refused", path, self._timeout)
        return None


async def _serve(spec: WorkerSpec, source: FileSource, channel: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C reaches the whole process group
        loop.add_signal_handler(signum, stop.set)
    channel.setblocking(False)

    def on_parent() -> None:
        # The parent never writes: readable means EOF (it closed its end, or it died).
        with contextlib.suppress(BlockingIOError):
            if not channel.recv(1):
                stop.set()

    def send(message: dict[str, Any]) -> None:
        try:
            channel.send(json.dumps(message).encode())
        except BlockingIOError:
            log.warning("TFTP worker: event channel full, an event is lost")
        except OSError:
            stop.set()

    loop.add_reader(channel.fileno(), on_parent)
    server = TftpServer(
        source,
        spec.address,
        port=spec.port,
        config=spec.config,
        mtu=spec.mtu,
        on_event=lambda e: send({"event": dataclasses.asdict(e)}),
        reuse_port=True,
        dataplane=spec.dataplane,
        max_transfers_per_client=spec.max_transfers_per_client,
    )
    async with server:
        send({"ready": True})
        await stop.wait()
    send({"counters": dataclasses.asdict(server.counters)})


def main(argv: list[str]) -> None:
    channel = socket.socket(fileno=int(argv[0]))
    spec = WorkerSpec.from_json(argv[1])
    # Built before logging is set up: importing the factory's module may log noise of its own.
    source = _load_factory(spec.source_factory)(**spec.source_args)
    if spec.virtual_from_parent is not None:
        lookups = socket.socket(fileno=int(argv[2]))
        source = _AskParent(source, spec.virtual_from_parent, lookups, spec.virtual_timeout)
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s (tftp worker {os.getpid()}): %(message)s",
    )
    if spec.uvloop:
        import uvloop

        uvloop.run(_serve(spec, source, channel))
    else:
        asyncio.run(_serve(spec, source, channel))


if __name__ == "__main__":
    main(sys.argv[1:])
