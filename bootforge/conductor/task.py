"""Node locks and the task a driver works through.

A node's exclusive lock is its `reservation` column: taking it is one conditional UPDATE
(`... WHERE reservation IS NULL`), so it works the same across processes and hosts on one database.
A request that finds the node locked gets NodeLocked (409) at once; it never queues behind the lock.

The lock is held from the API call that starts an action until the action's background work ends, so
"the node is busy" is visible to every client and every conductor.

Fencing: every reserve (a takeover too) bumps the node's `lock_generation`, and the holder remembers the
one it got. Each write the holder makes (save, transition, release, flush, unlock) is conditioned on
`reservation = me AND lock_generation = mine` in the same transaction; one that matches no row raises
LockLost and applies nothing. A conductor that stalled past conductor_offline_after and was taken over
(even by a restart of itself under the same name) so cannot overwrite the new holder's work.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import column, insert, select, true, update, values
from sqlalchemy.orm.attributes import instance_state, set_committed_value

from bootforge.conductor import states
from bootforge.db import secrets
from bootforge.db.engine import Database
from bootforge.db.models import NODE_EVENTS, AgentSession, Node, NodeEvent, Port, utcnow
from bootforge.db.queries import is_uuid
from bootforge.drivers.base import NetworkBoot, updated_internal
from bootforge.drivers.hardware import INTERFACE_TYPES, DriverSet
from bootforge.errors import Conflict, NodeLocked, NotFound
from bootforge.text import MESSAGE_LIMIT, printable

if TYPE_CHECKING:
    from bootforge.conductor.context import ConductorContext
    from bootforge.config import Settings
    from bootforge.drivers.storage import BootVolume
    from bootforge.observe.events import Outbound

log = logging.getLogger("bootforge.conductor")


def locked_message(node: Node, holder: str | None) -> str:
    return (
        f"Node {node.uuid} is locked by host {holder}, please retry after the current operation is completed."
    )


class LockLost(Conflict):
    """The node's lock is no longer this task's (taken over after a stall): nothing was written."""

    def __init__(self, node_uuid: str, host: str, generation: int) -> None:
        super().__init__(
            f"Node {node_uuid}: the lock of conductor {host} (generation {generation}) was taken over; "
            "its write was refused."
        )
        self.node_uuid = node_uuid


# Where the generation a reserve got is kept: on the node object it locked (its instance state, which
# survives the object's expiry), so every task working on that object writes as that holder.
HELD: Final = "bootforge.lock_generation"


def remember_generation(node: Node, generation: int) -> None:
    set_committed_value(node, "lock_generation", generation)
    instance_state(node).info[HELD] = generation


def held_generation(node: Node) -> int | None:
    """The lock generation this process got for `node` (None: it does not hold the lock)."""
    held: int | None = instance_state(node).info.get(HELD)
    return held


def forget_generation(node: Node) -> None:
    instance_state(node).info.pop(HELD, None)


def held_by(node_id: int, host: str, generation: int) -> tuple[Any, ...]:
    """The WHERE clause of a write by the lock's holder: its name and the generation it got."""
    return (Node.id == node_id, Node.reservation == host, Node.lock_generation == generation)


async def check_held(s: Any, node_id: int, node_uuid: str, host: str, generation: int) -> None:
    """Fail the transaction `s` with LockLost unless this holder still has the node's lock.

    A no-op UPDATE rather than a SELECT: it takes the row's lock (PostgreSQL), so a takeover waits
    for this transaction, and a takeover that committed first makes it match nothing.
    """
    result = await s.execute(
        update(Node)
        .where(*held_by(node_id, host, generation))
        .values(lock_generation=Node.lock_generation, updated_at=Node.updated_at)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        await s.rollback()
        log.error("node %s: lock generation %d of %s lost; write refused", node_uuid, generation, host)
        raise LockLost(node_uuid, host, generation)


def event_row(node_id: int, event_type: str, message: str, severity: str, conductor: str) -> dict[str, Any]:
    return {
        "uuid": str(uuidlib.uuid4()),
        "node_id": node_id,
        "created_at": utcnow(),
        "severity": severity,
        "event_type": event_type,
        # Messages quote what clients and agents sent: one escaped line, bounded, whoever built them.
        "event": printable(message, MESSAGE_LIMIT),
        "conductor": conductor,
    }


def one_statement_writes(conductor: ConductorContext, outbound: Sequence[Outbound]) -> bool:
    """Whether a node write and its events can go as one statement (with_events): on PostgreSQL
    (data-modifying WITH), and with no webhook outbox rows to stage beside them."""
    return conductor.db.write_engine.dialect.name == "postgresql" and not (
        outbound and conductor.observer.targets
    )


def with_events(
    node_update: Any, events: Sequence[dict[str, Any]], then: Callable[[Any], Any] | None = None
) -> Any:
    """ONE statement: `node_update` (an UPDATE ... RETURNING) in a data-modifying WITH, and `events`
    inserted only if it updated the row; it selects what the UPDATE returned, or `then(held)` (a
    SELECT over the CTE of the updated row). No row back: the UPDATE matched nothing, and nothing at
    all was written.

    Run alone in autocommit (Database.statement_conn) it is as atomic as the BEGIN / UPDATE /
    INSERT / COMMIT it replaces - one statement is one transaction - in one round trip instead of
    four. PostgreSQL only (SQLite has no data-modifying WITH).
    """
    if not events and then is None:
        return node_update
    held = node_update.cte("held")
    final: Any = then(held) if then is not None else held.select()
    if not events:
        return final
    names = list(events[0])
    rows = values(*[column(n, NODE_EVENTS.c[n].type) for n in names], name="ev").data(
        [tuple(e[n] for n in names) for e in events]
    )
    add = insert(NODE_EVENTS).from_select(
        names,
        select(*[rows.c[n] for n in names]).select_from(rows).join(held, true()),
        # Columns not given take their server defaults (network_boot false).
        include_defaults=False,
    )
    return final.add_cte(add.cte("added"))


class NodeTask:
    """One piece of work on one node, holding (or not) the node's exclusive lock.

    Drivers see `node`, `get_ports()`, `record()` and `save()`; the conductor also uses
    `transition()`, `release()` and `flush()`. Changes to JSON columns must assign a new dict:
    in-place mutation is not tracked.

    Timeline events are written with the node's next save (one transaction instead of one each);
    whoever records without saving afterwards calls `flush()`.
    """

    def __init__(
        self, conductor: ConductorContext, node: Node, ports: list[Port] | None, purpose: str
    ) -> None:
        self.conductor = conductor
        self.node = node
        # Kept apart from `node`: after a save the database refused, the object is expired and
        # detached, and reading its attributes raises; these are what releasing the lock needs.
        self.node_id: int = node.id
        self.node_uuid: str = node.uuid
        self._ports = ports
        self.purpose = purpose
        self._events: list[dict[str, Any]] = []
        # Outbound events (webhooks, streams) of changes not yet saved: staged with the next save.
        self._outbound: list[Outbound] = []
        # A new ramdisk boot id not yet saved: its save refreshes the netboot view at once, so the
        # boot script carries the new boot's token (bootforge/boot_token.py) by the power-on.
        self._new_boot = False
        self.exclusive = node.reservation == conductor.host
        self._driver: DriverSet = conductor.drivers.for_node(
            node.driver, {k: getattr(node, f"{k}_interface") for k in INTERFACE_TYPES}
        )
        self._secrets_checked = False

    @property
    def driver(self) -> DriverSet:
        """The node's interfaces; refused (SecretUnreadable, naming the field) while a stored secret of
        the node does not decrypt, so that no driver sends a BMC the ciphertext (db/secrets.py)."""
        if not self._secrets_checked:
            secrets.check_readable(self.node, self.conductor.db)
            self._secrets_checked = True
        return self._driver

    @property
    def settings(self) -> Settings:
        return self.conductor.settings

    async def agent_last_seen(self) -> dt.datetime | None:
        return await agent_last_seen(self.conductor.db, self.node)

    async def agent_address(self) -> str | None:
        boot = self.node.driver_internal_info.get("agent_boot")
        if not boot:
            return None
        async with self.conductor.db.read() as s:
            return await s.scalar(
                select(AgentSession.agent_address).where(
                    AgentSession.node_id == self.node.id, AgentSession.boot_id == boot
                )
            )

    async def other_node(self, ident: str) -> Node | None:
        column = Node.uuid if is_uuid(ident) else Node.name
        async with self.conductor.db.read() as s:
            return await s.scalar(select(Node).where(column == ident))

    async def network_boots_since(self, since: dt.datetime) -> list[NetworkBoot]:
        # Netboot events are batched (EventSink) and reach the table within about a second; each
        # keeps the time it was emitted.
        async with self.conductor.db.read() as s:
            rows = await s.execute(
                select(NodeEvent.created_at, NodeEvent.event_type, NodeEvent.event)
                .where(
                    NodeEvent.node_id == self.node.id,
                    NodeEvent.network_boot.is_(True),
                    NodeEvent.created_at >= since,
                )
                .order_by(NodeEvent.created_at, NodeEvent.id)
            )
            return [NetworkBoot(_aware(when), kind, text) for when, kind, text in rows]

    async def get_ports(self) -> list[Port]:
        if self._ports is None:
            self._ports = await load_ports(self.conductor, self.node.id)
        return self._ports

    async def boot_volume(self) -> BootVolume | None:
        # Imported here: conductor/volumes.py builds on this module (event_row).
        from bootforge.conductor.volumes import boot_volumes

        return (await boot_volumes(self.conductor.db, self.node.id)).get(self.node.uuid)

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self._events.append(event_row(self.node.id, event_type, message, severity, self.conductor.host))

    def emit(self, outbound: list[Outbound]) -> None:
        """Send these outbound events with the next save (that is, only if it commits)."""
        self._outbound.extend(outbound)

    @property
    def generation(self) -> int | None:
        """The lock generation this task writes as; None when it does not hold the lock."""
        return held_generation(self.node)

    def _changes(self) -> dict[str, Any]:
        """The node's columns changed since they were loaded or last saved."""
        state = instance_state(self.node)
        columns = state.mapper.column_attrs
        return {k: state.dict[k] for k in state.committed_state if k in columns and k in state.dict}

    def _lock_lost(self, generation: int) -> LockLost:
        log.error(
            "node %s: lock generation %d of %s lost; write refused",
            self.node_uuid,
            generation,
            self.conductor.host,
        )
        return LockLost(self.node_uuid, self.conductor.host, generation)

    async def _save_held_one_statement(self, generation: int, events: list[dict[str, Any]]) -> dict[str, Any]:
        """The holder's save as one statement (with_events): the fenced UPDATE of the node and the
        events with it; LockLost if the UPDATE matched nothing (then nothing at all was written)."""
        changes = self._changes()
        if changes:
            changes.setdefault("updated_at", utcnow())
            written = secrets.seal_columns(self.conductor.db, self.node_uuid, changes)
        else:
            # Nothing changed: the statement still proves the lock is held (and takes the row's
            # lock, so a takeover waits for it), as check_held does.
            written = {"lock_generation": Node.lock_generation, "updated_at": Node.updated_at}
        held = update(Node).where(*held_by(self.node_id, self.conductor.host, generation)).values(**written)
        async with self.conductor.db.statement_conn() as conn:
            matched = (await conn.execute(with_events(held.returning(Node.id), events))).first()
        if matched is None:
            raise self._lock_lost(generation)
        return changes

    async def _write_held(self, s: Any, generation: int) -> dict[str, Any]:
        """The holder's save: the node's changed columns in one UPDATE conditioned on the lock (the
        fencing predicate costs nothing more than the ORM's own UPDATE by id); LockLost if it
        matched nothing. Returns the plain values written, to record as committed after the commit.
        """
        changes = self._changes()
        if not changes:
            await check_held(s, self.node_id, self.node_uuid, self.conductor.host, generation)
            return {}
        changes.setdefault("updated_at", utcnow())
        result = await s.execute(
            update(Node)
            .where(*held_by(self.node_id, self.conductor.host, generation))
            .values(**secrets.seal_columns(self.conductor.db, self.node_uuid, changes))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            await s.rollback()
            raise self._lock_lost(generation)
        return changes

    async def _check_held(self, s: Any) -> None:
        generation = self.generation
        if generation is not None:
            await check_held(s, self.node_id, self.node_uuid, self.conductor.host, generation)

    async def flush(self) -> None:
        """Write recorded events that no save has carried yet."""
        if self._events or self._outbound:
            events, self._events = self._events, []
            outbound, self._outbound = self._outbound, []
            async with self.conductor.db.write() as s:
                await self._check_held(s)
                if events:
                    await s.execute(insert(NODE_EVENTS), events)
                await self.conductor.observer.stage(s, outbound)
                await s.commit()
            self.conductor.observer.published(outbound)

    async def save(self) -> None:
        """Write the node's changes and the events recorded since the last save, in one transaction."""
        events, self._events = self._events, []
        outbound, self._outbound = self._outbound, []
        generation = self.generation
        written: dict[str, Any] = {}
        if generation is not None and one_statement_writes(self.conductor, outbound):
            written = await self._save_held_one_statement(generation, events)
        else:
            async with self.conductor.db.write() as s:
                if generation is None:
                    s.add(self.node)
                else:
                    written = await self._write_held(s, generation)
                if events:
                    await s.execute(insert(NODE_EVENTS), events)
                await self.conductor.observer.stage(s, outbound)
                await s.commit()
        for key, value in written.items():
            set_committed_value(self.node, key, value)
        if written:
            secrets.note_unreadable(self.node)
        if self.node.reservation is None:
            forget_generation(self.node)
        self.conductor.observer.published(outbound)
        if self.node.driver_internal_info.get("agent_command"):
            # An agent may be long-polling for this command in this process: wake it now.
            self.conductor.agent_wakeup(self.node.id)
        if self._new_boot:
            self._new_boot = False
            self.conductor.state_changed()

    def set_internal(self, **values: Any) -> None:
        if "agent_boot" in values and values["agent_boot"] != self.node.driver_internal_info.get(
            "agent_boot"
        ):
            self._new_boot = True
        self.node.driver_internal_info = updated_internal(self.node.driver_internal_info, values)

    async def transition(
        self,
        event: str,
        *,
        error: str | None = None,
        release: bool = False,
        message: str | None = None,
        save: bool = True,
    ) -> str:
        """Move the node along the state machine, save it and put the change on its timeline.

        `save=False` leaves the write to the next save, for a state that is passed straight through
        (deleting -> cleaning): the next save comes before anything is done to the machine, and a
        crash in between resumes the earlier state, whose work is safe to repeat.
        """
        old = self.node.provision_state
        new = states.advance(old, event)
        self.node.provision_state = new
        self.node.target_provision_state = states.target_of(new)
        self.node.provision_updated_at = utcnow()
        if error is not None:
            self.node.last_error = error
        if release:
            self.node.reservation = None
            self.exclusive = False
        text = message or f"{old} -> {new} ({event})"
        severity = "error" if error else "info"
        if error:
            text = f"{text}: {error}"
        await self.record("provisioning", text, severity)
        self.emit(self.conductor.observer.provision(self.node_uuid, self.node.name, old, new, event, error))
        if save:
            await self.save()
            self.conductor.state_changed()
        return new

    async def release(self) -> None:
        """Give the lock back, saving whatever the work changed on the node."""
        if self.node.reservation == self.conductor.host:
            self.node.reservation = None
        self.exclusive = False
        await self.save()


async def load_node(conductor: ConductorContext, ident: str) -> Node:
    async with conductor.db.read() as s:
        node: Node | None = await s.scalar(_by_ident(ident))
    if node is None:
        raise NotFound(f"Node {ident} could not be found.")
    return node


def _by_ident(ident: str) -> Any:
    column = Node.uuid if is_uuid(ident) else Node.name
    return select(Node).where(column == ident)


async def load_ports(conductor: ConductorContext, node_id: int) -> list[Port]:
    async with conductor.db.read() as s:
        return list((await s.scalars(select(Port).where(Port.node_id == node_id))).all())


async def reserve(
    conductor: ConductorContext,
    node: Node,
    values: dict[str, Any] | None = None,
    expect_state: str | None = None,
    event: tuple[str, str] | None = None,
    outbound: Sequence[Outbound] = (),
) -> None:
    """Take the node's lock, atomically applying `values` (and checking its state), or raise.

    One UPDATE both locks and writes the first change, so an API action costs one round trip before
    its 202, and two clients racing for one node cannot both win.
    """
    now = utcnow()
    changes = {"reservation": conductor.host, "updated_at": now, **(values or {})}
    stmt = update(Node).where(Node.id == node.id, Node.reservation.is_(None)).returning(Node.lock_generation)
    if expect_state is not None:
        stmt = stmt.where(Node.provision_state == expect_state)
    stored = secrets.seal_columns(conductor.db, node.uuid, changes)
    stmt = stmt.values(lock_generation=Node.lock_generation + 1, **stored)
    events = [event_row(node.id, event[0], event[1], "info", conductor.host)] if event is not None else []
    if one_statement_writes(conductor, outbound):
        # The lock, the first change and its event in one statement (one round trip on PostgreSQL).
        async with conductor.db.statement_conn() as conn:
            generation = (await conn.execute(with_events(stmt, events))).scalar()
    else:
        async with conductor.db.write() as s:
            generation = (await s.execute(stmt.execution_options(synchronize_session=False))).scalar()
            if generation is not None:
                if events:
                    await s.execute(insert(NODE_EVENTS), events)
                await conductor.observer.stage(s, outbound)
                await s.commit()
            else:
                await s.rollback()
    if generation is None:
        current = await load_node(conductor, node.uuid)
        if current.reservation is not None:
            raise NodeLocked(locked_message(current, current.reservation))
        raise NodeLocked(
            f"Node {node.uuid} changed state to {current.provision_state!r} while the request "
            "was handled; please retry."
        )
    conductor.observer.published(outbound)
    # The row now holds these values: record them as loaded, not as pending changes, or a later
    # save() that sets one back (reservation -> None) would look like "no change" and write nothing.
    for key, value in changes.items():
        set_committed_value(node, key, value)
    remember_generation(node, generation)


@asynccontextmanager
async def acquire(conductor: ConductorContext, ident: str, purpose: str) -> AsyncIterator[NodeTask]:
    """Exclusive lock for a short synchronous action (boot device, patch); released on every exit.

    An action that raises has its changes to the node dropped (nothing half-saved; what it recorded
    is kept); changes the database refuses on release are dropped too. Either way the lock goes back.
    """
    node = await load_node(conductor, ident)
    await reserve(conductor, node)
    task = NodeTask(conductor, node, None, purpose)
    try:
        yield task
    except BaseException:
        await give_back(task)
        raise
    try:
        await task.release()
    except BaseException:
        await give_back(task)
        raise


async def give_back(task: NodeTask) -> None:
    """Release the task's lock without saving the node's pending changes (they may be what failed).

    The events recorded so far are written first; a failure to write them is logged, and the lock is
    released all the same.
    """
    try:
        await task.flush()
    except Exception:
        log.exception("node %s: the events of %r could not be written", task.node_uuid, task.purpose)
    generation = task.generation
    if generation is not None:
        await unlock(task.conductor, task.node_id, generation)
        forget_generation(task.node)
    task.exclusive = False


async def unlock(conductor: ConductorContext, node_id: int, generation: int) -> bool:
    """Clear the node's lock if this conductor still holds it (that generation), in one UPDATE."""
    async with conductor.db.statement_conn() as conn:
        result = await conn.execute(
            update(Node)
            .where(*held_by(node_id, conductor.host, generation))
            .values(reservation=None, updated_at=utcnow())
        )
    return bool(result.rowcount)


async def shared_task(conductor: ConductorContext, ident: str, purpose: str) -> NodeTask:
    """A task without the lock, for reads such as validate or boot device get."""
    node = await load_node(conductor, ident)
    return NodeTask(conductor, node, None, purpose)


async def agent_last_seen(db: Database, node: Node) -> dt.datetime | None:
    """When the agent of the node's current ramdisk boot last called; None if none did in this boot."""
    boot = node.driver_internal_info.get("agent_boot")
    if not boot:
        return None
    async with db.read() as s:
        row = (
            await s.execute(
                select(AgentSession.last_seen).where(
                    AgentSession.node_id == node.id, AgentSession.boot_id == boot
                )
            )
        ).first()
    return None if row is None else _aware(row[0])


def _aware(when: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def age(when: dt.datetime | None, now: dt.datetime) -> float:
    if when is None:
        return float("inf")
    return (now - _aware(when)).total_seconds()
