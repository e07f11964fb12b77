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
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.orm.attributes import set_committed_value

from bootforge.conductor import states, work
from bootforge.conductor.agent import AgentService
from bootforge.conductor.allocations import AllocationService
from bootforge.conductor.task import NodeTask, age, agent_last_seen, event_row, reserve
from bootforge.config import Settings
from bootforge.db.engine import Database
from bootforge.db.models import NODE_EVENTS, Node, NodeEvent, utcnow
from bootforge.db.models import Conductor as ConductorRow
from bootforge.drivers.hardware import Drivers
from bootforge.errors import BootforgeError

if TYPE_CHECKING:
    from bootforge.images.catalogue import ImageCatalogue

log = logging.getLogger("bootforge.conductor")

Work = Callable[..., Awaitable[None]]

WAIT_TIMEOUT_SETTING = {
    states.DEPLOYWAIT: "deploy_callback_timeout",
    states.CLEANWAIT: "clean_callback_timeout",
    states.INSPECTWAIT: "inspect_wait_timeout",
    states.RESCUEWAIT: "rescue_callback_timeout",
}

POWER_SYNC_FAILURES_TO_MAINTENANCE = 3


class Conductor:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.host = settings.host
        self.drivers = Drivers(settings)
        self.allocations = AllocationService(self)
        self.agent = AgentService(self)
        self._images: ImageCatalogue | None = None
        self._work: dict[int, asyncio.Task[None]] = {}
        self._periodics: list[asyncio.Task[None]] = []
        self._power_failures: dict[int, int] = {}
        # Called after a node this conductor works on changes provision state (the netboot view).
        self.state_listeners: list[Callable[[], None]] = []

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._register()
        await self.recover()
        s = self.settings
        for interval, fn in (
            (s.conductor_heartbeat_interval, self._heartbeat),
            (s.timeout_check_interval, self.check_wait_timeouts),
            (s.timeout_check_interval, self.take_over_orphans),
            (s.power_sync_interval, self.sync_power_states),
            (3600.0, self.trim_events),
        ):
            if interval > 0:
                self._periodics.append(asyncio.create_task(self._every(interval, fn)))

    async def stop(self, grace: float = 10.0) -> None:
        for t in self._periodics:
            t.cancel()
        await asyncio.gather(*self._periodics, return_exceptions=True)
        running = list(self._work.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            # Work cut short keeps its node locked by this conductor; the next start resumes it.
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
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
            except Exception:
                log.exception("periodic task %s failed", fn.__name__)

    async def _register(self) -> None:
        now = utcnow()
        values = {
            "online": True,
            "conductor_group": self.settings.conductor_group,
            "hardware_types": sorted(self.drivers.types),
            "heartbeat_at": now,
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
                .values(heartbeat_at=utcnow(), online=True)
            )
            await s.commit()

    async def live_hosts(self) -> list[str]:
        now = utcnow()
        async with self.db.read() as s:
            rows = (
                await s.execute(select(ConductorRow.hostname, ConductorRow.heartbeat_at, ConductorRow.online))
            ).all()
        return [
            h for h, hb, online in rows if online and age(hb, now) <= self.settings.conductor_offline_after
        ]

    # --- running work -----------------------------------------------------------------------------

    def spawn(self, task: NodeTask, fn: Work, *args: Any) -> None:
        """Run `fn(task, *args)` in the background; the node's lock is released when it ends."""
        job = asyncio.create_task(self._run(task, fn, args), name=f"{fn.__name__}:{task.node.uuid}")
        self._work[task.node.id] = job
        node_id = task.node.id
        job.add_done_callback(lambda _t: self._forget(node_id, job))

    def _forget(self, node_id: int, job: asyncio.Task[None]) -> None:
        if self._work.get(node_id) is job:
            del self._work[node_id]

    async def _run(self, task: NodeTask, fn: Work, args: tuple[Any, ...]) -> None:
        try:
            await fn(task, *args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, BootforgeError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, BootforgeError):
                log.exception("%s failed on node %s", fn.__name__, task.node.uuid)
            await self._fail(task, f"{fn.__name__} failed: {reason}")
        # Events recorded after the work's last save (there should be none) are not dropped.
        await task.flush()
        if task.node.provision_state in states.WAIT_STATES:
            # The agent may have reported before the node reached its wait state.
            try:
                await self.agent.resume(task.node.id)
            except Exception:
                # The periodic timeout check tries again; the node stays in its wait state meanwhile.
                log.exception("resuming node %s after its agent's report failed", task.node.uuid)

    @property
    def images(self) -> ImageCatalogue:
        if self._images is None:
            from bootforge.images.catalogue import ImageCatalogue

            self._images = ImageCatalogue(
                self.db, self.settings.netboot.root or self.settings.state_dir / "boot"
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
            await task.release()

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

    async def take_over_orphans(self) -> None:
        """Take the nodes locked by conductors that stopped heartbeating, and resume their work."""
        live = set(await self.live_hosts()) | {self.host}
        async with self.db.read() as s:
            held = list((await s.scalars(select(Node).where(Node.reservation.is_not(None)))).all())
        for node in held:
            if node.reservation in live:
                continue
            dead = node.reservation
            # Like a hash ring keyed by hardware type: leave the node to a conductor that can drive it.
            if node.driver not in self.drivers.types:
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
        cutoff = now - dt.timedelta(seconds=self.settings.conductor_offline_after)
        holder_alive = exists().where(
            ConductorRow.hostname == holder,
            ConductorRow.hostname != self.host,
            ConductorRow.online.is_(True),
            ConductorRow.heartbeat_at >= cutoff,
        )
        async with self.db.write() as s:
            result = await s.execute(
                update(Node)
                .where(
                    Node.id == node.id,
                    Node.reservation == holder,
                    Node.updated_at == node.updated_at,
                    ~holder_alive,
                )
                .values(reservation=self.host, updated_at=now)
            )
            await s.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        set_committed_value(node, "reservation", self.host)
        set_committed_value(node, "updated_at", now)
        return True

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
        if (old, "fail") in states.TRANSITIONS:
            new = states.advance(old, "fail")
            values.update(
                provision_state=new,
                target_provision_state=states.target_of(new),
                provision_updated_at=utcnow(),
                last_error=why,
            )
            text = f"{old} -> {new} (fail): {why}"
        log.error("node %s: %s", node.uuid, text)
        async with self.db.write() as s:
            await s.execute(
                update(Node).where(Node.id == node.id, Node.reservation == self.host).values(**values)
            )
            await s.execute(
                insert(NODE_EVENTS), [event_row(node.id, "provisioning", text, "error", self.host)]
            )
            await s.commit()

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
        for node in waiting:
            if node.driver not in self.drivers.types:
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

    async def sync_power_states(self) -> None:
        """Read every idle node's power state; record changes made outside bootforge."""
        async with self.db.read() as s:
            nodes = list(
                (
                    await s.scalars(
                        select(Node).where(
                            Node.reservation.is_(None),
                            Node.maintenance.is_(False),
                            Node.provision_state != states.ENROLL,
                        )
                    )
                ).all()
            )
        gate = asyncio.Semaphore(8)

        async def one(node: Node) -> None:
            async with gate:
                await self._sync_power(node)

        await asyncio.gather(*(one(n) for n in nodes if n.driver in self.drivers.types))

    async def _sync_power(self, node: Node) -> None:
        task = NodeTask(self, node, [], "power sync")
        try:
            actual = await task.driver.power.get_power_state(task)
        except Exception as exc:
            failures = self._power_failures.get(node.id, 0) + 1
            self._power_failures[node.id] = failures
            if failures >= POWER_SYNC_FAILURES_TO_MAINTENANCE:
                await self._power_failure_maintenance(node, f"{type(exc).__name__}: {exc}")
            return
        self._power_failures.pop(node.id, None)
        if actual == node.power_state:
            return
        async with self.db.write() as s:
            result = await s.execute(
                update(Node)
                .where(Node.id == node.id, Node.reservation.is_(None), Node.power_state == node.power_state)
                .values(power_state=actual)
            )
            await s.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await task.record(
                "power",
                f"power state changed outside bootforge: {node.power_state} -> {actual}",
                severity="warning",
            )
        await task.flush()  # also what the driver recorded while reading

    async def _power_failure_maintenance(self, node: Node, reason: str) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(Node)
                .where(Node.id == node.id, Node.reservation.is_(None))
                .values(
                    maintenance=True,
                    fault="power failure",
                    maintenance_reason=f"power state could not be read {POWER_SYNC_FAILURES_TO_MAINTENANCE} "
                    f"times in a row: {reason}",
                )
            )
            await s.commit()
        task = NodeTask(self, node, [], "power sync")
        await task.record("power", f"maintenance: {reason}", "error")
        await task.flush()

    async def trim_events(self) -> None:
        """Keep the newest `node_events_keep` events per node, in one statement (one short lock)."""
        ranked = select(
            NodeEvent.id,
            func.row_number().over(partition_by=NodeEvent.node_id, order_by=NodeEvent.id.desc()).label("n"),
        ).subquery()
        old = select(ranked.c.id).where(ranked.c.n > self.settings.node_events_keep)
        async with self.db.write() as s:
            await s.execute(delete(NodeEvent).where(NodeEvent.id.in_(old)))
            await s.commit()
