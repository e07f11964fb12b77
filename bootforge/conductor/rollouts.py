"""Rolling re-provisioning: rebuild a set of active nodes with a new image, a batch at a time.

A rollout is a row in `rollouts` and runs in the conductor, not in the client that asked for it:
closing the terminal does not stop it, and a conductor that restarts (or, at start, finds a running
rollout whose conductor is gone) takes it back from the per-node record.

Per batch: the drain hook is called for each node in order (a failure stops the rollout: the nodes of
the batch already drained are undrained again, untouched, and nothing after them is touched); then
the drained nodes are rebuilt in parallel (Ironic's `rebuild` verb with instance_info.image_source set
to the rollout's image) and each is undrained as soon as it is `active` again. A rebuild that fails
counts against max_failures (the node is left drained, in its failed state, for the operator); an
undrain hook that fails stops the rollout after the batch. Every step goes on the node's timeline
(event type `rollout`).

Per node: pending -> draining -> rebuilding -> undraining -> done, or failed, or skipped: when its
turn comes, a node that was deleted, is no longer active, was put into maintenance or protected, or
is under way in another rollout is not drained at all (an operator who took it out of service meant
it; a fleet of hundreds changes while a rollout runs); skips do not count as failures. The status is saved
before each step, so a restart repeats at most the step that was under way: hooks must be idempotent
(draining a drained node is a no-op for any sane load balancer). A node found `rebuilding` is rebuilt
only if it did not change provision state since the rollout marked it (its provision_updated_at), so
a restart never rebuilds a node twice.

pause stops before the next node is drained (rebuilds under way finish, with their undrain); resume
goes on from the record (a rollout failed by a drain hook is resumable too: the node whose drain
failed is tried again).

abort ends the rollout for good: no node is drained or rebuilt any more; nodes drained but not yet
rebuilt are undrained, untouched (back to pending); rebuilds under way *finish* and are undrained,
and the rollout reads `aborting` until they have, then `aborted`. Why not cancel them as Ironic's
abort of `deploy wait` does (the node to `deploy failed`)? By then the node's disk is being
rewritten: its old OS is gone whatever abort does, so cancelling would only leave it drained without
any OS until someone redeploys it, while letting it finish puts it back in service in minutes. An
operator who wants the old image back runs a rollout with it. A conductor that stops meanwhile hands
an `aborting` rollout over like a running one, so its nodes are still finished and undrained.

Security: hooks are only the named ones of the configuration (settings.rollouts.hooks); the API names
one, it never passes a command or a URL, so API credentials do not give command execution on the
conductor host. A command hook gets a small environment (PATH, LANG and the node), not the
conductor's own (which may hold the database URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import signal
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import insert, select, update

from bootforge.conductor import states
from bootforge.conductor.task import event_row
from bootforge.db.models import NODE_EVENTS, Node, NodeTrait, Rollout, utcnow
from bootforge.db.queries import is_uuid
from bootforge.errors import BootforgeError, Conflict, InvalidInput, NodeLocked, NotFound
from bootforge.observe.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from bootforge.text import MESSAGE_LIMIT, printable

if TYPE_CHECKING:
    from bootforge.conductor.conductor import Conductor
    from bootforge.conductor.rollout_settings import RolloutHook, RolloutSettings

log = logging.getLogger("bootforge.rollouts")

RUNNING, PAUSED, ABORTING, ABORTED, FAILED, DONE = (
    "running",
    "paused",
    "aborting",
    "aborted",
    "failed",
    "done",
)
STATES = (RUNNING, PAUSED, ABORTING, ABORTED, FAILED, DONE)
# A rollout in these states may still drain, rebuild or undrain nodes: they are not free for another.
UNFINISHED = (RUNNING, PAUSED, ABORTING)
# A rollout in these states has a runner somewhere (a dead conductor's is taken over).
RUNNABLE = (RUNNING, ABORTING)
PENDING, DRAINING, REBUILDING, UNDRAINING, NODE_DONE, NODE_FAILED, SKIPPED = (
    "pending",
    "draining",
    "rebuilding",
    "undraining",
    "done",
    "failed",
    "skipped",
)
FINISHED = (NODE_DONE, NODE_FAILED, SKIPPED)
IN_FLIGHT = (DRAINING, REBUILDING, UNDRAINING)
SELECTOR_FIELDS = ("resource_class", "conductor_group", "name_prefix", "traits")
CREATE_FIELDS = {"selector", "image", "batch", "max_failures", "drain_hook", "undrain_hook"}
MAX_NODES = 5000  # per rollout: the per-node record is one JSON column
HOOK_OUTPUT = 512  # bytes of a failed command's stderr kept in the error
# Seconds a rebuild waits for a node another operation holds (a power sync, an operator's PATCH).
LOCK_WAIT = 120.0


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _now_iso() -> str:
    return utcnow().isoformat()


def batch_size(spec: Any, count: int) -> tuple[str, int]:
    """("N" or "P%", nodes per batch) from the request's `batch`, for `count` selected nodes."""
    text = str(spec).strip() if isinstance(spec, int | str) and not isinstance(spec, bool) else ""
    if text.endswith("%"):
        digits = text[:-1]
        if digits.isdigit() and 0 < int(digits) <= 100:
            return text, max(1, math.ceil(count * int(digits) / 100))
    elif text.isdigit() and int(text) > 0:
        return text, int(text)
    raise InvalidInput(
        f"batch must be a positive number of nodes or a percentage (1%-100%), got {spec!r}", "batch"
    )


class RolloutService:
    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self._runs: dict[int, asyncio.Task[None]] = {}
        # Rollouts resumed while their runner was still winding down: it goes on instead of ending.
        self._again: set[int] = set()
        # One writer of a rollout's per-node record at a time (a batch's nodes run in parallel).
        self._save_lock = asyncio.Lock()
        # Two requests of this process cannot both find a node free and both take it. Across
        # conductors the runner checks again at the node's turn (_ineligible).
        self._create_lock = asyncio.Lock()

    @property
    def settings(self) -> RolloutSettings:
        return self.conductor.settings.rollouts

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.take_over()

    async def take_over(self) -> None:
        """Run the running (and aborting) rollouts of this conductor (after a restart) and of
        conductors no longer alive (periodic, with the nodes' own takeover); one conditional UPDATE
        claims each, so of several conductors noticing the same dead one, one takes it."""
        live = set(await self.conductor.live_hosts()) - {self.conductor.host}
        async with self.db.read() as s:
            rows = (
                await s.execute(select(Rollout.id, Rollout.conductor).where(Rollout.state.in_(RUNNABLE)))
            ).all()
        for rid, owner in rows:
            if owner in live or rid in self._runs:
                continue
            same_owner = Rollout.conductor.is_(None) if owner is None else Rollout.conductor == owner
            async with self.db.write() as s:
                claimed = await s.execute(
                    update(Rollout)
                    .where(Rollout.id == rid, Rollout.state.in_(RUNNABLE), same_owner)
                    .values(conductor=self.conductor.host)
                )
                await s.commit()
            if claimed.rowcount:  # type: ignore[attr-defined]
                log.info("rollout %s resumed by %s (was %s)", rid, self.conductor.host, owner)
                self._spawn(rid)

    async def stop(self) -> None:
        runs = list(self._runs.values())
        for t in runs:
            t.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

    async def wait(self, ident: str, timeout: float = 60.0) -> dict[str, Any]:
        """The rollout once its runner in this conductor stopped (done, paused, aborted, failed)."""
        row = await self._row(ident)
        job = self._runs.get(row.id)
        if job is not None:
            await asyncio.wait_for(asyncio.shield(job), timeout)
        return await self.get(ident)

    def _spawn(self, rid: int) -> None:
        if rid in self._runs:
            self._again.add(rid)
            return
        job = asyncio.create_task(self._run(rid), name=f"rollout:{rid}")
        self._runs[rid] = job
        job.add_done_callback(lambda _t: self._runs.pop(rid, None))

    # --- API --------------------------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown attribute for rollout: {', '.join(unknown)}", unknown[0])
        selector = self._selector(body.get("selector") or {})
        image = body.get("image")
        if not isinstance(image, str) or not image.strip() or len(image) > 2048:
            raise InvalidInput(
                "image is required: a catalogue image name or UUID, or an http(s) URL", "image"
            )
        if not image.startswith(("http://", "https://")):
            try:
                await self.conductor.images.get(image)
            except NotFound:
                raise InvalidInput(
                    f"image {image!r} is neither in bootforge's image catalogue nor an http(s) URL", "image"
                ) from None
        max_failures = body.get("max_failures", 0)
        if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 0:
            raise InvalidInput("max_failures must be a number of nodes, 0 or more", "max_failures")
        hooks: dict[str, str | None] = {}
        for field in ("drain_hook", "undrain_hook"):
            name = body.get(field)
            if name is None:
                hooks[field] = None
                continue
            if not isinstance(name, str) or self.settings.hook(name) is None:
                known = ", ".join(h.name for h in self.settings.hooks) or "none configured"
                raise InvalidInput(
                    f"{field} {name!r} is not a hook of the configuration (rollouts.hooks: {known})", field
                )
            hooks[field] = name
        nodes = await self._select(selector)
        if not nodes:
            raise InvalidInput(
                "the selector matches no active node out of maintenance and not protected", "selector"
            )
        if len(nodes) > MAX_NODES:
            raise InvalidInput(f"the selector matches {len(nodes)} nodes, more than {MAX_NODES}", "selector")
        spec, size = batch_size(body.get("batch", 1), len(nodes))
        async with self._create_lock:
            return await self._insert(selector, image, spec, size, max_failures, hooks, nodes)

    async def _insert(
        self,
        selector: dict[str, Any],
        image: str,
        spec: str,
        size: int,
        max_failures: int,
        hooks: dict[str, str | None],
        nodes: list[Node],
    ) -> dict[str, Any]:
        busy = await self._busy({n.uuid for n in nodes})
        if busy:
            raise Conflict(
                f"node {busy[0]} is already in unfinished rollout {busy[1]}; abort it or wait for it"
            )
        row = Rollout(
            uuid=str(uuidlib.uuid4()),
            state=RUNNING,
            selector=selector,
            image=image,
            batch=spec,
            batch_size=size,
            max_failures=max_failures,
            failures=0,
            nodes=[
                {"id": n.id, "uuid": n.uuid, "name": n.name, "status": PENDING, "error": None, "times": {}}
                for n in nodes
            ],
            conductor=self.conductor.host,
            **hooks,
        )
        async with self.db.write() as s:
            s.add(row)
            await s.commit()
            rid = row.id
        self._spawn(rid)
        return await self.get(str(rid))

    @staticmethod
    def _selector(sel: Any) -> dict[str, Any]:
        if not isinstance(sel, dict):
            raise InvalidInput("selector must be an object", "selector")
        unknown = sorted(set(sel) - set(SELECTOR_FIELDS))
        if unknown:
            raise InvalidInput(
                f"unknown selector field {unknown[0]!r} (known: {', '.join(SELECTOR_FIELDS)}); "
                "provision_state is always active",
                f"selector.{unknown[0]}",
            )
        out: dict[str, Any] = {}
        for key in ("resource_class", "conductor_group", "name_prefix"):
            value = sel.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or len(value) > 255:
                raise InvalidInput(
                    f"selector.{key} must be a string of at most 255 characters", f"selector.{key}"
                )
            out[key] = value
        traits = sel.get("traits")
        if traits is not None:
            if (
                not isinstance(traits, list)
                or len(traits) > 50
                or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in traits)
            ):
                raise InvalidInput(
                    "selector.traits must be a list of at most 50 trait names", "selector.traits"
                )
            out["traits"] = traits
        return out

    async def _select(self, sel: dict[str, Any]) -> list[Node]:
        where: list[Any] = [
            Node.provision_state == states.ACTIVE,
            Node.maintenance.is_(False),
            Node.protected.is_(False),
        ]
        if "resource_class" in sel:
            where.append(Node.resource_class == sel["resource_class"])
        if "conductor_group" in sel:
            where.append(Node.conductor_group == sel["conductor_group"])
        if "name_prefix" in sel:
            where.append(Node.name.startswith(sel["name_prefix"], autoescape=True))
        for trait in sel.get("traits", []):
            where.append(Node.id.in_(select(NodeTrait.node_id).where(NodeTrait.trait == trait)))
        async with self.db.read() as s:
            stmt = select(Node).where(*where).order_by(Node.name, Node.id).limit(MAX_NODES + 1)
            return list((await s.scalars(stmt)).all())

    async def _busy(
        self, uuids: set[str], but: int | None = None, statuses: tuple[str, ...] | None = None
    ) -> tuple[str, str] | None:
        """(node, rollout) of the first of `uuids` that an unfinished rollout (not `but`) has not
        finished with (or, with `statuses`, has in one of them)."""
        async with self.db.read() as s:
            rows = (
                await s.execute(
                    select(Rollout.id, Rollout.uuid, Rollout.nodes).where(Rollout.state.in_(UNFINISHED))
                )
            ).all()
        for rid, ruuid, entries in rows:
            if rid == but:
                continue
            for e in entries:
                taken = e["status"] in statuses if statuses else e["status"] not in FINISHED
                if e["uuid"] in uuids and taken:
                    return e["name"] or e["uuid"], ruuid
        return None

    async def _row(self, ident: str) -> Rollout:
        row: Rollout | None = None
        if is_uuid(ident) or (ident.isdigit() and len(ident) < 12):
            where = Rollout.uuid == ident if is_uuid(ident) else Rollout.id == int(ident)
            async with self.db.read() as s:
                row = await s.scalar(select(Rollout).where(where))
        if row is None:
            raise NotFound(f"Rollout {ident} could not be found.")
        return row

    async def get(self, ident: str) -> dict[str, Any]:
        return view(await self._row(ident))

    async def list_all(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self.db.read() as s:
            rows = (await s.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(limit))).all()
        return [view(r) for r in rows]

    async def _set_state(self, ident: str, new: str, allowed: tuple[str, ...], **values: Any) -> Rollout:
        row = await self._row(ident)
        async with self.db.write() as s:
            done = await s.execute(
                update(Rollout)
                .where(Rollout.id == row.id, Rollout.state.in_(allowed))
                .values(state=new, **values)
            )
            await s.commit()
        if not done.rowcount:  # type: ignore[attr-defined]
            current = (await self._row(ident)).state
            raise Conflict(
                f"rollout {row.uuid} is {current}; it can be set {new} only when {' or '.join(allowed)}"
            )
        return row

    async def pause(self, ident: str) -> dict[str, Any]:
        await self._set_state(ident, PAUSED, (RUNNING,))
        return await self.get(ident)

    async def abort(self, ident: str) -> dict[str, Any]:
        """See the module docstring: nothing new is drained or rebuilt; rebuilds under way finish."""
        row = await self._row(ident)
        if row.state == PAUSED and not any(e["status"] in IN_FLIGHT for e in row.nodes):
            # A paused rollout whose runner has finished its batch: nothing left to wind down.
            await self._set_state(ident, ABORTED, (PAUSED,), finished_at=utcnow())
        else:
            await self._set_state(ident, ABORTING, (RUNNING, PAUSED))
            if row.conductor == self.conductor.host:
                self._spawn(row.id)  # a paused runner may be gone: wind down here
        return await self.get(ident)

    async def resume(self, ident: str) -> dict[str, Any]:
        row = await self._row(ident)
        if row.state == FAILED:
            # A node failed by its drain hook was never touched: it is tried again.
            entries = [
                {**e, "status": PENDING, "error": None}
                if e["status"] == NODE_FAILED and e.get("untouched")
                else e
                for e in row.nodes
            ]
            busy = await self._busy({e["uuid"] for e in entries if e["status"] not in FINISHED})
            if busy:
                raise Conflict(f"node {busy[0]} is now in unfinished rollout {busy[1]}")
            await self._set_state(
                ident,
                RUNNING,
                (FAILED,),
                nodes=entries,
                last_error=None,
                finished_at=None,
                conductor=self.conductor.host,
            )
        else:
            await self._set_state(ident, RUNNING, (PAUSED,), conductor=self.conductor.host)
        self._spawn(row.id)
        return await self.get(ident)

    # --- the runner -------------------------------------------------------------------------------

    async def _state(self, rid: int) -> str | None:
        async with self.db.read() as s:
            row = (await s.execute(select(Rollout.state, Rollout.conductor).where(Rollout.id == rid))).first()
        # A rollout resumed through another conductor is that one's to run: this runner stops.
        return row.state if row is not None and row.conductor == self.conductor.host else None

    async def _run(self, rid: int) -> None:
        while True:
            await self._run_once(rid)
            if rid not in self._again:
                return
            self._again.discard(rid)

    async def _run_once(self, rid: int) -> None:
        try:
            while True:
                async with self.db.read() as s:
                    row: Rollout | None = await s.scalar(select(Rollout).where(Rollout.id == rid))
                if row is None or row.conductor != self.conductor.host:
                    return
                if row.state == ABORTING:
                    await self._wind_down(_Run(row))
                    return
                if row.state != RUNNING:
                    return
                run = _Run(row)
                todo = [i for i, e in enumerate(run.entries) if e["status"] not in FINISHED]
                if not todo:
                    await self._finish(run, DONE, None)
                    return
                if not await self._batch(run, todo[: row.batch_size]):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("rollout %s stopped by an unexpected error", rid)
            with contextlib.suppress(Exception):
                async with self.db.write() as s:
                    await s.execute(
                        update(Rollout)
                        .where(Rollout.id == rid, Rollout.state.in_(RUNNABLE))
                        .values(
                            state=FAILED,
                            last_error=printable(f"internal error: {e}", MESSAGE_LIMIT),
                            finished_at=utcnow(),
                        )
                    )
                    await s.commit()

    async def _batch(self, run: _Run, batch: list[int]) -> bool:
        """One batch; False when the rollout stops here."""
        drained: list[int] = []
        for i in batch:
            e = run.entries[i]
            if e["status"] in (PENDING, DRAINING):
                if await self._state(run.id) != RUNNING:
                    break
                why = await self._ineligible(run, e) if e["status"] == PENDING else None
                if why:
                    await self._set(run, i, SKIPPED, error=why, severity="warning")
                    continue
                error = await self._hook(run, i, DRAINING, run.drain_hook, "drain")
                if error:
                    await self._set(run, i, NODE_FAILED, error=error, untouched=True)
                    # The batch's nodes drained before this one were not touched: back to service.
                    for j in drained:
                        back = await self._hook(run, j, PENDING, run.undrain_hook, "undrain")
                        if back:
                            await self._set(run, j, NODE_FAILED, error=back, untouched=True)
                    await self._finish(run, FAILED, f"drain hook failed on {_label(e)}: {error}")
                    return False
            drained.append(i)
        if drained and await self._state(run.id) == ABORTING:
            return True  # aborted while draining: the next round undrains them untouched
        if drained:
            await asyncio.gather(*(self._node(run, i) for i in drained))
        if run.hook_failure:
            await self._finish(run, FAILED, run.hook_failure)
            return False
        if run.failures > run.max_failures:
            await self._finish(
                run, FAILED, f"{run.failures} node(s) failed, more than max_failures {run.max_failures}"
            )
            return False
        return len(drained) == len(batch) or await self._state(run.id) == RUNNING

    async def _ineligible(self, run: _Run, e: dict[str, Any]) -> str | None:
        """Why a pending node is no longer to be drained and rebuilt (None: it is)."""
        node = await self._node_row(e["uuid"])
        if node is None:
            return "the node was deleted"
        if node.provision_state != states.ACTIVE:
            return f"the node is {node.provision_state}, no longer active"
        if node.maintenance:
            return f"the node is in maintenance ({node.maintenance_reason or 'no reason given'})"
        if node.protected:
            return "the node is protected"
        other = await self._busy({e["uuid"]}, but=run.id, statuses=IN_FLIGHT)
        if other:
            return f"the node is under way in rollout {other[1]}"
        return None

    async def _wind_down(self, run: _Run) -> None:
        """An aborted rollout: undrain the nodes drained but not rebuilt, finish the rebuilds under way
        (with their undrain), then end it `aborted`."""
        untouched = [i for i, e in enumerate(run.entries) if e["status"] == DRAINING]
        for i in untouched:
            error = await self._hook(run, i, PENDING, run.undrain_hook, "undrain")
            if error:
                await self._set(run, i, NODE_FAILED, error=error, untouched=True, severity="error")
            else:
                await self._set(run, i, PENDING, message="rollout aborted before its rebuild: undrained")
        under_way = [i for i, e in enumerate(run.entries) if e["status"] in (REBUILDING, UNDRAINING)]
        if under_way:
            await asyncio.gather(*(self._node(run, i) for i in under_way))
        error = run.hook_failure
        if run.failures:
            error = (error + "; " if error else "") + f"{run.failures} node(s) failed"
        await self._finish(run, ABORTED, error)

    async def _node(self, run: _Run, i: int) -> None:
        """Rebuild one drained node, wait for active, undrain it."""
        e = run.entries[i]
        if e["status"] in (PENDING, DRAINING, REBUILDING):
            error = await self._rebuild(run, i)
            if error:
                run.failures += 1
                await self._set(run, i, NODE_FAILED, error=error, severity="error")
                return
        error = await self._hook(run, i, UNDRAINING, run.undrain_hook, "undrain")
        if error:
            run.hook_failure = run.hook_failure or f"undrain hook failed on {_label(e)}: {error}"
            await self._set(run, i, NODE_FAILED, error=error, severity="error")
            return
        await self._set(run, i, NODE_DONE, message=f"rebuilt with {run.image} and back in service")

    async def _rebuild(self, run: _Run, i: int) -> str | None:
        from bootforge.conductor.service import NodeService

        e = run.entries[i]
        node = await self._node_row(e["uuid"])
        if node is None:
            return "the node was deleted"
        marked = e.get("rebuild_at")
        changed = (
            marked is not None
            and node.provision_updated_at is not None
            and _aware(node.provision_updated_at) > dt.datetime.fromisoformat(marked)
        )
        if not changed:
            if node.provision_state != states.ACTIVE:
                return f"node is {node.provision_state}, not active: not rebuilt"
            await self._set(
                run, i, REBUILDING, rebuild_at=_now_iso(), message=f"rebuilding with image {run.image}"
            )
            nodes = NodeService(self.conductor)
            patch = [{"op": "add", "path": "/instance_info/image_source", "value": run.image}]
            locked_until = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    await nodes.update(e["uuid"], patch)
                    await nodes.provision(e["uuid"], "rebuild", {})
                    break
                except NodeLocked as exc:
                    # Held for a moment by another operation (power sync, an operator): wait for it.
                    if time.monotonic() > locked_until:
                        return f"rebuild refused: {exc} (waited {LOCK_WAIT:.0f} s)"
                    await asyncio.sleep(self.settings.poll_interval)
                except BootforgeError as exc:
                    return f"rebuild refused: {exc}"
        deadline = time.monotonic() + self.settings.node_timeout
        while True:
            node = await self._node_row(e["uuid"])
            if node is None:
                return "the node was deleted during its rebuild"
            if node.provision_state == states.ACTIVE and node.reservation is None:
                return None
            if node.provision_state in states.FAILED_STATES:
                return f"rebuild failed ({node.provision_state}): {node.last_error or 'no error recorded'}"
            if time.monotonic() > deadline:
                limit = self.settings.node_timeout
                return f"not active {limit:.0f} s after the rebuild (state {node.provision_state})"
            await asyncio.sleep(self.settings.poll_interval)

    async def _node_row(self, uuid: str) -> Node | None:
        async with self.db.read() as s:
            node: Node | None = await s.scalar(select(Node).where(Node.uuid == uuid))
        return node

    async def _hook(self, run: _Run, i: int, status: str, name: str | None, phase: str) -> str | None:
        """Mark the node `status` and call the hook `name` (none: nothing to call); the error or None."""
        e = run.entries[i]
        await self._set(run, i, status, message=f"{phase} hook {name}" if name else None)
        if name is None:
            return None
        hook = self.settings.hook(name)
        if hook is None:
            return f"{phase} hook {name!r} is no longer in the configuration"
        started = time.monotonic()
        error = await run_hook(hook, phase, run.uuid, e["uuid"], e["name"] or "")
        took = time.monotonic() - started
        await self._event(
            e["id"],
            f"rollout {run.uuid}: {phase} hook {name} "
            + (f"failed after {took:.1f} s: {error}" if error else f"done in {took:.1f} s"),
            "error" if error else "info",
        )
        return error

    async def _set(
        self,
        run: _Run,
        i: int,
        status: str,
        *,
        message: str | None = None,
        severity: str = "info",
        **fields: Any,
    ) -> None:
        e = run.entries[i]
        times = {**e.get("times", {}), status: _now_iso()}
        run.entries[i] = {**e, "status": status, "times": times, **fields}
        async with self._save_lock, self.db.write() as s:
            await s.execute(
                update(Rollout)
                .where(Rollout.id == run.id)
                .values(nodes=[dict(x) for x in run.entries], failures=run.failures)
            )
            await s.commit()
        text = message or fields.get("error")
        if text or status in (NODE_DONE, NODE_FAILED):
            await self._event(
                e["id"], f"rollout {run.uuid}: {status}" + (f": {text}" if text else ""), severity
            )

    async def _event(self, node_id: int, message: str, severity: str) -> None:
        try:
            async with self.db.write() as s:
                await s.execute(
                    insert(NODE_EVENTS).values(
                        event_row(node_id, "rollout", message, severity, self.conductor.host)
                    )
                )
                await s.commit()
        except Exception:
            log.warning("could not record on node %s's timeline: %s", node_id, message, exc_info=True)

    async def _finish(self, run: _Run, state: str, error: str | None) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(Rollout)
                .where(Rollout.id == run.id, Rollout.state.in_(UNFINISHED))
                .values(
                    state=state,
                    last_error=printable(error, MESSAGE_LIMIT) if error else None,
                    failures=run.failures,
                    finished_at=utcnow(),
                )
            )
            await s.commit()
        log.info("rollout %s %s%s", run.uuid, state, f": {error}" if error else "")


class _Run:
    """A runner's copy of its rollout: the per-node record it alone writes."""

    def __init__(self, row: Rollout) -> None:
        self.id = row.id
        self.uuid = row.uuid
        self.image = row.image
        self.max_failures = row.max_failures
        self.failures = row.failures
        self.drain_hook = row.drain_hook
        self.undrain_hook = row.undrain_hook
        self.entries: list[dict[str, Any]] = [dict(e) for e in row.nodes]
        self.hook_failure: str | None = None


def _label(e: dict[str, Any]) -> str:
    return str(e.get("name") or e["uuid"])


def view(row: Rollout) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for e in row.nodes:
        counts[e["status"]] = counts.get(e["status"], 0) + 1

    def iso(t: dt.datetime | None) -> str | None:
        return _aware(t).isoformat() if t else None

    return {
        "id": row.id,
        "uuid": row.uuid,
        "state": row.state,
        "selector": row.selector,
        "image": row.image,
        "batch": row.batch,
        "batch_size": row.batch_size,
        "max_failures": row.max_failures,
        "failures": row.failures,
        "drain_hook": row.drain_hook,
        "undrain_hook": row.undrain_hook,
        "counts": counts,
        "nodes": [{k: e.get(k) for k in ("uuid", "name", "status", "error", "times")} for e in row.nodes],
        "last_error": row.last_error,
        "conductor": row.conductor,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "finished_at": iso(row.finished_at),
    }


# --- hooks ----------------------------------------------------------------------------------------


async def run_hook(hook: RolloutHook, phase: str, rollout: str, node_uuid: str, node_name: str) -> str | None:
    """Call one hook for one node; None on success, else what went wrong (no URL, no secret)."""
    if hook.command:
        return await _run_command(hook, phase, rollout, node_uuid, node_name)
    return await _post(hook, phase, rollout, node_uuid, node_name)


async def _run_command(
    hook: RolloutHook, phase: str, rollout: str, node_uuid: str, node_name: str
) -> str | None:
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env.update(
        BOOTFORGE_NODE_UUID=node_uuid,
        BOOTFORGE_NODE_NAME=node_name,
        BOOTFORGE_ROLLOUT=rollout,
        BOOTFORGE_HOOK_PHASE=phase,
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            *hook.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills what it started too
        )
    except OSError as e:
        return f"hook {hook.name}: cannot run {hook.command[0]!r}: {e.strerror or e}"

    async def tail() -> bytes:
        kept = b""
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            kept = (kept + chunk)[-HOOK_OUTPUT:]
        return kept

    try:
        err, code = await asyncio.wait_for(asyncio.gather(tail(), proc.wait()), hook.timeout)
    except (TimeoutError, asyncio.CancelledError) as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        return f"hook {hook.name} timed out after {hook.timeout:g} s and was killed"
    if code != 0:
        said = printable(err.decode(errors="replace").strip(), HOOK_OUTPUT)
        return f"hook {hook.name} exited with status {code}" + (f": {said}" if said else "")
    return None


async def _post(hook: RolloutHook, phase: str, rollout: str, node_uuid: str, node_name: str) -> str | None:
    body = json.dumps(
        {"rollout": rollout, "phase": phase, "node": {"uuid": node_uuid, "name": node_name}}, sort_keys=True
    ).encode()
    assert hook.secret is not None  # the settings refuse a url hook without one
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: sign(hook.secret.get_secret_value().encode(), stamp, body),
    }
    try:
        async with httpx.AsyncClient(timeout=hook.timeout, follow_redirects=False) as client:
            r = await asyncio.wait_for(client.post(hook.url, content=body, headers=headers), hook.timeout)
    except (httpx.HTTPError, TimeoutError) as e:
        return f"hook {hook.name}: POST failed ({type(e).__name__})"
    if not 200 <= r.status_code < 300:
        return f"hook {hook.name}: answered HTTP {r.status_code}"
    return None
