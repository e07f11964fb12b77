"""The conductor's side of the deploy agent: lookup and token, the command long-poll, results.

The protocol (pull model: the agent opens every connection, so nothing listens on the machine):
1. lookup by MAC -> the node and a token, issued once per ramdisk boot (`agent_boot`);
2. long-poll for the node's current command (`driver_internal_info["agent_command"]`, set by a step);
3. post progress and the final outcome; a final outcome resumes the node from its next step.

The agent's calls write only `agent_sessions` and timeline events, never the node row: the conductor
may be rewriting that row under the node's lock at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from bootforge import boot_token
from bootforge.conductor import states, work
from bootforge.conductor.discovery import DiscoveryService
from bootforge.conductor.netboot import RAMDISK_STATES
from bootforge.conductor.ports import NEW_PORT
from bootforge.conductor.task import NodeTask, event_row, give_back, load_node, reserve
from bootforge.db.models import NODE_EVENTS, PORTS, AgentSession, Lease, Node, NodeInventory, Port, utcnow
from bootforge.db.queries import is_uuid
from bootforge.drivers.agent import AGENT_BOOT, AGENT_COMMAND
from bootforge.errors import BootforgeError, Conflict, InvalidInput, NodeLocked, NotAuthorized, NotFound
from bootforge.netboot.dhcp import LeaseState
from bootforge.text import printable

if TYPE_CHECKING:
    from bootforge.conductor.context import ConductorContext

log = logging.getLogger("bootforge.agent")

FINAL = ("succeeded", "failed")
# States in which a node's agent may be given a token: booting into or running the ramdisk, and with fast
# track, the stable states an agent idles in between operations.
FAST_TRACK_STATES = frozenset({states.MANAGEABLE, states.AVAILABLE})
PROGRESS_EVENT_EVERY = 30.0
# What every refused lookup answers (see AgentService.lookup), and how often a node's timeline is
# told the reason (per reason): strangers can ask as often as they like.
LOOKUP_REFUSED = (
    "bootforge does not expect an agent at these addresses now; the reason, if the addresses are "
    "a node's, is on that node's timeline"
)
LOOKUP_EVENT_EVERY = 60.0
MAX_LOOKUP_ADDRESSES = 64
ERROR_LIMIT = 500  # characters of an agent-reported error kept in last_error
GiB = 1024**3


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AgentService:
    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self._wakeups: dict[int, asyncio.Event] = {}
        self._progress_logged: dict[int, float] = {}
        self._refusals_logged: dict[tuple[int, str], float] = {}
        # Unknown machines' reports and the discovery rules, which also run on every inspection.
        self.discovery = DiscoveryService(conductor)

    # --- the agent's calls ------------------------------------------------------------------------

    async def lookup(
        self, addresses: list[str], node_ident: str | None, client: str, token_given: str | None = None
    ) -> dict[str, Any]:
        """The node these MACs belong to and a fresh token, if that node expects an agent now.

        The caller is not authenticated, so every refusal reads the same (LOOKUP_REFUSED) whether or
        not a node has these MACs: it must not tell a stranger which node a MAC is, nor its state.
        The operator finds the reason on the node's timeline.

        A MAC is no secret (it is in every frame the machine sends), so the caller must also show
        what only the machine booting the ramdisk has: the boot token of its boot configuration
        (bootforge/boot_token.py) and, when bootforge's DHCP leases the addresses, the address
        leased to the node. Both are checked before the 409 below, which would otherwise tell a
        stranger that the node runs its ramdisk.
        """
        node = await self._find(addresses, node_ident)
        if node is None:
            raise NotFound(LOOKUP_REFUSED)
        boot = str(node.driver_internal_info.get(AGENT_BOOT) or "")
        why: str | None
        if not boot or not self._expects_agent(node):
            why = f"the node is {node.provision_state}: bootforge does not expect an agent on it now"
        else:
            why = self._token_problem(node, boot, token_given) or await self._address_problem(node, client)
        if why is not None:
            await self._refused(node, f"agent lookup from {client} refused: {why}")
            raise NotFound(LOOKUP_REFUSED)
        token = secrets.token_urlsafe(32)
        now = utcnow()
        row = {
            "boot_id": boot,
            "token_hash": token_hash(token),
            "issued_at": now,
            "last_seen": now,
            "agent_address": client,
            "command_id": None,
            "command_status": None,
            "progress": {},
            "result": {},
            "error": None,
        }
        async with self.db.write() as s:
            current = await s.scalar(select(AgentSession.boot_id).where(AgentSession.node_id == node.id))
            if current == boot:
                raise Conflict(
                    "the agent token for these addresses was already issued for this boot; "
                    "reboot the machine into the ramdisk to get a new one"
                )
            # One row per node, replaced by each boot: delete + insert works the same on both databases.
            await s.execute(delete(AgentSession).where(AgentSession.node_id == node.id))
            await s.execute(insert(AgentSession).values(node_id=node.id, **row))
            await s.execute(
                insert(NODE_EVENTS),
                [event_row(node.id, "agent", f"agent looked up from {client}", "info", self.conductor.host)],
            )
            await s.commit()
        agent = self.conductor.settings.agent
        return {
            "node": {"uuid": node.uuid, "name": node.name, "properties": node.properties},
            "config": {
                "agent_token": token,
                "poll_timeout": agent.poll_timeout,
                "progress_interval": agent.progress_interval,
            },
        }

    async def next_command(self, ident: str, token: str | None, wait: float) -> dict[str, Any] | None:
        """The node's current command for the agent, waiting up to `wait` seconds for one."""
        node, session = await self._authorize(ident, token)
        await self._seen(node.id)
        deadline = time.monotonic() + max(0.0, min(wait, 120.0))
        event = self._wakeups.setdefault(node.id, asyncio.Event())
        while True:
            command = node.driver_internal_info.get(AGENT_COMMAND)
            if command and not (session.command_id == command["id"] and session.command_status in FINAL):
                return {"id": command["id"], "name": command["name"], "args": command.get("args", {})}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            event.clear()
            # Woken at once by a save in this process; another conductor's save is seen within 2 s.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(2.0, remaining))
            node, session = await self._authorize(ident, token)

    async def report(self, ident: str, token: str | None, command_id: str, body: dict[str, Any]) -> None:
        node, session = await self._authorize(ident, token)
        command = node.driver_internal_info.get(AGENT_COMMAND)
        if not command or command["id"] != command_id:
            raise Conflict(f"command {command_id} is not the current command of node {node.uuid}")
        status = body.get("status")
        if status not in ("running", *FINAL):
            raise InvalidInput("status must be 'running', 'succeeded' or 'failed'", "status")
        if session.command_id == command_id and session.command_status in FINAL:
            return  # a retried final report: the first one counted
        values: dict[str, Any] = {"last_seen": utcnow(), "command_id": command_id, "command_status": status}
        events: list[dict[str, Any]] = []
        if status == "running":
            raw = body.get("progress")
            progress: dict[str, Any] = raw if isinstance(raw, dict) else {}
            values["progress"] = progress
            if time.monotonic() - self._progress_logged.get(node.id, 0.0) >= PROGRESS_EVENT_EVERY:
                self._progress_logged[node.id] = time.monotonic()
                events.append(self._event(node, "agent", f"{command['name']}: {_progress_text(progress)}"))
        elif status == "succeeded":
            result = body.get("result")
            if not isinstance(result, dict):
                raise InvalidInput("a succeeded command needs a 'result' object", "result")
            check_result(command["name"], result)
            values["result"] = result
            events.append(self._event(node, "agent", f"{command['name']} succeeded{_result_text(result)}"))
        else:
            error = str(body.get("error") or "the agent gave no reason")[:4000]
            values["error"] = error
            events.append(self._event(node, "agent", f"{command['name']} failed: {error}", "error"))
        async with self.db.write() as s:
            await s.execute(update(AgentSession).where(AgentSession.node_id == node.id).values(**values))
            if events:
                await s.execute(insert(NODE_EVENTS), events)
            await s.commit()
        if status in FINAL:
            self._progress_logged.pop(node.id, None)
            await self.conductor.agent_reported(node.id)

    # --- resuming the node ------------------------------------------------------------------------

    async def resume(self, node_id: int) -> bool:
        """Carry on with a node whose agent reported the outcome of its command; False if not now.

        Safe to call any time: the node must wait for an agent, be unlocked, and its current command
        must have a final outcome. Called on the report, after work leaves a node waiting (the report
        may have come first) and by the periodic timeout check (a report taken by another conductor).
        """
        async with self.db.read() as s:
            node = await s.get(Node, node_id)
            session = await s.get(AgentSession, node_id)
        if node is None or session is None or node.provision_state not in states.WAIT_STATES:
            return False
        command = node.driver_internal_info.get(AGENT_COMMAND)
        if not command or session.command_id != command["id"] or session.command_status not in FINAL:
            return False
        try:
            await reserve(self.conductor, node, expect_state=node.provision_state)
        except NodeLocked:
            return False
        task = NodeTask(self.conductor, node, None, "agent result")
        task.set_internal(**{AGENT_COMMAND: None})
        try:
            await self._take_result(task, command, session)
        except Exception as exc:
            # Whatever went wrong (a result another conductor stored unchecked, a bug), the node
            # fails with the reason and its lock goes back: never a node locked until a restart.
            if isinstance(exc, BootforgeError):
                reason = exc.message
            else:
                log.exception("node %s: taking the agent's %s result failed", task.node_uuid, command["name"])
                reason = f"taking the agent's {command['name']} result failed: {type(exc).__name__}: {exc}"
            try:
                await task.transition("fail", error=reason, release=True)
            except Exception:
                log.exception("node %s: saving the failure failed; releasing the lock", task.node_uuid)
                await give_back(task)
        return True

    async def _take_result(self, task: NodeTask, command: dict[str, Any], session: AgentSession) -> None:
        name = command["name"]
        if session.command_status == "failed":
            # last_error is shown by clients as it is: what the agent said, escaped and bounded.
            error = f"the agent's {name} failed: {printable(session.error, ERROR_LIMIT)}"
            await task.transition("fail", error=error, release=True)
            return
        # Checked again here: the report may have been taken by a conductor that did not check it.
        check_result(name, session.result)
        if name == "inspect":
            await self._store_inventory(task, session.result)
            task.node.inspection_finished_at = utcnow()
            await task.driver.inspect.tear_down_inspection(task)
            await task.transition("done", release=True)
            return
        if name == "burnin":
            from bootforge.drivers import burnin

            # Kept on the node and judged against the step's thresholds: a miss fails the node.
            await burnin.take_result(task, command.get("args") or {}, session.result)
        task.set_internal(**{f"agent_{name}_result": _summary(session.result)})
        new = await task.transition("resume")
        fn = work.RESUMABLE.get(new)
        if fn is None:  # pragma: no cover - the table sends every wait state's resume to a working state
            raise BootforgeError(f"no work is defined for state {new}")
        self.conductor.spawn(task, fn)

    async def _store_inventory(self, task: NodeTask, result: dict[str, Any]) -> None:
        inventory = result.get("inventory")
        if not isinstance(inventory, dict):
            raise InvalidInput("the agent's inspection result has no inventory", "inventory")
        facts = inventory_properties(inventory, task.node.properties.get("root_device") or {})
        task.node.properties = {**task.node.properties, **facts}
        plugin = result.get("plugin_data") if isinstance(result.get("plugin_data"), dict) else {}
        async with self.db.write() as s:
            await s.execute(delete(NodeInventory).where(NodeInventory.node_id == task.node.id))
            await s.execute(
                insert(NodeInventory).values(
                    node_id=task.node.id, inventory=inventory, plugin_data=plugin, created_at=utcnow()
                )
            )
            await s.commit()
        added = await self._add_ports(task, inventory)
        await self.discovery.on_inspection(task, inventory)
        disks = ", ".join(
            f"{d.get('name')} {int(d.get('size') or 0) / GiB:.1f} GiB" for d in _disks(inventory)
        )
        await task.record(
            "inspection",
            f"{facts.get('cpus')} CPUs, {facts.get('memory_mb')} MiB, disks: {disks or 'none'}"
            + (f"; ports created: {', '.join(added)}" if added else ""),
        )

    async def _add_ports(self, task: NodeTask, inventory: dict[str, Any]) -> list[str]:
        mode = self.conductor.settings.agent.inspection_add_ports
        if mode == "none":
            return []
        pxe = str((inventory.get("boot") or {}).get("pxe_interface") or "").lower()
        macs = []
        for nic in inventory.get("interfaces") or []:
            mac = str(nic.get("mac_address") or "").lower() if isinstance(nic, dict) else ""
            if mac and (mode == "all" or mac == pxe):
                macs.append(mac)
        if not macs:
            return []
        async with self.db.write() as s:
            known = set((await s.scalars(select(Port.address).where(Port.address.in_(macs)))).all())
            new = [m for m in dict.fromkeys(macs) if m not in known]
            if new:
                now = utcnow()
                rows = [_port_row(task.node.id, mac, now) for mac in new]
                await s.execute(insert(PORTS), rows)
                await s.commit()
        return new

    # --- helpers ----------------------------------------------------------------------------------

    def wakeup(self, node_id: int) -> None:
        event = self._wakeups.get(node_id)
        if event is not None:
            event.set()

    def _token_problem(self, node: Node, boot: str, given: str | None) -> str | None:
        """Why `given` is not the boot token of the node's current ramdisk boot, or None if it is."""
        if not self.conductor.settings.agent.require_boot_token:
            return None
        if not given:
            return (
                "it sent no boot token (a ramdisk built before bootforge required one? rebuild it with "
                "`bootforge ramdisk build`)"
            )
        expected = boot_token.for_boot(self.conductor.settings.secret_key_path, node.uuid, boot)
        if not boot_token.matches(expected, given):
            return "its boot token is wrong (not the one of the node's current ramdisk boot)"
        return None

    async def _address_problem(self, node: Node, client: str) -> str | None:
        """With bootforge's DHCP in full mode, why `client` is not an address leased to the node.

        A node that network-boots the ramdisk got its address from bootforge, so it must have a
        current lease. A node booted from virtual media may have set a static address (and has no
        lease): it is bound to its lease if it has one, else protected by the boot token alone. In
        proxy mode or with DHCP off, bootforge leases nothing and only the token protects; so too
        over IPv6 (dual stack), where the ramdisk's address is its own SLAAC one, leased by nobody.
        """
        if self.conductor.settings.netboot.dhcp != "full":
            return None
        if ":" in client and not client.lower().startswith("::ffff:"):
            return None
        async with self.db.read() as s:
            macs = list((await s.scalars(select(Port.address).where(Port.node_id == node.id))).all())
            bound = (Lease.state == LeaseState.BOUND.value) & (Lease.expires > time.time())
            leased = set((await s.scalars(select(Lease.ip).where(Lease.mac.in_(macs), bound))).all())
        if client in leased:
            return None
        if leased:
            return (
                "it came from an address that is not the address bootforge's DHCP leased to the node "
                f"({', '.join(sorted(leased))})"
            )
        if self.conductor.drivers.boots_from_network(node.driver, node.boot_interface):
            return "the node network-boots, but bootforge's DHCP has no current DHCP lease for its MACs"
        return None

    def _expects_agent(self, node: Node) -> bool:
        if node.provision_state in RAMDISK_STATES:
            return True
        return self.conductor.settings.agent.fast_track and node.provision_state in FAST_TRACK_STATES

    async def _find(self, addresses: list[str], node_ident: str | None) -> Node | None:
        """The one node with a port for these MACs (and named `node_ident`, if given), or None."""
        macs = [a.strip().lower() for a in addresses if a.strip()]
        if not macs:
            raise InvalidInput("addresses must name at least one MAC address", "addresses")
        if len(macs) > MAX_LOOKUP_ADDRESSES:
            raise InvalidInput(f"addresses may name at most {MAX_LOOKUP_ADDRESSES} MACs", "addresses")
        async with self.db.read() as s:
            node_ids = set((await s.scalars(select(Port.node_id).where(Port.address.in_(macs)))).all())
        if node_ident:
            try:
                node = await load_node(self.conductor, node_ident)
            except NotFound:
                return None
            return node if node.id in node_ids else None
        if len(node_ids) != 1:
            return None
        async with self.db.read() as s:
            found: Node | None = await s.get(Node, node_ids.pop())
        return found

    async def _refused(self, node: Node, text: str) -> None:
        """Put a refused lookup on the node's timeline, at most once per LOOKUP_EVENT_EVERY per reason."""
        key = (node.id, text.split(": ", 1)[-1])
        now = time.monotonic()
        if now - self._refusals_logged.get(key, -LOOKUP_EVENT_EVERY) < LOOKUP_EVENT_EVERY:
            return
        if len(self._refusals_logged) > 10_000:
            self._refusals_logged.clear()
        self._refusals_logged[key] = now
        async with self.db.write() as s:
            await s.execute(insert(NODE_EVENTS), [self._event(node, "agent", text, "warning")])
            await s.commit()

    async def _authorize(self, ident: str, token: str | None) -> tuple[Node, AgentSession]:
        if not is_uuid(ident):
            raise NotFound(f"Node {ident} could not be found (the agent uses the node's UUID).")
        node = await load_node(self.conductor, ident)
        async with self.db.read() as s:
            session = await s.get(AgentSession, node.id)
        boot = node.driver_internal_info.get(AGENT_BOOT)
        if (
            token is None
            or session is None
            or session.boot_id != boot
            or not hmac.compare_digest(session.token_hash, token_hash(token))
        ):
            raise NotAuthorized(
                f"the agent token is not valid for the current ramdisk boot of node {node.uuid}"
            )
        return node, session

    async def _seen(self, node_id: int) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(AgentSession).where(AgentSession.node_id == node_id).values(last_seen=utcnow())
            )
            await s.commit()

    def _event(self, node: Node, kind: str, text: str, severity: str = "info") -> dict[str, Any]:
        return event_row(node.id, kind, text, severity, self.conductor.host)


# The parts of an inspection inventory bootforge reads, with their types (None is allowed for each):
# {field: type} for objects, [{...}] for lists of objects.
INVENTORY_SHAPE: dict[str, Any] = {
    "cpu": {"count": int, "architecture": str},
    "memory": {"physical_mb": int, "total": int},
    "disks": [{"name": str, "size": int}],
    "interfaces": [{"name": str, "mac_address": str}],
    "boot": {"pxe_interface": str, "current_boot_mode": str},
}
RESULT_SHAPE: dict[str, Any] = {"root_device": str, "disks": [{"name": str}]}


def check_result(command: str, result: dict[str, Any]) -> None:
    """A command's result has the types the conductor reads from it, or InvalidInput naming the field."""
    _check_shape(result, RESULT_SHAPE, "result")
    for key in ("bytes_written", "bytes_zeroed"):
        _check_type(result.get(key), int, f"result.{key}")
    _check_type(result.get("seconds"), int | float, "result.seconds")
    if command == "inspect":
        inventory = result.get("inventory")
        if not isinstance(inventory, dict):
            raise InvalidInput("an inspect result needs an 'inventory' object", "result.inventory")
        _check_shape(inventory, INVENTORY_SHAPE, "result.inventory")
        _check_type(result.get("plugin_data"), dict, "result.plugin_data")


def _check_shape(value: dict[str, Any], shape: dict[str, Any], where: str) -> None:
    for key, expected in shape.items():
        item = value.get(key)
        if item is None:
            continue
        here = f"{where}.{key}"
        if isinstance(expected, dict):
            _check_type(item, dict, here)
            _check_shape(item, expected, here)
        elif isinstance(expected, list):
            _check_type(item, list, here)
            for i, element in enumerate(item):
                _check_type(element, dict, f"{here}[{i}]")
                _check_shape(element, expected[0], f"{here}[{i}]")
        else:
            _check_type(item, expected, here)


def _check_type(value: Any, expected: Any, where: str) -> None:
    names = {int: "an integer", str: "a string", dict: "an object", list: "a list"}
    # bool is an int to Python, never to an inventory.
    if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
        wanted = names.get(expected, "a number")
        raise InvalidInput(f"{where} must be {wanted}, not {type(value).__name__}", where)


def inventory_properties(inventory: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """Ironic's scheduling properties from an inventory: cpus, memory_mb, local_gb, cpu_arch."""
    facts: dict[str, Any] = {}
    cpu = inventory.get("cpu") or {}
    if isinstance(cpu.get("count"), int):
        facts["cpus"] = cpu["count"]
    if cpu.get("architecture"):
        facts["cpu_arch"] = str(cpu["architecture"])
    memory = inventory.get("memory") or {}
    if isinstance(memory.get("physical_mb"), int) and memory["physical_mb"] > 0:
        facts["memory_mb"] = memory["physical_mb"]
    elif isinstance(memory.get("total"), int):
        facts["memory_mb"] = memory["total"] // 1024**2
    disks = _disks(inventory)
    named = [d for d in disks if hints.get("name") and d.get("name") == hints["name"]]
    # Like Ironic: the root disk is the one the hints name, else the smallest disk of at least 4 GiB.
    candidates = named or [d for d in disks if int(d.get("size") or 0) >= 4 * GiB] or disks
    if candidates:
        root = min(candidates, key=lambda d: int(d.get("size") or 0))
        # One GiB kept back for the partition table and the config drive, as Ironic does.
        facts["local_gb"] = max(0, int(root.get("size") or 0) // GiB - 1)
    return facts


def _disks(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in inventory.get("disks") or [] if isinstance(d, dict)]


def _port_row(node_id: int, mac: str, now: Any) -> dict[str, Any]:
    row = {**NEW_PORT, "uuid": str(uuidlib.uuid4()), "address": mac, "node_id": node_id, "created_at": now}
    return {**row, "extra": {"created_by": "inspection"}}


def _progress_text(progress: dict[str, Any]) -> str:
    done, total = progress.get("done"), progress.get("total")
    text = str(progress.get("message") or "running")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        text += f" ({done * 100 // total} %"
        # Byte counts (image writes, full erases) read better with their size; step counts do not.
        text += f", {done / 1024**2:.0f} of {total / 1024**2:.0f} MiB)" if total >= 1024**2 else ")"
    return text


def _result_text(result: dict[str, Any]) -> str:
    parts = []
    if result.get("root_device"):
        parts.append(f"root device {result['root_device']}")
    if isinstance(result.get("bytes_written"), int):
        parts.append(f"{result['bytes_written'] / 1024**2:.0f} MiB written")
    if isinstance(result.get("bytes_zeroed"), int):
        parts.append(f"{result['bytes_zeroed'] / 1024**2:.0f} MiB zeroed")
    if result.get("checksum"):
        parts.append(f"{result.get('checksum_algo', 'checksum')} {result['checksum']}")
    if isinstance(result.get("seconds"), int | float):
        parts.append(f"in {result['seconds']:.1f} s")
    if isinstance(result.get("disks"), list):
        parts.append("disks " + ", ".join(str(d.get("name")) for d in result["disks"] if isinstance(d, dict)))
    return f": {', '.join(parts)}" if parts else ""


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """What a node keeps of a command's result (small values only)."""
    return {k: v for k, v in result.items() if isinstance(v, str | int | float | bool) or v is None}
