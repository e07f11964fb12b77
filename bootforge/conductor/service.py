"""NodeService: the verbs the API offers on nodes. Checks come first; nothing changes unless all pass.

Each action that changes a machine takes the node's lock and writes its first state change in one
conditional UPDATE, answers (the API returns 202), and leaves the rest to the conductor's background work.
"""

from __future__ import annotations

import asyncio
import functools
import re
import uuid as uuidlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from bootforge.conductor import patching, states, work
from bootforge.conductor.conductor import POWER_REQUEST, Conductor
from bootforge.conductor.task import (
    NodeTask,
    acquire,
    event_row,
    load_node,
    locked_message,
    reserve,
    shared_task,
)
from bootforge.config import ApiLimits
from bootforge.db import secrets
from bootforge.db.batch import BatchInserter
from bootforge.db.models import (
    NODE_EVENTS,
    NODES,
    Allocation,
    Node,
    NodeEvent,
    NodeTrait,
    Port,
    Portgroup,
    utcnow,
)
from bootforge.db.queries import is_uuid
from bootforge.drivers import base
from bootforge.drivers.hardware import INTERFACE_TYPES
from bootforge.errors import Conflict, Forbidden, InvalidInput, NodeLocked, NotFound
from bootforge.masking import mask_node_field

NAME_RE = re.compile(r"^[A-Za-z0-9\-._~]+$")
TRAIT_RE = re.compile(r"^[A-Z0-9_]+$")
# Ironic's rule for conductor groups (compared case-insensitively: stored lower-case).
GROUP_RE = re.compile(r"^[a-zA-Z0-9_\-.]{0,255}$")
MAX_TRAITS = 50

# Verbs refused while a node is in maintenance: they would drive a machine nobody should touch.
REFUSED_IN_MAINTENANCE = {"deploy", "rebuild", "provide", "clean", "inspect", "rescue", "unrescue", "adopt"}

JSON_FIELDS = ("driver_info", "properties", "extra", "instance_info", "network_data")
PATCHABLE = {
    "name",
    "driver",
    "driver_info",
    "properties",
    "extra",
    "instance_info",
    "instance_uuid",
    "resource_class",
    "description",
    "owner",
    "lessee",
    "conductor_group",
    "maintenance",
    "maintenance_reason",
    "protected",
    "protected_reason",
    "retired",
    "retired_reason",
    "automated_clean",
    "network_data",
    "chassis_uuid",
    *(f"{k}_interface" for k in INTERFACE_TYPES),
}
CREATABLE = PATCHABLE - {
    "maintenance",
    "maintenance_reason",
    "protected",
    "protected_reason",
    "retired",
    "retired_reason",
    "instance_uuid",
} | {"uuid"}
STRING_FIELDS = {
    "name",
    "driver",
    "resource_class",
    "description",
    "owner",
    "lessee",
    "conductor_group",
    "maintenance_reason",
    "protected_reason",
    "retired_reason",
    "instance_uuid",
    *(f"{k}_interface" for k in INTERFACE_TYPES),
}
BOOL_FIELDS = {"maintenance", "protected", "retired"}
# Columns the database refuses NULL in (JSON fields become {} instead).
NOT_NULL_FIELDS = {c.name for c in Node.__table__.columns if not c.nullable} & PATCHABLE


# Every column of a new node that the request does not set: the row create() returns is complete.
NEW_NODE: dict[str, Any] = {
    c.name: (c.default.arg if c.default is not None and not callable(c.default.arg) else None)
    for c in Node.__table__.columns
    if c.name not in ("id",)
}
NEW_NODE.update(
    {
        f: {}
        for f in (
            "driver_info",
            "driver_internal_info",
            "instance_info",
            "properties",
            "extra",
            "network_data",
            "raid_config",
            "target_raid_config",
            "clean_step",
            "deploy_step",
        )
    }
)


@dataclass
class BmcCheck:
    """The answer of NodeService.bmc_check: the node, its power/management validation, the report."""

    node: Node
    # The interfaces asked, by name: {"power": "ipmitool", "management": "ipmitool"}.
    interfaces: dict[str, str]
    validation: dict[str, dict[str, Any]]
    report: base.BmcReport
    seconds: float


class NodeService:
    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self._inserts = BatchInserter(
            self.db,
            NODES,
            events_table=NODE_EVENTS,
            events=self._events,
            encode=functools.partial(secrets.seal_row, self.db),
        )

    # --- create / update / delete -----------------------------------------------------------------

    async def create(self, body: dict[str, Any], *, enroll: bool = True) -> dict[str, Any]:
        """Enrol a node; returns its full row (enrolment is a hot path: a Core insert, no ORM object)."""
        unknown = sorted(set(body) - CREATABLE)
        if unknown:
            raise InvalidInput(f"Unknown attribute for argument node: {', '.join(unknown)}", unknown[0])
        if not body.get("driver"):
            raise InvalidInput("Mandatory field missing: 'driver'", "driver")
        values = self._checked_values(body)
        node_uuid = values.pop("uuid", None) or str(uuidlib.uuid4())
        if values.get("resource_class") is None:
            values["resource_class"] = self.conductor.settings.default_resource_class
        row = {
            **NEW_NODE,
            **values,
            "uuid": node_uuid,
            "created_at": utcnow(),
            "provision_state": states.ENROLL if enroll else states.AVAILABLE,
        }
        for f in JSON_FIELDS:
            if row.get(f) is None:
                row[f] = {}
        # Enrolment of many nodes at once is grouped into one transaction (db.batch); the unique
        # constraints on uuid and name are the check, with no look-up before the insert.
        async with _unique_violation("node", node_uuid, values.get("name")):
            return await self._inserts.insert(row)

    def _events(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        host = self.conductor.host
        return [
            event_row(r["id"], "provisioning", f"created in {r['provision_state']}", "info", host)
            for r in rows
        ]

    def _checked_values(self, body: dict[str, Any], node: Node | None = None) -> dict[str, Any]:
        values = dict(body)
        for field in STRING_FIELDS & set(values):
            if values[field] is not None and not isinstance(values[field], str):
                raise InvalidInput(f"{field} must be a string", field)
        for field in BOOL_FIELDS & set(values):
            if not isinstance(values[field], bool):
                raise InvalidInput(f"{field} must be true or false", field)
        for field in set(JSON_FIELDS) & set(values):
            if values[field] is not None and not isinstance(values[field], dict):
                raise InvalidInput(f"{field} must be an object", field)
        for field in (NOT_NULL_FIELDS - set(JSON_FIELDS)) & set(values):
            if values[field] is None:
                # Removing a field with a default resets it; one without (driver) cannot go.
                if NEW_NODE.get(field) is None:
                    raise InvalidInput(f"{field} cannot be removed or set to null", field)
                values[field] = NEW_NODE[field]
        if values.get("automated_clean") is not None and not isinstance(values["automated_clean"], bool):
            raise InvalidInput("automated_clean must be true, false or null", "automated_clean")
        if values.get("chassis_uuid") is not None:
            raise InvalidInput("bootforge has no chassis; chassis_uuid must be null", "chassis_uuid")
        values.pop("chassis_uuid", None)
        name = values.get("name")
        if name is not None and (not NAME_RE.match(name) or is_uuid(name)):
            raise InvalidInput(
                f"Cannot use {name!r} as a node name: use RFC 3986 unreserved characters "
                "(letters, digits, '-', '.', '_', '~') and not a UUID",
                "name",
            )
        if "uuid" in values and values["uuid"] is not None and not is_uuid(str(values["uuid"])):
            raise InvalidInput(f"Expected a UUID but received {values['uuid']}.", "uuid")
        if "conductor_group" in values:
            group = values["conductor_group"] or ""
            if not GROUP_RE.match(group):
                raise InvalidInput(
                    f"Invalid conductor_group {group[:64]!r}: at most 255 letters, digits, '_', '-' and '.'",
                    "conductor_group",
                )
            # The group picks the conductors that may own the node (conductor/ring.py).
            values["conductor_group"] = group.lower()
        rc = values.get("resource_class")
        if rc is not None and len(rc) > 80:
            raise InvalidInput("resource_class is longer than 80 characters", "resource_class")
        driver = values.get("driver") or (node.driver if node else None)
        if driver is not None:
            try:
                hw = self.conductor.drivers.get_type(driver)
            except NotFound as e:
                raise InvalidInput(f"Invalid driver: {e.message}", "driver") from None
            for kind in INTERFACE_TYPES:
                field = f"{kind}_interface"
                requested = values.get(field, getattr(node, field) if node else None)
                if "driver" in values and field not in values:
                    requested = None  # a new hardware type starts from its own defaults
                values[field] = self.conductor.drivers.resolve(hw, kind, requested)
        return values

    async def update(self, ident: str, patch: list[dict[str, Any]]) -> Node:
        async with acquire(self.conductor, ident, "update") as task:
            node = task.node
            doc = {f: getattr(node, f, None) for f in PATCHABLE if f != "chassis_uuid"}
            doc["chassis_uuid"] = None
            changed = self._apply_patch(doc, patch, self.conductor.settings.api_limits)
            self._check_patch_rules(node, changed)
            values = self._checked_values(changed, node) if changed else {}
            if "name" in changed and changed["name"] and changed["name"] != node.name:
                async with self.db.read() as s:
                    if await s.scalar(select(Node.id).where(Node.name == changed["name"])):
                        raise Conflict(f"A node with name {changed['name']} already exists.")
            for key, value in values.items():
                if key in JSON_FIELDS and value is None:
                    value = {}
                setattr(node, key, value)
            if changed:
                await task.record("update", f"updated {', '.join(sorted(changed))}")
        return node

    @staticmethod
    def _apply_patch(doc: dict[str, Any], patch: list[dict[str, Any]], limits: ApiLimits) -> dict[str, Any]:
        patch = patching.check_ops(patch, ("add", "replace", "remove", "test"), doc)
        for op in patch:
            path = op["path"]
            top = path.lstrip("/").split("/")[0]
            if op["op"] == "remove" and path.count("/") == 1:
                # Removing a top-level field resets it (to empty for JSON fields, null otherwise).
                doc[top] = {} if top in JSON_FIELDS else None
        rest = [p for p in patch if not (p["op"] == "remove" and p["path"].count("/") == 1)]
        # A `test` sees what GET shows (secrets masked): no patch can confirm a guessed password.
        patched = patching.apply(doc, rest, view=mask_node_field, limits=limits) if rest else dict(doc)
        originals = {f: doc.get(f) for f in doc}
        return {k: v for k, v in patched.items() if v != originals.get(k) or k in _removed(patch)}

    @staticmethod
    def _check_patch_rules(node: Node, changed: dict[str, Any]) -> None:
        if changed.get("protected") and node.provision_state != states.ACTIVE:
            raise InvalidInput("Protection can only be set on nodes in the active state", "protected")
        if (
            "protected_reason" in changed
            and changed["protected_reason"]
            and not (changed.get("protected", node.protected))
        ):
            raise InvalidInput("protected_reason needs protected=true", "protected_reason")
        if "instance_uuid" in changed and node.instance_uuid and changed["instance_uuid"]:
            raise Conflict(f"Node {node.uuid} already has instance_uuid {node.instance_uuid}.")
        if "driver" in changed and node.provision_state not in states.STABLE_STATES | states.FAILED_STATES:
            raise Conflict(f"Cannot change the driver of node {node.uuid} in state {node.provision_state}.")

    async def delete(self, ident: str) -> None:
        node = await load_node(self.conductor, ident)
        if node.protected:
            raise Forbidden(f"Node {node.uuid} is protected and cannot be undeployed, rebuilt or deleted")
        if node.provision_state not in states.DELETE_ALLOWED_STATES and not node.maintenance:
            raise Conflict(
                f"Can not delete node {node.uuid} while it is in provision state "
                f'"{node.provision_state}". Valid provision states to start deletion are: '
                f"{', '.join(sorted(states.DELETE_ALLOWED_STATES))}, or set the node to maintenance first."
            )
        async with self.db.write() as s:
            # Taking the lock and deleting in one transaction: a node busy with an action stays.
            locked = await s.execute(
                update(Node)
                .where(Node.id == node.id, Node.reservation.is_(None))
                .values(reservation=self.conductor.host)
            )
            if locked.rowcount != 1:  # type: ignore[attr-defined]
                holder = (await load_node(self.conductor, node.uuid)).reservation
                raise NodeLocked(locked_message(node, holder))
            await s.execute(delete(Port).where(Port.node_id == node.id))
            await s.execute(delete(Portgroup).where(Portgroup.node_id == node.id))
            await s.execute(delete(NodeTrait).where(NodeTrait.node_id == node.id))
            await s.execute(delete(NodeEvent).where(NodeEvent.node_id == node.id))
            if node.allocation_id is not None:
                await s.execute(delete(Allocation).where(Allocation.id == node.allocation_id))
            await s.execute(delete(Node).where(Node.id == node.id))
            await s.commit()

    # --- provisioning -----------------------------------------------------------------------------

    async def provision(self, ident: str, verb: str, body: dict[str, Any]) -> None:
        node = await load_node(self.conductor, ident)
        event = states.VERB_EVENTS[verb]
        old = node.provision_state
        if (old, event) not in states.TRANSITIONS:
            allowed = ", ".join(states.allowed_verbs(old)) or "none"
            raise Conflict(
                f'The requested action "{verb}" can not be performed on node "{node.uuid}" while it is '
                f'in state "{old}". Actions allowed in this state: {allowed}.'
            )
        if node.maintenance and event in REFUSED_IN_MAINTENANCE:
            raise InvalidInput(
                f"Node {node.uuid} is in maintenance mode ({node.maintenance_reason or 'no reason given'}); "
                f'the "{verb}" action is refused until maintenance is unset.',
                "target",
            )
        if node.protected and event in ("rebuild", "delete"):
            raise Forbidden(f"Node {node.uuid} is protected and cannot be undeployed, rebuilt or deleted")
        new = states.TRANSITIONS[(old, event)]
        task = NodeTask(self.conductor, node, [], verb)
        values = self._provision_values(task, event, body)
        values.update(
            provision_state=new,
            target_provision_state=states.target_of(new),
            provision_updated_at=utcnow(),
            last_error=None,
        )
        fn = work.RESUMABLE.get(new)
        if event == "abort":
            values["last_error"] = f"{verb} requested by the operator in state {old}"
        error = values.get("last_error")
        outbound = self.conductor.observer.provision(node.uuid, node.name, old, new, event, error)
        if fn is not None and not await self.conductor.runs_here(node):
            # Another conductor owns the node (conductor/ring.py), or this process runs no work
            # (serve --role api): the owner carries the action out (conductor/handoff.py).
            event_text = ("provisioning", f"{old} -> {new} ({verb})")
            await self.conductor.hand_off(node, values, expect_state=old, event=event_text, outbound=outbound)
            return
        await reserve(
            self.conductor,
            node,
            values,
            expect_state=old,
            event=("provisioning", f"{old} -> {new} ({verb})"),
            outbound=outbound,
        )
        if fn is None:
            await task.release()
            return
        self.conductor.spawn(task, fn)

    def _provision_values(self, task: NodeTask, event: str, body: dict[str, Any]) -> dict[str, Any]:
        node = task.node
        info = dict(node.driver_internal_info)
        values: dict[str, Any] = {}
        if event in ("deploy", "rebuild"):
            for kind in ("power", "management", "boot", "deploy"):
                _validate_iface(task, kind)
            requested = body.get("deploy_steps") or []
            if not isinstance(requested, list):
                raise InvalidInput("deploy_steps must be a list", "deploy_steps")
            steps = work.check_requested_steps(task, "deploy", requested)
            for key in ("deploy_steps", "deploy_step_index"):
                info.pop(key, None)
            info["requested_deploy_steps"] = steps
            instance_info = dict(node.instance_info)
            if body.get("configdrive") is not None:
                cd = body["configdrive"]
                if not isinstance(cd, str | dict):
                    raise InvalidInput("configdrive must be a string or an object", "configdrive")
                instance_info["configdrive"] = cd
            values["instance_info"] = instance_info
            values["deploy_step"] = {}
        elif event == "clean" and node.provision_state == states.MANAGEABLE:
            requested = body.get("clean_steps")
            if not requested:
                raise InvalidInput(
                    '"clean_steps" is required when setting target provision state to "clean"', "clean_steps"
                )
            if not isinstance(requested, list):
                raise InvalidInput("clean_steps must be a list", "clean_steps")
            info["clean_steps"] = work.check_requested_steps(task, "clean", requested)
            info["clean_step_index"] = 0
            info["clean_manual"] = True
        elif event in ("provide", "delete"):
            for key in ("clean_steps", "clean_step_index", "clean_manual"):
                info.pop(key, None)
        elif event == "inspect":
            _validate_iface(task, "inspect")
        elif event == "rescue":
            _validate_iface(task, "rescue")
            if not body.get("rescue_password"):
                raise InvalidInput('"rescue_password" is required for the rescue action', "rescue_password")
            values["instance_info"] = {**node.instance_info, "rescue_password": body["rescue_password"]}
        values["driver_internal_info"] = info
        return values

    async def power(self, ident: str, target: str, timeout: float | None) -> None:
        node = await load_node(self.conductor, ident)
        task = NodeTask(self.conductor, node, [], "power")
        supported = task.driver.power.get_supported_power_states(task)
        if target not in work.POWER_RESULT or target not in supported:
            raise InvalidInput(
                f"Invalid power target {target!r} for node {node.uuid}; supported: {', '.join(supported)}",
                "target",
            )
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise InvalidInput("timeout must be a positive number of seconds", "timeout")
        _validate_iface(task, "power")
        if not await self.conductor.runs_here(node):
            if node.provision_state in work.RESUMABLE:
                # Handed-off work not yet picked up by the owner holds the node as a lock would.
                raise NodeLocked(
                    f"Node {node.uuid} is {node.provision_state}, waiting for its conductor; please retry."
                )
            request = {"target": target, "timeout": timeout}
            info = {**node.driver_internal_info, POWER_REQUEST: request}
            await self.conductor.hand_off(
                node,
                {"target_power_state": work.POWER_RESULT[target], "driver_internal_info": info},
                expect_state=None,
                event=("power", f"{target} requested"),
                outbound=[],
            )
            return
        await reserve(
            self.conductor,
            node,
            {"target_power_state": work.POWER_RESULT[target]},
            event=("power", f"{target} requested"),
        )
        task.exclusive = True
        self.conductor.spawn(task, work.change_power, target, timeout)

    async def set_boot_device(self, ident: str, device: str, persistent: bool) -> None:
        if device not in base.BOOT_DEVICES:
            raise InvalidInput(
                f"Invalid boot device {device!r}; one of {', '.join(base.BOOT_DEVICES)}", "boot_device"
            )
        async with acquire(self.conductor, ident, "set boot device") as task:
            supported = task.driver.management.get_supported_boot_devices(task)
            if device not in supported:
                raise InvalidInput(
                    f"Boot device {device!r} is not supported by node {task.node.uuid}; supported: "
                    f"{', '.join(supported)}",
                    "boot_device",
                )
            await task.driver.management.set_boot_device(task, device, persistent)
            await task.record("management", f"boot device set to {device} (persistent={persistent})")

    async def get_boot_device(self, ident: str) -> dict[str, Any]:
        task = await shared_task(self.conductor, ident, "get boot device")
        return await task.driver.management.get_boot_device(task)

    async def supported_boot_devices(self, ident: str) -> list[str]:
        task = await shared_task(self.conductor, ident, "supported boot devices")
        return task.driver.management.get_supported_boot_devices(task)

    async def validate(self, ident: str) -> dict[str, dict[str, Any]]:
        task = await shared_task(self.conductor, ident, "validate")
        result: dict[str, dict[str, Any]] = {}
        for kind, iface in task.driver.interfaces.items():
            try:
                iface.validate(task)
            except InvalidInput as e:
                result[kind] = {"result": False, "reason": e.message}
            else:
                result[kind] = {"result": True, "reason": None}
        return result

    async def bmc_check(self, ident: str) -> BmcCheck:
        """What the node's BMC says about itself (`bootforge node bmc`), before anything is deployed.

        A read: no lock is taken, nothing is changed. Power and management are validated first, and a
        node whose driver_info cannot work is reported without contacting anything. The BMC's
        answer is bounded by settings.bmc_report_timeout; a BMC that does not give it in time, or
        cannot be reached, gives reachable=False with the reason, not an error.
        """
        task = await shared_task(self.conductor, ident, "bmc check")
        validation: dict[str, dict[str, Any]] = {}
        for kind in ("power", "management"):
            try:
                task.driver.interfaces[kind].validate(task)
            except InvalidInput as e:
                validation[kind] = {"result": False, "reason": e.message}
            else:
                validation[kind] = {"result": True, "reason": None}
        loop = asyncio.get_running_loop()
        began = loop.time()
        invalid = [f"{k}: {v['reason']}" for k, v in validation.items() if not v["result"]]
        if invalid:
            report = base.BmcReport(
                False, "not contacted, driver_info does not validate: " + "; ".join(invalid)
            )
        else:
            report = await self._bmc_report(task)
        interfaces = {k: task.driver.interfaces[k].name for k in ("power", "management")}
        return BmcCheck(task.node, interfaces, validation, report, loop.time() - began)

    async def _bmc_report(self, task: NodeTask) -> base.BmcReport:
        timeout = self.conductor.settings.bmc_report_timeout
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await task.driver.management.bmc_report(task)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                return base.BmcReport(
                    False, f"the BMC did not answer within {timeout:g} s (bmc_report_timeout)"
                )
            return base.BmcReport(False, f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}")

    async def set_maintenance(self, ident: str, on: bool, reason: str | None) -> None:
        node = await load_node(self.conductor, ident)
        text = f"maintenance {'set' if on else 'unset'}" + (f": {reason}" if on and reason else "")
        async with self.db.write() as s:
            row = await s.get(Node, node.id)
            if row is None:
                raise NotFound(f"Node {ident} could not be found.")
            row.maintenance = on
            row.maintenance_reason = reason if on else None
            if not on:
                row.fault = None
            await s.execute(
                insert(NODE_EVENTS), [event_row(node.id, "maintenance", text, "info", self.conductor.host)]
            )
            why = reason if on else None
            outbound = self.conductor.observer.maintenance(node.uuid, node.name, on, why, "operator")
            await self.conductor.observer.stage(s, outbound)
            await s.commit()
        self.conductor.observer.published(outbound)

    # --- traits -----------------------------------------------------------------------------------

    async def traits(self, ident: str) -> list[str]:
        node = await load_node(self.conductor, ident)
        async with self.db.read() as s:
            rows = await s.scalars(select(NodeTrait.trait).where(NodeTrait.node_id == node.id))
            return sorted(rows.all())

    async def set_traits(self, ident: str, traits: list[str], *, add: bool = False) -> None:
        if not isinstance(traits, list):
            raise InvalidInput("traits must be a list of strings", "traits")
        for t in traits:
            if not isinstance(t, str) or not TRAIT_RE.match(t) or len(t) > 255:
                raise InvalidInput(
                    f"Invalid trait {t!r}: use upper-case letters, digits and '_' (e.g. CUSTOM_GPU)", "traits"
                )
        node = await load_node(self.conductor, ident)
        current = set(await self.traits(ident))
        wanted = current | set(traits) if add else set(traits)
        if len(wanted) > MAX_TRAITS:
            raise InvalidInput(f"A node can have at most {MAX_TRAITS} traits", "traits")
        async with self.db.write() as s:
            await s.execute(delete(NodeTrait).where(NodeTrait.node_id == node.id))
            if wanted:
                await s.execute(
                    insert(NodeTrait),
                    [{"node_id": node.id, "trait": t, "created_at": utcnow()} for t in sorted(wanted)],
                )
            await s.commit()

    async def remove_trait(self, ident: str, trait: str | None) -> None:
        node = await load_node(self.conductor, ident)
        async with self.db.write() as s:
            stmt = delete(NodeTrait).where(NodeTrait.node_id == node.id)
            if trait is not None:
                stmt = stmt.where(NodeTrait.trait == trait)
            result = await s.execute(stmt)
            if trait is not None and result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(f"Node {node.uuid} does not have trait {trait}")
            await s.commit()


@asynccontextmanager
async def _unique_violation(kind: str, uuid: str, name: str | None) -> AsyncIterator[None]:
    """Turn a unique-constraint violation on insert into the 409 Ironic answers with."""
    try:
        yield
    except IntegrityError as e:
        text = str(e.orig).lower()
        if "name" in text and name:
            raise Conflict(f"A {kind} with name {name} already exists.") from None
        raise Conflict(f"A {kind} with UUID {uuid} already exists.") from None


def _validate_iface(task: NodeTask, kind: str) -> None:
    try:
        task.driver.interfaces[kind].validate(task)
    except InvalidInput as e:
        raise InvalidInput(
            f"Failed to validate {kind} interface of node {task.node.uuid}: {e.message}",
            e.field or f"{kind}_interface",
        ) from None


def _removed(patch: list[dict[str, Any]]) -> set[str]:
    return {str(p["path"]).lstrip("/").split("/")[0] for p in patch if p.get("op") == "remove"}
