"""Server-sent event streams for scripts: the CloudEvents of webhooks, and one node's whole timeline.

Two streams, two sources:
- `cloudevents()`: the events this conductor publishes (EventHub), live only, all nodes or one.
  A client that falls behind by `events.stream_queue` events gets a last `overflow` message and the
  stream ends; it reconnects and reads what it missed from the node history.
- `timeline()`: a node's timeline rows (state changes, steps, DHCP/TFTP/HTTP fetches, BMC and agent
  calls) as the database has them, whichever conductor wrote them; each message's `id` is the row's,
  so a client that reconnects with `Last-Event-ID` resumes after the last row it saw.

Each open stream is counted against `events.max_stream_clients`; over it, a new one is refused (503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import orjson
from prometheus_client import Gauge
from sqlalchemy import select

from bootforge.config import Settings
from bootforge.db.engine import Database
from bootforge.db.models import NodeEvent
from bootforge.errors import BootforgeError
from bootforge.observe.events import Subscription

# Timeline rows sent per query; a client far behind catches up in pages.
PAGE = 500
MAX_HISTORY = 1000
# How often a waiting stream checks whether the server is stopping: uvicorn's graceful shutdown
# waits for every response to end, and an event stream otherwise never does.
STOP_CHECK = 1.0

Stopping = Callable[[], bool]


class TooManyStreams(BootforgeError):
    http_status = 503


def message(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE message. `data` is compact JSON (no newline), so it fits one `data:` line."""
    head = (f"event: {event}\n" if event else "") + (f"id: {id}\n" if id else "")
    return head.encode() + b"data: " + data + b"\n\n"


class StreamGate:
    """Counts the open streams of this process against the configured maximum."""

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.gauge = gauge

    def check(self) -> None:
        """Refuse (503) before the response starts, while an error can still be a proper answer."""
        if self.open >= self.limit:
            raise TooManyStreams(
                f"{self.open} event streams are open, the most this server allows "
                "(events.max_stream_clients); retry later"
            )

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        # Checked again: streams opened between check() and the first byte count too.
        self.check()
        self.open += 1
        self._show()
        try:
            yield
        finally:
            self.open -= 1
            self._show()

    def _show(self) -> None:
        if self.gauge is not None:
            self.gauge.set(self.open)


async def cloudevents(sub: Subscription, keepalive: float, stopping: Stopping) -> AsyncIterator[bytes]:
    """The subscription's events as SSE messages, until the server stops; the caller holds the
    subscription open."""
    # Sent at once: a client that has read this line is subscribed, and sees every later event.
    yield b": subscribed\n\n"
    quiet = 0.0
    while not stopping():
        if sub.overflowed and sub.queue.empty():
            yield message(
                orjson.dumps({"reason": "this client read slower than events came; reconnect"}),
                event="overflow",
            )
            return
        wait = min(keepalive, STOP_CHECK)
        try:
            async with asyncio.timeout(wait):
                e = await sub.queue.get()
        except TimeoutError:
            quiet += wait
            if quiet >= keepalive:
                quiet = 0.0
                yield b": keepalive\n\n"
            continue
        quiet = 0.0
        yield message(e.json(), event=e.type, id=e.id)


def timeline_row(r: Any) -> dict[str, Any]:
    created = r.created_at
    return {
        "id": r.id,
        "uuid": r.uuid,
        "created_at": created.isoformat() if created.tzinfo else created.isoformat() + "+00:00",
        "severity": r.severity,
        "event_type": r.event_type,
        "event": r.event,
        "conductor": r.conductor,
    }


async def _rows(db: Database, node_id: int, after: int | None, newest: int) -> list[Any]:
    cols = (
        NodeEvent.id,
        NodeEvent.uuid,
        NodeEvent.created_at,
        NodeEvent.severity,
        NodeEvent.event_type,
        NodeEvent.event,
        NodeEvent.conductor,
    )
    async with db.read() as s:
        if after is None:
            stmt = (
                select(*cols).where(NodeEvent.node_id == node_id).order_by(NodeEvent.id.desc()).limit(newest)
            )
            return list(reversed((await s.execute(stmt)).all()))
        stmt = (
            select(*cols)
            .where(NodeEvent.node_id == node_id, NodeEvent.id > after)
            .order_by(NodeEvent.id)
            .limit(PAGE)
        )
        return list((await s.execute(stmt)).all())


async def timeline(
    settings: Settings, db: Database, node_id: int, after: int | None, history: int, stopping: Stopping
) -> AsyncIterator[bytes]:
    """The node's timeline from after row `after` (or its newest `history` rows), then as it grows,
    until the server stops."""
    cfg = settings.events
    yield b": following\n\n"
    last = after
    if last is None:
        rows = await _rows(db, node_id, None, max(0, min(history, MAX_HISTORY))) if history > 0 else []
        for r in rows:
            yield message(orjson.dumps(timeline_row(r)), event="timeline", id=str(r.id))
        # Nothing yet: follow from the newest row there is (or from the start).
        last = rows[-1].id if rows else await _newest_id(db, node_id)
    quiet = 0.0
    while not stopping():
        rows = await _rows(db, node_id, last, PAGE)
        for r in rows:
            yield message(orjson.dumps(timeline_row(r)), event="timeline", id=str(r.id))
            last = r.id
        if len(rows) == PAGE:
            continue
        await asyncio.sleep(cfg.stream_poll_interval)
        quiet = 0.0 if rows else quiet + cfg.stream_poll_interval
        if quiet >= cfg.stream_keepalive:
            quiet = 0.0
            yield b": keepalive\n\n"


async def _newest_id(db: Database, node_id: int) -> int:
    async with db.read() as s:
        found = await s.scalar(
            select(NodeEvent.id).where(NodeEvent.node_id == node_id).order_by(NodeEvent.id.desc()).limit(1)
        )
    return int(found or 0)


def kinds_param(raw: str | None, known: Iterable[str]) -> list[str]:
    """`?types=provision,failure` -> the kinds; all when absent. InvalidInput names an unknown one."""
    from bootforge.errors import InvalidInput

    allowed = list(known)
    if not raw:
        return allowed
    wanted = [k.strip() for k in raw.split(",") if k.strip()]
    bad = [k for k in wanted if k not in allowed]
    if bad:
        raise InvalidInput(f"unknown event type(s) {', '.join(bad)}; known: {', '.join(allowed)}", "types")
    return wanted
