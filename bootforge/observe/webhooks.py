"""Webhook delivery: the outbox rows of this conductor, POSTed as CloudEvents (structured mode), signed.

Rules of this module:
1. Per node, in order: of a target's pending rows, only the oldest of each node is sent; the node's
   next event waits until that one was accepted or given up. Different nodes go in parallel (at most
   `events.concurrency` POSTs per target).
2. Bounded: a failed POST is retried with exponential backoff until `max_attempts` or `max_age`; a
   target's outbox holds at most `max_pending` rows (the oldest go first). Every event given up is
   counted (bootforge_webhook_dropped) and logged with the target's name, never its URL or secret.
3. The signature: `X-Bootforge-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`
   with `X-Bootforge-Timestamp: <unix seconds>` (the time of this attempt). A receiver recomputes it,
   refuses a timestamp more than a few minutes off (replays), and drops CloudEvent ids it has seen
   (a retry of an event whose answer was lost is sent again with the same id).
4. Answers are not read: only the status line counts (a receiver cannot make bootforge hold a body),
   and redirects are not followed (the signed body goes only where the operator said).
5. Each conductor sends the rows it wrote (`conductor` column): two conductors never send one event
   twice, and a conductor that restarts sends what it had left.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, func, select, update

from bootforge.db.models import EventOutbox, utcnow
from bootforge.observe.metrics import Metrics

if TYPE_CHECKING:
    from bootforge.config import Settings
    from bootforge.db.engine import Database
    from bootforge.observe.settings import WebhookTarget

log = logging.getLogger("bootforge.webhooks")

SIGNATURE_HEADER = "X-Bootforge-Signature"
TIMESTAMP_HEADER = "X-Bootforge-Timestamp"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# Rows read per target and round: the oldest, from which each node's first is taken.
BATCH = 500
# Longest sleep with nothing due (a state change wakes the dispatcher at once).
IDLE_POLL = 5.0


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Bootforge-Signature value for this body at this timestamp."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0) -> bool:
    """What a receiver does (and the tests): constant-time compare, and a timestamp close to now."""
    try:
        skew = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return skew <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


def where(url: str) -> str:
    """The URL's scheme and host, for logs: a path or query may carry a receiver's own token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass
class _Row:
    id: int
    node_uuid: str
    payload: str
    attempts: int
    next_attempt_at: dt.datetime
    created_at: dt.datetime


@dataclass
class _Outcome:
    row: _Row
    ok: bool
    reason: str


class WebhookDispatcher:
    def __init__(self, settings: Settings, db: Database, metrics: Metrics) -> None:
        self.cfg = settings.events
        self.host = settings.host
        self.db = db
        self.metrics = metrics
        self.targets = list(self.cfg.webhooks)
        self._wake = asyncio.Event()
        # No proxies from the environment, no redirects; each POST has the target's timeout.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self._client.aclose()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                pause = await self.round()
            except Exception:
                log.exception("webhook round failed")
                pause = IDLE_POLL
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wake.wait()

    async def round(self) -> float:
        """Send what is due for every target; the seconds until something else will be (0: now)."""
        pauses = await asyncio.gather(*(self._target_round(t) for t in self.targets))
        return min(pauses, default=IDLE_POLL)

    async def _target_round(self, target: WebhookTarget) -> float:
        await self._trim(target)
        mine = (EventOutbox.target == target.name, EventOutbox.conductor == self.host)
        async with self.db.read() as s:
            found = (
                await s.execute(
                    select(
                        EventOutbox.id,
                        EventOutbox.node_uuid,
                        EventOutbox.payload,
                        EventOutbox.attempts,
                        EventOutbox.next_attempt_at,
                        EventOutbox.created_at,
                    )
                    .where(*mine)
                    .order_by(EventOutbox.id)
                    .limit(BATCH)
                )
            ).all()
        heads: dict[str, _Row] = {}
        for r in found:
            heads.setdefault(r.node_uuid, _Row(*r))
        if not heads:
            return IDLE_POLL
        now = utcnow()
        due = [r for r in heads.values() if _aware(r.next_attempt_at) <= now]
        if not due:
            wait = min((_aware(r.next_attempt_at) - now).total_seconds() for r in heads.values())
            return max(0.01, min(wait, IDLE_POLL))
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(row: _Row) -> _Outcome:
            async with gate:
                return await self._post(target, row)

        outcomes = await asyncio.gather(*(one(r) for r in due))
        await self._settle(target, outcomes)
        return 0.0

    async def _post(self, target: WebhookTarget, row: _Row) -> _Outcome:
        body = row.payload.encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": CONTENT_TYPE,
            "User-Agent": "bootforge-webhooks",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(target.secret.get_secret_value().encode(), stamp, body),
        }
        try:
            async with asyncio.timeout(target.timeout):
                async with self._client.stream(
                    "POST", target.url, content=body, headers=headers, timeout=target.timeout
                ) as response:
                    status = response.status_code
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return _Outcome(row, False, f"{type(exc).__name__}")
        return _Outcome(row, 200 <= status < 300, f"HTTP {status}")

    async def _settle(self, target: WebhookTarget, outcomes: list[_Outcome]) -> None:
        """Delete what was delivered or given up, and push back the rest, in one transaction."""
        now = utcnow()
        done: list[int] = []
        later: list[tuple[int, int, dt.datetime]] = []
        for o in outcomes:
            self.metrics.webhook_deliveries.labels(target.name, "delivered" if o.ok else "failed").inc()
            if o.ok:
                done.append(o.row.id)
                continue
            attempts = o.row.attempts + 1
            age = (now - _aware(o.row.created_at)).total_seconds()
            if attempts >= self.cfg.max_attempts or age >= self.cfg.max_age:
                why = "attempts" if attempts >= self.cfg.max_attempts else "age"
                self.metrics.webhook_dropped.labels(target.name, why).inc()
                log.warning(
                    "webhook %s (%s): event for node %s given up after %d attempts in %.0f s; last: %s",
                    target.name,
                    where(target.url),
                    o.row.node_uuid,
                    attempts,
                    age,
                    o.reason,
                )
                done.append(o.row.id)
                continue
            delay = min(self.cfg.backoff_max, self.cfg.backoff_initial * 2 ** (attempts - 1))
            later.append((o.row.id, attempts, now + dt.timedelta(seconds=delay)))
            log.info(
                "webhook %s (%s): node %s event not accepted (%s); attempt %d in %.1f s",
                target.name,
                where(target.url),
                o.row.node_uuid,
                o.reason,
                attempts + 1,
                delay,
            )
        async with self.db.write() as s:
            if done:
                await s.execute(delete(EventOutbox).where(EventOutbox.id.in_(done)))
            for row_id, attempts, when in later:
                await s.execute(
                    update(EventOutbox)
                    .where(EventOutbox.id == row_id)
                    .values(attempts=attempts, next_attempt_at=when)
                )
            await s.commit()

    async def _trim(self, target: WebhookTarget) -> None:
        """Hold at most max_pending rows for the target: the oldest beyond go (counted)."""
        mine = (EventOutbox.target == target.name, EventOutbox.conductor == self.host)
        async with self.db.read() as s:
            pending = int(await s.scalar(select(func.count()).select_from(EventOutbox).where(*mine)) or 0)
        excess = pending - self.cfg.max_pending
        self.metrics.webhook_pending.labels(target.name).set(min(pending, self.cfg.max_pending))
        if excess <= 0:
            return
        oldest = select(EventOutbox.id).where(*mine).order_by(EventOutbox.id).limit(excess)
        async with self.db.write() as s:
            result: Any = await s.execute(delete(EventOutbox).where(EventOutbox.id.in_(oldest)))
            await s.commit()
        dropped = int(result.rowcount or 0)
        self.metrics.webhook_dropped.labels(target.name, "overflow").inc(dropped)
        log.warning(
            "webhook %s (%s): outbox over %d events; the %d oldest dropped",
            target.name,
            where(target.url),
            self.cfg.max_pending,
            dropped,
        )


def _aware(when: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
