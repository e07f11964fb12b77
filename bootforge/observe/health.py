"""Health checks for a supervisor (systemd, Kubernetes, a load balancer) on `settings.health_listen`.

A `serve --role conductor` or `--role netboot` process has no API to probe, so every role can open
this small listener of its own (off by default). It answers two paths:

- GET /livez: 200 as long as the process's event loop answers. Restarting a process does not bring
  a lost database back, so a liveness probe should not depend on it.
- GET /healthz: 200 with {role, host, conductor_group, database, heartbeat} when the database
  answers (a query, within a timeout) and, for a process that heartbeats (roles all and conductor),
  its last heartbeat is fresh by the database's clock, the clock every peer judges it by (a
  conductor whose heartbeat is older than conductor_offline_after is being taken over by its peers
  whatever it thinks). Otherwise 503 with the same document and `reason` saying why.

The listener is reachable by whoever can reach its address, so: requests are bounded (head size,
time to send it, connections at once), answers carry no secret (the database URL's password is
masked out of any error text), and the database is asked at most once a second whatever the request
rate (concurrent probes share one check).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bootforge.config import Settings
from bootforge.db.clock import db_now
from bootforge.db.engine import Database
from bootforge.db.models import Conductor
from bootforge.masking import redact

log = logging.getLogger("bootforge.health")

MAX_HEAD_BYTES = 4096  # request line and headers; a probe sends a few dozen bytes
HEAD_TIMEOUT = 5.0  # seconds a client has to send its request head
MAX_CONNECTIONS = 32  # at once; more are closed unanswered
CACHE_SECONDS = 1.0  # a check result is reused this long
DATABASE_TIMEOUT = 5.0  # seconds the database may take to answer (at most conductor_offline_after)


@dataclass(frozen=True)
class Health:
    ok: bool
    doc: dict[str, Any]


class HealthCheck:
    """What /healthz reports for this process, judged by the database's clock."""

    def __init__(self, settings: Settings, db: Database, *, heartbeats: bool) -> None:
        self.settings = settings
        self.db = db
        # True for a process that registered as a conductor and heartbeats (roles all, conductor).
        self.heartbeats = heartbeats
        self._last: tuple[float, Health] | None = None
        self._lock = asyncio.Lock()
        url = make_url(settings.database_url)
        self._secrets = [url.password] if isinstance(url.password, str) and url.password else []

    async def check(self) -> Health:
        """The current result: at most one database check per CACHE_SECONDS, shared by callers."""
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < CACHE_SECONDS:
                return self._last[1]
            result = await self._check()
            self._last = (time.monotonic(), result)
            return result

    async def _check(self) -> Health:
        s = self.settings
        doc: dict[str, Any] = {
            "role": s.role,
            "host": s.host,
            "conductor_group": s.conductor_group,
            "database": {"reachable": False},
            "heartbeat": None,
        }
        timeout = min(DATABASE_TIMEOUT, s.conductor_offline_after)
        try:
            now, row = await asyncio.wait_for(self._read(), timeout)
        except TimeoutError:
            return self._fail(doc, f"database unreachable: no answer in {timeout:g} s")
        except Exception as exc:  # any failure to read is what this check exists to report
            return self._fail(doc, f"database unreachable: {self._describe(exc)}")
        doc["database"] = {"reachable": True, "time": _iso(now)}
        if not self.heartbeats:
            return Health(True, doc)
        if row is None:
            return self._fail(doc, f"conductor {s.host} is not registered in the database")
        beat, online = row
        age = round((_aware(now) - _aware(beat)).total_seconds(), 3)
        doc["heartbeat"] = {
            "at": _iso(beat),
            "age": age,
            "online": online,
            "interval": s.conductor_heartbeat_interval,
            "offline_after": s.conductor_offline_after,
        }
        if not online:
            return self._fail(doc, f"conductor {s.host} is marked offline in the database")
        # A heartbeat interval of 0 switches heartbeats off (tests): then no age is stale.
        if s.conductor_heartbeat_interval > 0 and age > s.conductor_offline_after:
            return self._fail(
                doc,
                f"heartbeat is {age:g} s old by the database's clock (conductor_offline_after "
                f"{s.conductor_offline_after:g} s): peers are taking this conductor's nodes over",
            )
        return Health(True, doc)

    async def _read(self) -> tuple[dt.datetime, tuple[dt.datetime, bool] | None]:
        async with self.db.read() as session:
            now = (await session.execute(select(db_now()))).scalar_one()
            row = None
            if self.heartbeats:
                found = (
                    await session.execute(
                        select(Conductor.heartbeat_at, Conductor.online).where(
                            Conductor.hostname == self.settings.host
                        )
                    )
                ).first()
                row = (found[0], bool(found[1])) if found is not None else None
        return _as_datetime(now), row

    def _fail(self, doc: dict[str, Any], reason: str) -> Health:
        doc["reason"] = reason
        return Health(False, doc)

    def _describe(self, exc: BaseException) -> str:
        # The driver's own error (asyncpg's, sqlite3's), not SQLAlchemy's wrapper with its SQL text
        # and link; one line, bounded, and never the database password.
        inner: BaseException = getattr(exc, "orig", None) or exc
        text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
        described = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
        return str(redact(described[:300], self._secrets))


class HealthServer:
    """The HTTP/1.1 listener for /healthz and /livez (one request per connection)."""

    def __init__(self, check: HealthCheck, host: str, port: int) -> None:
        self.check = check
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=MAX_HEAD_BYTES)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("health checks on http://%s:%d/healthz", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        async with self._slots:
            try:
                await self._serve(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                pass
            finally:
                if task is not None:
                    self._handlers.discard(task)
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            await _respond(writer, 431, {"error": f"request head over {MAX_HEAD_BYTES} bytes"})
            return
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, {"error": "not an HTTP/1.x request line"})
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target not in ("/healthz", "/livez"):
            await _respond(writer, 404, {"error": "not found: GET /healthz or /livez"})
            return
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, {"error": "method not allowed: GET or HEAD"}, allow="GET, HEAD")
            return
        if target == "/livez":
            await _respond(writer, 200, {"alive": True}, head_only=method == "HEAD")
            return
        health = await self.check.check()
        await _respond(writer, 200 if health.ok else 503, health.doc, head_only=method == "HEAD")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS.update({431: "Request Header Fields Too Large", 503: "Service Unavailable"})


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    doc: dict[str, Any],
    *,
    head_only: bool = False,
    allow: str | None = None,
) -> None:
    body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body))
    await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)


async def start_health(settings: Settings, db: Database, *, heartbeats: bool) -> HealthServer | None:
    """Open the health listener if `settings.health_listen` names one (None when it is off)."""
    if not settings.health_listen:
        return None
    host, port = settings.health_listen_host_port
    server = HealthServer(HealthCheck(settings, db, heartbeats=heartbeats), host, port)
    await server.start()
    return server


def _as_datetime(value: Any) -> dt.datetime:
    # SQLite hands the database's time back as the text it formatted (db/clock.py).
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _iso(when: dt.datetime) -> str:
    return _aware(when).isoformat()
