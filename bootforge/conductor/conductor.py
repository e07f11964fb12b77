"""The conductor: runs node work in the background, keeps periodic watch, and recovers after a crash.

Several conductors may share one PostgreSQL database. Each registers itself in `conductors` and
heartbeats there; a node locked by a conductor that stopped heartbeating is taken over by another one,
which resumes its work (see work.RESUMABLE). A conductor restarted under the same name takes back its
own nodes the same way, so a SIGKILL loses nothing: each node is resumed, or failed with the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm.attributes import set_committed_value

from bootforge.conductor import states, work
from bootforge.conductor.agent import AgentService
from bootforge.conductor.allocations import AllocationService
from bootforge.conductor.handoff import CHANNEL, Listener, notify_payload, notify_stmt
from bootforge.conductor.netboot import NETBOOT_EVENT_TYPES
from bootforge.conductor.ring import Member, Rings
from bootforge.conductor.rollouts import RolloutService
from bootforge.conductor.task import (
    LockLost,
    NodeTask,
    age,
    agent_last_seen,
    event_row,
    forget_generation,
    held_by,
    one_statement_writes,
    remember_generation,
    reserve,
    with_events,
)
from bootforge.config import Settings
from bootforge.db import secrets
from bootforge.db.clock import db_now, heartbeat_fresh
from bootforge.db.engine import Database, is_connection_lost, wait_until_reachable
from bootforge.db.models import NODE_EVENTS, Node, NodeEvent, utcnow
from bootforge.db.models import Conductor as ConductorRow
from bootforge.drivers.hardware import Drivers
from bootforge.errors import BootforgeError, InvalidInput, NodeLocked
from bootforge.observe.events import Observer

if TYPE_CHECKING:
    from bootforge.images.catalogue import ImageCatalogue
    from bootforge.observe.events import Outbound

log = logging.getLogger("bootforge.conductor")

Work = Callable[..., Awaitable[None]]

WAIT_TIMEOUT_SETTING = {
    states.DEPLOYWAIT: "deploy_callback_timeout",
    states.CLEANWAIT: "clean_callback_timeout",
    states.INSPECTWAIT: "inspect_wait_timeout",
    states.RESCUEWAIT: "rescue_callback_timeout",
}

# Where a power action handed to the node's owner keeps its request (target verb and timeout).
POWER_REQUEST = "power_request"

# Seconds a read of the live conductors (the rings) is reused for; periodic rounds read afresh.
RINGS_TTL = 1.0

POWER_SYNC_FAILURES_TO_MAINTENANCE = 3
# Seconds a lock of this conductor may be held with no job of it running before recover_stranded
# resumes the node (longer than any synchronous API action under the node's lock).
STRANDED_AFTER = 120.0
# Times a node whose work lost the database connection is resumed before it is left for a restart.
OUTAGE_RESUME_ATTEMPTS = 20
# The fault bootforge sets with the maintenance it puts a node in when its BMC stops answering; only
# that maintenance is lifted by a later good read.
POWER_FAILURE = "power failure"
POWER_FAILURE_REASON = "power state could not be read"


@dataclass
class PowerSyncRound:
    """What one power-sync round did (logged, and returned to whoever called it)."""

    nodes: int = 0
    failed: int = 0
    timed_out: int = 0
    changed: int = 0
    to_maintenance: int = 0
    lifted: int = 0
    seconds: float = 0.0
    # Seconds each good read took, for the percentiles in the log line.
    latencies: list[float] = field(default_factory=list)
    # The first failure of the round, "<node>: <reason>", so the log line says what went wrong.
    first_failure: str | None = None

    def summary(self) -> str:
        lat = sorted(self.latencies)
        reads = f"{len(lat)} read"
        if lat:
            p50, p95 = (lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 for q in (0.5, 0.95))
            reads += f" (p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {lat[-1] * 1000:.0f} ms)"
        return (
            f"{self.nodes} nodes in {self.seconds:.2f} s: {reads}, {self.failed} failed "
            f"({self.timed_out} timed out), {self.changed} changed, {self.to_maintenance} to "
            f"maintenance, {self.lifted} out of maintenance"
            + (f"; first failure: {self.first_failure}" if self.first_failure else "")
        )


class Conductor:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.host = settings.host
        self.drivers = Drivers(settings)
        self.allocations = AllocationService(self)
        self.agent = AgentService(self)
        self.rollouts = RolloutService(self)
        self._images: ImageCatalogue | None = None
        self._work: dict[int, asyncio.Task[None]] = {}
        self._periodics: list[asyncio.Task[None]] = []
        # Consecutive failed power reads per node id, in memory: a restarted conductor counts
        # again from zero (a node already in maintenance stays there, that is in the database).
        self._power_failures: dict[int, int] = {}
        self._power_round = asyncio.Lock()
        # Per node id: resumes after a lost database connection, and since when (loop time).
        self._outage_resumes: dict[int, tuple[int, float]] = {}
        # The rings of live conductors, re-read from the database at most every RINGS_TTL seconds.
        self._rings: tuple[float, Rings] | None = None
        # True once started as a conductor (registered, heartbeating): it is then on its own rings
        # whatever its last heartbeat says. An API-only or netboot-only process never is.
        self.serving = False
        # Work other processes hand to this conductor (conductor/handoff.py), and its wake-ups.
        self._listener = Listener(db, self.host, self._wake)
        self._woken: set[asyncio.Task[None]] = set()
        # Node ids woken and not yet looked at: one drainer reads them in batches, so a burst of
        # notifications (an operator acting on a rack) costs a query per batch, not a task per node.
        self._wake_ids: set[int] = set()
        self.observer = Observer(settings, db)
        # Called after a node this conductor works on changes provision state (the netboot view).
        self.state_listeners: list[Callable[[], None]] = []

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.observer.start()
        await self._register()
        self.serving = True
        await self._listener.ensure()
        await self.recover()
        # After recover: the nodes a rollout was rebuilding are being worked on again.
        await self.rollouts.start()
        s = self.settings
        for interval, fn in (
            (s.conductor_heartbeat_interval, self._heartbeat),
            (s.timeout_check_interval, self.check_wait_timeouts),
            (s.timeout_check_interval, self.take_over_orphans),
            (s.timeout_check_interval, self.recover_stranded),
            # The fallback for a lost wake-up: work handed to this conductor while it was not listening.
            (s.timeout_check_interval, self.pick_up_work),
            (s.timeout_check_interval, self.rollouts.take_over),
            (s.power_sync_interval, self.sync_power_states),
            (60.0, self.drivers.sweep),
            (3600.0, self.trim_events),
        ):
            if interval > 0:
                self._periodics.append(asyncio.create_task(self._every(interval, fn)))

    async def stop(self, grace: float = 10.0) -> None:
        # Rollout runners first (their record says where to go on); the nodes' own work is below.
        await self.rollouts.stop()
        for t in [*self._periodics, *self._woken]:
            t.cancel()
        await asyncio.gather(*self._periodics, *self._woken, return_exceptions=True)
        await self._listener.close()
        running = list(self._work.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            # Work cut short keeps its node locked by this conductor; the next start resumes it.
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.drivers.close()
        await self.observer.stop()
        async with self.db.write() as s:
            await s.execute(
                update(ConductorRow).where(ConductorRow.hostname == self.host).values(online=False)
            )
            await s.commit()

    async def _every(self, interval: float, fn: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception as exc:
                if is_connection_lost(exc):
                    # One line, not a traceback per round: the next round tries again.
                    log.warning(
                        "periodic task %s: database unreachable (%s)", fn.__name__, type(exc).__name__
                    )
                    continue
                log.exception("periodic task %s failed", fn.__name__)

    async def _register(self) -> None:
        now = utcnow()
        values = {
            "online": True,
            "conductor_group": self.settings.conductor_group,
            "hardware_types": sorted(self.drivers.types),
            # Liveness is judged by the database's clock, never this host's (db/clock.py).
            "heartbeat_at": db_now(),
            "updated_at": now,
        }
        async with self.db.write() as s:
            row = await s.scalar(select(ConductorRow).where(ConductorRow.hostname == self.host))
            if row is None:
                s.add(ConductorRow(hostname=self.host, created_at=now, **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
            await s.commit()

    async def _heartbeat(self) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(ConductorRow)
                .where(ConductorRow.hostname == self.host)
                .values(heartbeat_at=db_now(), online=True)
            )
            await s.commit()

    async def rings(self, *, fresh: bool = False) -> Rings:
        """Who owns which node: hash rings over the conductors alive by the database's clock.

        Re-read at most every RINGS_TTL seconds (every API request asks for a node's owner); a
        periodic round asks with fresh=True. Two conductors whose reads straddle a heartbeat may
        disagree for a moment: every claim is a conditional UPDATE, so at worst a node waits a round.
        """
        now = asyncio.get_running_loop().time()
        if not fresh and self._rings is not None and now - self._rings[0] < RINGS_TTL:
            return self._rings[1]
        async with self.db.read() as s:
            rows = await s.execute(
                select(
                    ConductorRow.hostname, ConductorRow.conductor_group, ConductorRow.hardware_types
                ).where(
                    ConductorRow.online.is_(True),
                    heartbeat_fresh(ConductorRow.heartbeat_at, self.settings.conductor_offline_after),
                )
            )
            members = [Member(h, g or "", frozenset(t or ())) for h, g, t in rows.all()]
        if self.serving and self.host not in {m.hostname for m in members}:
            # A running conductor counts itself alive even if its heartbeat is late (the database
            # was slow, or heartbeats are off in a test); peers judge it by the heartbeat alone.
            members.append(Member(self.host, self.settings.conductor_group, frozenset(self.drivers.types)))
        rings = Rings(members)
        self._rings = (now, rings)
        return rings

    def owner(self, rings: Rings, node: Node) -> str | None:
        return rings.owner(node.uuid, node.conductor_group, node.driver)

    async def runs_here(self, node: Node) -> bool:
        """Whether this process carries out `node`'s work: it is a running conductor and the owner."""
        return self.serving and self.owner(await self.rings(), node) == self.host

    async def hand_off(
        self,
        node: Node,
        values: dict[str, Any],
        *,
        expect_state: str | None,
        event: tuple[str, str],
        outbound: list[Outbound],
    ) -> str:
        """Write an action's first change for the node's owner to carry out, and wake it; its name.

        The node stays unlocked (conductor/handoff.py): one conditional UPDATE, as `reserve` would
        write, without taking the lock, and the NOTIFY in the same transaction.
        """
        rings = await self.rings()
        owner = self.owner(rings, node)
        if owner is None:
            # Ironic's NoValidHost: nothing alive may act on the node, so nothing is written.
            raise InvalidInput(
                f"No conductor is alive in the node's conductor_group {node.conductor_group!r} with "
                f"hardware type {node.driver} to act on node {node.uuid}",
                "conductor_group",
            )
        now = utcnow()
        changes = {"updated_at": now, **values}
        stmt = update(Node).where(Node.id == node.id, Node.reservation.is_(None))
        if expect_state is not None:
            stmt = stmt.where(Node.provision_state == expect_state)
        stmt = stmt.values(**secrets.seal_columns(self.db, node.uuid, changes))
        events = [event_row(node.id, event[0], f"{event[1]}; handed to conductor {owner}", "info", self.host)]
        if one_statement_writes(self, outbound):
            # The change, its event and the NOTIFY in one statement: one round trip instead of five.
            # The notification goes out when it commits, only if the UPDATE matched.
            notify = notify_payload(owner, node.id)
            one = with_events(
                stmt.returning(Node.id),
                events,
                lambda held: select(func.pg_notify(CHANNEL, notify)).select_from(held),
            )
            async with self.db.statement_conn() as conn:
                matched = (await conn.execute(one)).first() is not None
        else:
            async with self.db.write() as s:
                result = await s.execute(stmt.execution_options(synchronize_session=False))
                matched = result.rowcount == 1  # type: ignore[attr-defined]
                if matched:
                    await s.execute(insert(NODE_EVENTS), events)
                    await self.observer.stage(s, outbound)
                    if self.db.write_engine.dialect.name == "postgresql":
                        await s.execute(notify_stmt(owner, node.id))
                    await s.commit()
                else:
                    await s.rollback()
        if not matched:
            raise NodeLocked(f"Node {node.uuid} is locked or changed state while the request was handled")
        self.observer.published(outbound)
        return owner

    async def agent_reported(self, node_id: int) -> None:
        """An agent reported a final outcome to this process: resume the node here, or wake its owner."""
        async with self.db.read() as s:
            node = await s.get(Node, node_id)
        if node is None:
            return
        rings = await self.rings()
        owner = self.owner(rings, node)
        if self.serving and owner == self.host:
            await self.agent.resume(node_id)
        elif owner is not None and self.db.write_engine.dialect.name == "postgresql":
            # The report is stored; the owner's timeout check would find it too, this is sooner.
            async with self.db.write() as s:
                await s.execute(notify_stmt(owner, node_id))
                await s.commit()

    def _wake(self, node_id: int) -> None:
        self._wake_ids.add(node_id)
        if not self._woken:
            t = asyncio.create_task(self._drain_wakeups(), name="pick up woken nodes")
            self._woken.add(t)
            t.add_done_callback(self._woken.discard)

    async def _drain_wakeups(self) -> None:
        while self._wake_ids:
            batch = sorted(self._wake_ids)[:500]
            self._wake_ids.difference_update(batch)
            await self.pick_up_work(batch)

    async def pick_up_work(self, node_ids: list[int] | None = None) -> None:
        """Claim and run the work handed to this conductor: unlocked nodes in a working state or with
        a target power state that the ring gives to it; with `node_ids` (a wake-up), those nodes only,
        and an agent's stored report for them is taken too."""
        try:
            await self._pick_up(node_ids)
        except Exception:
            if node_ids is None:
                raise
            # A wake-up that failed (the database went away): the next poll round finds the work.
            log.exception("picking up work for nodes %s failed", node_ids)

    async def _pick_up(self, node_ids: list[int] | None) -> None:
        if node_ids is None:
            await self._listener.ensure()
        stmt = select(Node).where(
            Node.reservation.is_(None),
            or_(Node.provision_state.in_(work.RESUMABLE), Node.target_power_state.is_not(None)),
        )
        if node_ids is not None:
            stmt = select(Node).where(Node.id.in_(node_ids))
        async with self.db.read() as s:
            nodes = list((await s.scalars(stmt)).all())
        rings = await self.rings(fresh=node_ids is None)
        for node in nodes:
            if node.driver not in self.drivers.types or self.owner(rings, node) != self.host:
                continue
            if node.reservation is None and node.provision_state in states.WAIT_STATES:
                await self.agent.resume(node.id)
                continue
            if node.reservation is not None:
                continue
            if node.provision_state not in work.RESUMABLE and node.target_power_state is None:
                continue
            if await self._claim(node, None):
                await self._start_handed(node)

    async def _start_handed(self, node: Node) -> None:
        task = NodeTask(self, node, None, "handoff")
        fn = work.RESUMABLE.get(node.provision_state)
        if fn is not None:
            await task.record("provisioning", f"picked up by conductor {self.host}: {node.provision_state}")
            self.spawn(task, fn)
            return
        request = node.driver_internal_info.get(POWER_REQUEST) or {}
        target = request.get("target") or node.target_power_state
        task.set_internal(**{POWER_REQUEST: None})
        await task.record("power", f"picked up by conductor {self.host}: {target}")
        self.spawn(task, work.change_power, target, request.get("timeout"))

    async def live_hosts(self) -> list[str]:
        """Conductors online whose heartbeat is fresh by the database's clock (not this host's)."""
        async with self.db.read() as s:
            rows = await s.scalars(
                select(ConductorRow.hostname).where(
                    ConductorRow.online.is_(True),
                    heartbeat_fresh(ConductorRow.heartbeat_at, self.settings.conductor_offline_after),
                )
            )
            return list(rows.all())

    # --- running work -----------------------------------------------------------------------------

    def spawn(self, task: NodeTask, fn: Work, *args: Any) -> None:
        """Run `fn(task, *args)` in the background; the node's lock is released when it ends."""
        # Whoever spawns holds the lock (taken with reserve, perhaps after the task was made).
        task.exclusive = True
        job = asyncio.create_task(self._run(task, fn, args), name=f"{fn.__name__}:{task.node.uuid}")
        self._work[task.node.id] = job
        node_id = task.node.id
        job.add_done_callback(lambda _t: self._forget(node_id, job))

    def _forget(self, node_id: int, job: asyncio.Task[None]) -> None:
        if self._work.get(node_id) is job:
            del self._work[node_id]

    async def _run(self, task: NodeTask, fn: Work, args: tuple[Any, ...]) -> None:
        """Run one piece of work and make sure the node's lock comes back, whatever happens.

        Work releases the lock itself (with the state change that ends it) or hands it to the next
        job it spawns; if it raises, it is failed here with the reason; if even that cannot be saved
        (the database refuses the node's row), the failure is written without the node's pending
        changes; and work that ends still holding the lock has it released. The one exit that keeps
        the lock is cancellation by a stopping conductor: the next start resumes the node.
        """
        job = asyncio.current_task()
        try:
            await fn(task, *args)
        except asyncio.CancelledError:
            raise
        except LockLost as exc:
            # Another conductor took the node over while this one stalled: its work is the node's
            # now. Nothing of ours was written (the write that found out was refused whole); failing
            # or releasing the node would overwrite the new holder, and retrying would race it.
            log.error("%s on node %s stopped: %s", fn.__name__, task.node_uuid, exc.message)
            task.exclusive = False
            forget_generation(task.node)
            return
        except Exception as exc:
            if is_connection_lost(exc):
                # The database went away (restart, failover), not the work: resume the node from its
                # last persisted step once the database answers again (db/engine.py).
                self._resume_after_outage(task, fn.__name__, exc)
                return
            reason = exc.message if isinstance(exc, BootforgeError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, BootforgeError):
                log.exception("%s failed on node %s", fn.__name__, task.node_uuid)
            try:
                await self._fail(task, f"{fn.__name__} failed: {reason}")
            except Exception:
                log.exception("node %s: saving the failure of %s failed", task.node_uuid, fn.__name__)
                # The node object holds what the database refused; it is not used again.
                await self._fail_unsaved(task, f"{fn.__name__} failed: {reason}")
                return
        if task.exclusive and self._work.get(task.node_id) is job:
            # Neither released nor handed to another job: a bug in the work, not a reason to keep
            # the node locked until a restart.
            log.error("%s ended on node %s holding its lock; releasing it", fn.__name__, task.node_uuid)
            try:
                await task.release()
            except Exception:
                log.exception("node %s: releasing after %s failed", task.node_uuid, fn.__name__)
                await self._fail_unsaved(task, f"{fn.__name__} ended with changes that could not be saved")
                return
        try:
            # Events recorded after the work's last save (there should be none) are not dropped.
            await task.flush()
        except Exception:
            log.exception("node %s: writing the last events of %s failed", task.node_uuid, fn.__name__)
        if task.node.provision_state in states.WAIT_STATES:
            # The agent may have reported before the node reached its wait state.
            try:
                await self.agent.resume(task.node_id)
            except Exception:
                # The periodic timeout check tries again; the node stays in its wait state meanwhile.
                log.exception("resuming node %s after its agent's report failed", task.node.uuid)

    @property
    def images(self) -> ImageCatalogue:
        if self._images is None:
            from bootforge.images.catalogue import ImageCatalogue

            self._images = ImageCatalogue(
                self.db, self.settings.netboot.root or self.settings.state_dir / "boot", self.settings.images
            )
        return self._images

    def agent_wakeup(self, node_id: int) -> None:
        self.agent.wakeup(node_id)

    def state_changed(self) -> None:
        for listener in self.state_listeners:
            listener()

    async def _fail(self, task: NodeTask, reason: str) -> None:
        node = task.node
        node.target_power_state = None
        if (node.provision_state, "fail") in states.TRANSITIONS:
            await task.transition("fail", error=reason, release=True)
        else:
            node.last_error = reason
            await task.record("error", reason, severity="error")
            task.emit(self.observer.failure(task.node_uuid, node.name, node.provision_state, reason))
            await task.release()

    async def _fail_unsaved(self, task: NodeTask, reason: str) -> None:
        """Fail the node and release it from what the database holds, dropping the task's pending
        changes: used when saving them is what failed."""
        generation = task.generation
        if generation is None:
            task.exclusive = False
            return
        held = held_by(task.node_id, self.host, generation)
        async with self.db.write() as s:
            old = await s.scalar(select(Node.provision_state).where(*held).with_for_update())
            values: dict[str, Any] = {"reservation": None, "target_power_state": None, "last_error": reason}
            text = reason
            outbound = self.observer.failure(task.node_uuid, None, old or "", reason) if old else []
            if old is not None and (old, "fail") in states.TRANSITIONS:
                new = states.advance(old, "fail")
                outbound = self.observer.provision(task.node_uuid, None, old, new, "fail", reason)
                values.update(
                    provision_state=new,
                    target_provision_state=states.target_of(new),
                    provision_updated_at=utcnow(),
                )
                text = f"{old} -> {new} (fail): {reason}"
            if old is not None:
                await s.execute(update(Node).where(*held).values(**values))
                await s.execute(
                    insert(NODE_EVENTS), [event_row(task.node_id, "provisioning", text, "error", self.host)]
                )
                await self.observer.stage(s, outbound)
            await s.commit()
        if old is not None:
            self.observer.published(outbound)
        task.exclusive = False
        forget_generation(task.node)
        if old is not None:
            self.state_changed()

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait for all background work to finish (tests and graceful shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._work and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(list(self._work.values()), timeout=0.5)

    # --- recovery and takeover --------------------------------------------------------------------

    async def recover(self) -> None:
        """Resume or fail every node this conductor held when it last stopped (or died)."""
        async with self.db.read() as s:
            nodes = list((await s.scalars(select(Node).where(Node.reservation == self.host))).all())
        for node in nodes:
            # A peer that saw our stale heartbeat just before we registered may be taking the node.
            if not await self._claim(node, self.host):
                continue
            if node.driver in self.drivers.types:
                await self._resume(node, f"conductor {self.host} restarted")
            else:
                why = f"hardware type {node.driver} is not enabled on conductor {self.host}"
                await self._abandon(node, why)

    async def recover_stranded(self) -> None:
        """Resume nodes locked by this live conductor with no work of it running on them.

        Left so when a lock outlived its work without a crash: a synchronous API action whose release
        the database dropped (restart, failover), or a reserve that committed while its answer was
        lost. Only locks older than STRANDED_AFTER (no synchronous action runs that long) and not
        held by a job here; the claim bumps the generation, so a late write of the old holder fails.
        """
        cutoff = utcnow() - dt.timedelta(seconds=STRANDED_AFTER)
        async with self.db.read() as s:
            nodes = list(
                (
                    await s.scalars(
                        select(Node).where(Node.reservation == self.host, Node.updated_at < cutoff)
                    )
                ).all()
            )
        for node in nodes:
            if node.id in self._work or node.driver not in self.drivers.types:
                continue
            if await self._claim(node, self.host):
                log.warning(
                    "node %s: locked by %s with no work running on it; resuming it", node.uuid, self.host
                )
                await self._resume(node, f"lock of {self.host} held with no work running")

    async def take_over_orphans(self) -> None:
        """Take the nodes locked by conductors that stopped heartbeating, and resume their work.

        Only the nodes the ring now gives this conductor: a dead conductor's nodes go to their new
        owners (spread as the ring spreads them, pinned to their conductor group), not to whichever
        conductor looked first.
        """
        rings = await self.rings(fresh=True)
        live = rings.hostnames() | {self.host}
        async with self.db.read() as s:
            held = list(
                (
                    await s.scalars(
                        select(Node).where(Node.reservation.is_not(None), Node.reservation.not_in(live))
                    )
                ).all()
            )
        for node in held:
            dead = node.reservation
            if node.driver not in self.drivers.types or self.owner(rings, node) != self.host:
                continue
            if await self._claim(node, dead):
                await self._resume(node, f"conductor {dead} stopped heartbeating; taken over by {self.host}")

    async def _claim(self, node: Node, holder: str | None) -> bool:
        """Move the node's lock from `holder` to this conductor, unless `holder` is alive (again).

        The heartbeat is checked inside the UPDATE, not from the earlier list of live hosts, and the row
        must be unchanged since we read it (each claim bumps updated_at): a conductor restarted meanwhile
        registers before it claims its own nodes with this same statement, so of it and a peer taking
        over, whichever claims second finds the row changed and leaves the node to the other.
        """
        now = utcnow()
        holder_alive = exists().where(
            ConductorRow.hostname == holder,
            ConductorRow.hostname != self.host,
            ConductorRow.online.is_(True),
            heartbeat_fresh(ConductorRow.heartbeat_at, self.settings.conductor_offline_after),
        )
        # One statement: on PostgreSQL it runs alone in autocommit (one round trip, not three).
        async with self.db.statement_conn() as conn:
            result = await conn.execute(
                update(Node)
                .where(
                    Node.id == node.id,
                    Node.reservation == holder,
                    Node.updated_at == node.updated_at,
                    ~holder_alive,
                )
                # A new generation: the old holder's writes (a stalled process, or this host
                # before its restart) no longer match the row (fencing, conductor/task.py).
                .values(reservation=self.host, updated_at=now, lock_generation=Node.lock_generation + 1)
                .returning(Node.lock_generation)
            )
            generation = result.scalar()
        if generation is None:
            return False
        set_committed_value(node, "reservation", self.host)
        set_committed_value(node, "updated_at", now)
        remember_generation(node, generation)
        return True

    def _resume_after_outage(self, task: NodeTask, what: str, exc: BaseException) -> None:
        """Work on `task`'s node stopped because the database connection was lost: keep the node's
        lock (it is still ours in the database), wait until the database answers, then take the lock
        again under a new generation and resume the node from its last persisted step, as a restart
        would. Runs as the node's job, so wait_idle waits for it and stop cancels it."""
        task.exclusive = False
        forget_generation(task.node)
        node_id, node_uuid = task.node_id, task.node_uuid
        log.warning("%s on node %s: database connection lost (%s); resuming it once the database answers",
                    what, node_uuid, type(exc).__name__)  # fmt: skip

        now = asyncio.get_running_loop().time()
        count, since = self._outage_resumes.get(node_id, (0, now))
        if now - since > 600:
            count, since = 0, now
        self._outage_resumes[node_id] = (count + 1, since)
        if count >= OUTAGE_RESUME_ATTEMPTS:
            # Not an outage that ends (a standby answering SELECT 1 but refusing writes, say):
            # stop spinning; the node stays locked by this conductor and its next start resumes it.
            log.error("node %s: database connection lost %d times in 10 minutes; left for the next start",
                      node_uuid, count + 1)  # fmt: skip
            return

        async def resume() -> None:
            for _attempt in range(OUTAGE_RESUME_ATTEMPTS):
                await asyncio.sleep(0.5)  # the server that just closed our connection is not back yet
                await wait_until_reachable(self.db, give_up_after=float("inf"))
                try:
                    async with self.db.read() as s:
                        node = await s.scalar(select(Node).where(Node.id == node_id))
                    if node is None or node.reservation != self.host:
                        return  # deleted, or a peer took it over while our heartbeat lapsed
                    if await self._claim(node, self.host):
                        await self._resume(node, f"database connection lost during {what} on {self.host}")
                    return
                except Exception as again:
                    if not is_connection_lost(again):
                        raise
            log.error("node %s: the database kept dropping the connection; left for the next start",
                      node_uuid)  # fmt: skip

        job = asyncio.create_task(resume(), name=f"resume-after-outage:{node_uuid}")
        self._work[node_id] = job
        job.add_done_callback(lambda _t: self._forget(node_id, job))

    async def _resume(self, node: Node, why: str) -> None:
        task = NodeTask(self, node, None, "resume")
        if node.target_power_state:
            interrupted = node.target_power_state
            node.target_power_state = None
            # The action may or may not have reached the machine: ask it, rather than guess.
            try:
                node.power_state = await task.driver.power.get_power_state(task)
                found = f"the machine reads '{node.power_state}'"
            except Exception as exc:
                found = f"its power state could not be read ({type(exc).__name__}: {exc})"
            await task.record("power", f"{why} during '{interrupted}'; {found}", severity="warning")
        fn = work.RESUMABLE.get(node.provision_state)
        if fn is None:
            await task.release()
            return
        await task.record("provisioning", f"{why}: resuming {node.provision_state}")
        self.spawn(task, fn)

    async def _abandon(self, node: Node, why: str) -> None:
        """Unlock a node whose work this conductor cannot run, failing it (if it was working) with `why`.

        Written without a NodeTask, which needs the node's driver; the edge still comes from the table.
        """
        old = node.provision_state
        values: dict[str, Any] = {"reservation": None, "target_power_state": None}
        text = f"cannot resume {old}: {why}"
        outbound: list[Outbound] = []
        if (old, "fail") in states.TRANSITIONS:
            new = states.advance(old, "fail")
            outbound = self.observer.provision(node.uuid, node.name, old, new, "fail", why)
            values.update(
                provision_state=new,
                target_provision_state=states.target_of(new),
                provision_updated_at=utcnow(),
                last_error=why,
            )
            text = f"{old} -> {new} (fail): {why}"
        log.error("node %s: %s", node.uuid, text)
        generation = node.lock_generation
        async with self.db.write() as s:
            r = await s.execute(update(Node).where(*held_by(node.id, self.host, generation)).values(**values))
            if r.rowcount != 1:  # type: ignore[attr-defined]
                await s.rollback()
                log.error("node %s: taken over before it could be abandoned; left to its holder", node.uuid)
                return
            await s.execute(
                insert(NODE_EVENTS), [event_row(node.id, "provisioning", text, "error", self.host)]
            )
            await self.observer.stage(s, outbound)
            await s.commit()
        self.observer.published(outbound)

    # --- periodic checks --------------------------------------------------------------------------

    async def check_wait_timeouts(self) -> None:
        """Fail nodes that waited for a callback longer than allowed, recording why."""
        now = utcnow()
        async with self.db.read() as s:
            waiting = list(
                (
                    await s.scalars(
                        select(Node).where(
                            Node.provision_state.in_(WAIT_TIMEOUT_SETTING), Node.reservation.is_(None)
                        )
                    )
                ).all()
            )
        rings = await self.rings(fresh=True)
        for node in waiting:
            # The ring's owner checks its nodes; the others leave them alone.
            if node.driver not in self.drivers.types or self.owner(rings, node) != self.host:
                continue
            # A report taken by another conductor (or that raced the node into its wait state).
            if await self.agent.resume(node.id):
                continue
            limit: float = getattr(self.settings, WAIT_TIMEOUT_SETTING[node.provision_state])
            heard = await agent_last_seen(self.db, node)
            # A working agent (polling, reporting progress) keeps the wait alive: the timeout is for silence.
            if min(age(node.provision_updated_at, now), age(heard, now)) < limit:
                continue
            try:
                await reserve(self, node, expect_state=node.provision_state)
            except BootforgeError:
                continue
            task = NodeTask(self, node, None, "timeout")
            agent = (
                f"the agent was last heard {age(heard, now):.0f} s ago"
                if heard is not None
                else "no agent called from the ramdisk"
            )
            await task.transition(
                "fail",
                release=True,
                error=f"Timeout reached while waiting for callback for node {node.uuid} in state "
                f"'{node.provision_state}' after {limit:g} s: {agent}",
            )

    async def sync_power_states(self) -> PowerSyncRound:
        """One round: read the power state of every idle node this conductor owns through its BMC.

        Changes made outside bootforge are recorded; a node whose BMC failed
        POWER_SYNC_FAILURES_TO_MAINTENANCE reads in a row goes into maintenance (fault "power
        failure"), and is read again every round, so the first good read lifts that maintenance.
        At most `power_sync_workers` reads are in flight, each cut off after `power_sync_timeout`;
        a second caller waits for the running round to end (rounds never overlap).
        """
        async with self._power_round:
            return await self._power_round_run()

    async def _power_round_run(self) -> PowerSyncRound:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self.db.read() as s:
            nodes = list(
                (
                    await s.scalars(
                        select(Node).where(
                            Node.reservation.is_(None),
                            Node.provision_state != states.ENROLL,
                            or_(Node.maintenance.is_(False), Node.fault == POWER_FAILURE),
                        )
                    )
                ).all()
            )
        # Only this conductor's share: with n conductors each reads about 1/n of the BMCs.
        rings = await self.rings(fresh=True)
        nodes = [n for n in nodes if n.driver in self.drivers.types and self.owner(rings, n) == self.host]
        # Failing BMCs first (as Ironic): the longest reads start first, so they overlap the quick
        # ones instead of trailing after them.
        nodes.sort(key=lambda n: -self._power_failures.get(n.id, 0))
        result = PowerSyncRound(nodes=len(nodes))
        gate = asyncio.Semaphore(self.settings.power_sync_workers)

        async def one(node: Node) -> None:
            try:
                await self._sync_power(node, gate, result)
            except Exception:
                # A database error on one node must not end the round for the others.
                log.exception("power sync of node %s failed", node.uuid)

        await asyncio.gather(*(one(n) for n in nodes))
        # Forget nodes that are gone (deleted, taken by another conductor's work, ...).
        seen = {n.id for n in nodes}
        self._power_failures = {k: v for k, v in self._power_failures.items() if k in seen}
        result.seconds = loop.time() - started
        if nodes:
            log.info("power sync: %s", result.summary())
        return result

    async def _sync_power(self, node: Node, gate: asyncio.Semaphore, result: PowerSyncRound) -> None:
        timeout = self.settings.power_sync_timeout
        async with gate:
            began = asyncio.get_running_loop().time()
            deadline = asyncio.timeout(timeout)
            task: NodeTask | None = None
            try:
                task = NodeTask(self, node, [], "power sync")
                async with deadline:
                    actual = await task.driver.power.get_power_state(task)
            except Exception as exc:
                elapsed = asyncio.get_running_loop().time() - began
                self.observer.bmc_call(node.driver, "get_power_state", elapsed, exc)
                if isinstance(exc, TimeoutError) and deadline.expired():
                    reason = f"the BMC did not answer within {timeout:g} s (power_sync_timeout)"
                    result.timed_out += 1
                else:
                    reason = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
                result.failed += 1
                result.first_failure = result.first_failure or f"{node.name or node.uuid}: {reason}"
                log.debug("power sync: node %s: %s", node.uuid, reason)
                await self._power_read_failed(node, reason, result)
                if task is not None:
                    await task.flush()  # what the driver recorded before it failed
                return
            result.latencies.append(asyncio.get_running_loop().time() - began)
            self.observer.bmc_call(node.driver, "get_power_state", result.latencies[-1], None)
        self._power_failures.pop(node.id, None)
        lift = node.maintenance and node.fault == POWER_FAILURE
        if actual != node.power_state or lift:
            await self._power_read(task, actual, lift, result)
        await task.flush()  # what the driver recorded while reading

    async def _power_read(self, task: NodeTask, actual: str, lift: bool, result: PowerSyncRound) -> None:
        """Write what a good read found: a changed power state, the end of power-failure maintenance."""
        node = task.node
        idle = (Node.id == node.id, Node.reservation.is_(None))
        outbound: list[Outbound] = []
        async with self.db.write() as s:
            changed = lifted = 0
            if actual != node.power_state:
                r = await s.execute(
                    update(Node).where(*idle, Node.power_state == node.power_state).values(power_state=actual)
                )
                changed = r.rowcount  # type: ignore[attr-defined]
            if lift:
                # Only the maintenance bootforge set: an operator who changed the reason since owns it.
                r = await s.execute(
                    update(Node)
                    .where(
                        *idle,
                        Node.maintenance.is_(True),
                        Node.fault == POWER_FAILURE,
                        Node.maintenance_reason.startswith(POWER_FAILURE_REASON),
                    )
                    .values(maintenance=False, maintenance_reason=None, fault=None)
                )
                lifted = r.rowcount  # type: ignore[attr-defined]
                if lifted:
                    outbound = self.observer.maintenance(node.uuid, node.name, False, None, "power sync")
                    await self.observer.stage(s, outbound)
            await s.commit()
        self.observer.published(outbound)
        if changed:
            result.changed += 1
            await task.record(
                "power",
                f"power state changed outside bootforge: {node.power_state} -> {actual}",
                severity="warning",
            )
        if lifted:
            result.lifted += 1
            await task.record("maintenance", f"maintenance unset: the BMC answers again ({actual})")

    async def _power_read_failed(self, node: Node, reason: str, result: PowerSyncRound) -> None:
        failures = self._power_failures.get(node.id, 0) + 1
        self._power_failures[node.id] = failures
        # A node already in power-failure maintenance has nothing new to say until it answers.
        if failures < POWER_SYNC_FAILURES_TO_MAINTENANCE or node.maintenance:
            return
        outbound: list[Outbound] = []
        async with self.db.write() as s:
            r = await s.execute(
                update(Node)
                .where(Node.id == node.id, Node.reservation.is_(None), Node.maintenance.is_(False))
                .values(
                    maintenance=True,
                    fault=POWER_FAILURE,
                    maintenance_reason=f"{POWER_FAILURE_REASON} {failures} times in a row: {reason}",
                )
            )
            if r.rowcount == 1:  # type: ignore[attr-defined]
                text = f"maintenance set: {POWER_FAILURE_REASON} {failures} times in a row: {reason}"
                await s.execute(
                    insert(NODE_EVENTS), [event_row(node.id, "maintenance", text, "error", self.host)]
                )
                result.to_maintenance += 1
                outbound = self.observer.maintenance(node.uuid, node.name, True, text, "power sync")
                await self.observer.stage(s, outbound)
            await s.commit()
        self.observer.published(outbound)

    async def trim_events(self) -> None:
        """Keep the newest `node_events_keep` netboot events and as many other events per node, in one
        statement (one short lock); state changes ("provisioning") are never trimmed.

        Netboot events are the ones a stranger on the provisioning network can cause (rate-limited by
        the EventSink, still many): trimmed apart, they never push the rest of a node's history out.
        State changes grow only with the node's own lifecycle, and are what "what happened to this
        node" is answered from."""
        kind = case((NodeEvent.event_type.in_(NETBOOT_EVENT_TYPES), 1), else_=0)
        ranked = (
            select(
                NodeEvent.id,
                func.row_number()
                .over(partition_by=(NodeEvent.node_id, kind), order_by=NodeEvent.id.desc())
                .label("n"),
            )
            .where(NodeEvent.event_type != "provisioning")
            .subquery()
        )
        old = select(ranked.c.id).where(ranked.c.n > self.settings.node_events_keep)
        async with self.db.write() as s:
            await s.execute(delete(NodeEvent).where(NodeEvent.id.in_(old)))
            await s.commit()
