"""The conductor's outbound events: what changed on a node, as CloudEvents 1.0, for webhooks and streams.

Theory of operation:
1. Where the conductor changes a node's provision state, sets last_error or changes maintenance, it
   asks the Observer for the events that change makes (`provision`, `failure`, `maintenance`), and
   hands them to `stage()` inside the transaction that writes the change: with webhooks configured,
   that writes one outbox row per target, so an event exists if and only if the change was committed,
   and survives a restart (the DB outbox, rather than a queue in memory, for exactly that).
2. After the commit, `published()` counts the change in the metrics, passes the events to the live
   streams (EventHub) and wakes the webhook dispatcher. Nothing here waits on a receiver: the conductor
   never blocks on a webhook.
3. A stream client that reads slower than events come is cut off (its queue is bounded) with a last
   "overflow" message, rather than holding memory for it.

Event types (CloudEvents `type`): io.bootforge.node.provision, io.bootforge.node.failure,
io.bootforge.node.maintenance; `subject` is the node's UUID; `data` carries the node's UUID and name
and what changed. Nothing secret is ever in an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import insert

from bootforge.conductor import states
from bootforge.db.models import EVENT_OUTBOX, utcnow
from bootforge.observe.metrics import Metrics
from bootforge.observe.settings import EventKind

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bootforge.config import Settings
    from bootforge.db.engine import Database
    from bootforge.observe.webhooks import WebhookDispatcher

log = logging.getLogger("bootforge.events")

TYPE_PREFIX = "io.bootforge.node."
SPEC_VERSION = "1.0"
# A deploy that never ends (the node deleted mid-way by a bug) must not pin its start time for ever.
MAX_TRACKED = 100_000
DEPLOY_EVENTS = frozenset({"deploy", "rebuild"})


@dataclass(frozen=True, slots=True)
class Outbound:
    """One event, as the CloudEvent every consumer gets."""

    id: str
    kind: EventKind
    node_uuid: str
    time: dt.datetime
    source: str
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.kind

    def cloudevent(self) -> dict[str, Any]:
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.node_uuid,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": self.data,
        }

    def json(self) -> bytes:
        return orjson.dumps(self.cloudevent())


class Subscription:
    """One stream client's bounded queue of events (all nodes, or one node's)."""

    def __init__(self, node_uuid: str | None, kinds: frozenset[str], size: int) -> None:
        self.node_uuid = node_uuid
        self.kinds = kinds
        self.queue: asyncio.Queue[Outbound] = asyncio.Queue(maxsize=size)
        self.overflowed = False

    def wants(self, e: Outbound) -> bool:
        return e.kind in self.kinds and (self.node_uuid is None or e.node_uuid == self.node_uuid)


class EventHub:
    """Fan-out of published events to the connected stream clients, in publication order."""

    def __init__(self, metrics: Metrics, queue_size: int) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self.subscribers: set[Subscription] = set()

    @contextlib.contextmanager
    def subscribe(self, node_uuid: str | None, kinds: Iterable[str]) -> Any:
        sub = Subscription(node_uuid, frozenset(kinds), self.queue_size)
        self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    def publish(self, events: Sequence[Outbound]) -> None:
        for sub in list(self.subscribers):
            if sub.overflowed:
                continue
            for e in events:
                if not sub.wants(e):
                    continue
                try:
                    sub.queue.put_nowait(e)
                except asyncio.QueueFull:
                    sub.overflowed = True
                    self.metrics.stream_overflows.inc()
                    break


class Observer:
    """What the conductor reports to: metrics, streams and webhooks (see the module docstring)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.source = f"/bootforge/{settings.host}"
        self.metrics = Metrics()
        self.hub = EventHub(self.metrics, settings.events.stream_queue)
        self.targets = {t.name: t for t in settings.events.webhooks}
        self.dispatcher: WebhookDispatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # node UUID -> monotonic start of its deploy / (kind, step, start) of its running step.
        self._deploys: dict[str, float] = {}
        self._steps: dict[str, tuple[str, str, float]] = {}

    async def start(self) -> None:
        if self.targets:
            from bootforge.observe.webhooks import WebhookDispatcher

            self.dispatcher = WebhookDispatcher(self.settings, self.db, self.metrics)
            self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="webhooks"))
        lag = self.settings.metrics.loop_lag_interval
        if self.settings.metrics.enabled and lag > 0:
            self._tasks.append(asyncio.create_task(self.metrics.watch_loop(lag), name="loop-lag"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.dispatcher is not None:
            await self.dispatcher.close()

    # --- making events ----------------------------------------------------------------------------

    def _event(self, kind: EventKind, node_uuid: str, data: dict[str, Any]) -> Outbound:
        return Outbound(str(uuidlib.uuid4()), kind, node_uuid, utcnow(), self.source, data)

    def provision(
        self, uuid: str, name: str | None, old: str, new: str, event: str, error: str | None = None
    ) -> list[Outbound]:
        """The events of a provision state change (and of the failure it records, if any)."""
        out = [
            self._event(
                "provision",
                uuid,
                {
                    "node": uuid,
                    "name": name,
                    "previous_state": old,
                    "provision_state": new,
                    "target_provision_state": states.target_of(new),
                    "event": event,
                    "last_error": error,
                },
            )
        ]
        if error:
            out.append(self.failure(uuid, name, new, error)[0])
        return out

    def failure(self, uuid: str, name: str | None, state: str, error: str) -> list[Outbound]:
        """last_error set (with a state change, or without one where the machine has no failure edge)."""
        data = {"node": uuid, "name": name, "provision_state": state, "last_error": error}
        return [self._event("failure", uuid, data)]

    def maintenance(
        self, uuid: str, name: str | None, on: bool, reason: str | None, by: str
    ) -> list[Outbound]:
        """Maintenance set or unset; `by` says who: "operator" or "power sync"."""
        data = {"node": uuid, "name": name, "maintenance": on, "reason": reason, "by": by}
        return [self._event("maintenance", uuid, data)]

    # --- the change's transaction and after ----------------------------------------------------------

    async def stage(self, session: AsyncSession, events: Sequence[Outbound]) -> None:
        """Write the events' outbox rows in the caller's transaction (nothing without webhooks)."""
        if not self.targets or not events:
            return
        now = utcnow()
        rows = [
            {
                "target": name,
                "conductor": self.settings.host,
                "node_uuid": e.node_uuid,
                "payload": e.json().decode(),
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for e in events
            for name, target in self.targets.items()
            if e.kind in target.events
        ]
        if rows:
            await session.execute(insert(EVENT_OUTBOX), rows)

    def published(self, events: Sequence[Outbound]) -> None:
        """The change is committed: count it, stream it, and wake the webhook dispatcher."""
        if not events:
            return
        try:
            for e in events:
                self._count(e)
            self.hub.publish(events)
        except Exception:
            # Metrics and streams are never a reason for a state change to look failed.
            log.exception("publishing %d events failed", len(events))
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def _count(self, e: Outbound) -> None:
        m = self.metrics
        d = e.data
        if e.kind == "maintenance":
            m.maintenance_changes.labels("set" if d["maintenance"] else "unset").inc()
            return
        if e.kind == "failure":
            m.failures.labels(d["provision_state"]).inc()
            return
        old, new = d["previous_state"], d["provision_state"]
        m.transitions.labels(old, new).inc()
        now = time.monotonic()
        if d["event"] in DEPLOY_EVENTS and new == states.DEPLOYING:
            if len(self._deploys) < MAX_TRACKED:
                self._deploys[e.node_uuid] = now
        elif new not in states.TARGETS:  # a stable or failed state: the deploy, if any, is over
            began = self._deploys.pop(e.node_uuid, None)
            if began is not None:
                m.deploy_seconds.labels("active" if new == states.ACTIVE else "failed").observe(now - began)
        if new in states.FAILED_STATES:
            self._end_step(e.node_uuid, "failed", now)
        elif new in states.STABLE_STATES:
            self._end_step(e.node_uuid, "done", now)

    # --- steps and BMC calls -----------------------------------------------------------------------

    def step_started(self, node_uuid: str, kind: str, step: str) -> None:
        """A deploy or clean step starts; the node's previous step (if still open) ended well."""
        now = time.monotonic()
        self._end_step(node_uuid, "done", now)
        if len(self._steps) < MAX_TRACKED:
            self._steps[node_uuid] = (kind, step, now)

    def steps_finished(self, node_uuid: str) -> None:
        self._end_step(node_uuid, "done", time.monotonic())

    def _end_step(self, node_uuid: str, outcome: str, now: float) -> None:
        running = self._steps.pop(node_uuid, None)
        if running is not None:
            kind, step, began = running
            self.metrics.step_seconds.labels(kind, step, outcome).observe(now - began)

    def bmc_call(self, hardware_type: str, call: str, seconds: float, error: BaseException | None) -> None:
        self.metrics.bmc_seconds.labels(hardware_type, call).observe(seconds)
        if error is not None:
            self.metrics.bmc_errors.labels(hardware_type, call, _error_kind(error)).inc()

    @contextlib.asynccontextmanager
    async def bmc(self, hardware_type: str, call: str) -> AsyncIterator[None]:
        """Time a BMC call made through the conductor, counting its failure by kind."""
        began = time.monotonic()
        try:
            yield
        except BaseException as exc:
            self.bmc_call(hardware_type, call, time.monotonic() - began, exc)
            raise
        self.bmc_call(hardware_type, call, time.monotonic() - began, None)


def _error_kind(exc: BaseException) -> str:
    from bootforge.errors import DriverError

    if isinstance(exc, TimeoutError | asyncio.CancelledError):
        return "timeout"
    if isinstance(exc, DriverError):
        return "driver_error"
    return "error"
