"""Discovery: unknown machines on the discovery subnets boot the ramdisk, report, and are enrolled.

Trust rule (what a discovery report must show; everything else gets the same 404):
- discovery is on and the report comes from an address inside `discovery.subnets`; with bootforge's
  DHCP in full mode, from the address bootforge leased to the reported MAC;
- the MAC's discovery boot token: HMAC-SHA256 under the "discovery-boot-token" subkey of the conductor's
  key over (MAC, boot id), where the boot id (issue time + random) was put with the token on the kernel
  command line of the script handed to that MAC; valid for `discovery.token_ttl` seconds. A token is
  worth one MAC: it can enrol that MAC and nothing else, and a MAC that is already a port is never
  re-enrolled (the same boot's retry gets the same answer, any other report 409);
- reports that change the database (a new node, or ports added to a node by serial) are accepted at most
  `max_enrolments_per_minute` per conductor (429 beyond, the agent retries); one report adds at most
  MAX_PORTS_PER_REPORT ports; the inventory is bounded in bytes and list lengths and checked for the
  types bootforge reads;
- one node per serial (machine_serials, primary key): a rediscovered serial adds the new MACs to the
  existing node as ports with pxe_enabled false (a stranger cannot claim a known serial and be handed
  that node's boot configuration) and says so on its timeline; the node is otherwise left alone.
Known nodes keep their own per-boot token rule (bootforge/boot_token.py): nothing here touches it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
import time
import uuid as uuidlib
from collections import deque
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from bootforge.conductor import discovery_rules as rules
from bootforge.conductor.discovery_boot import MAC_RE, token_for
from bootforge.conductor.ports import NEW_PORT
from bootforge.conductor.task import event_row
from bootforge.db.models import (
    NODE_EVENTS,
    PORTS,
    DiscoveryRule,
    Lease,
    MachineSerial,
    Node,
    NodeInventory,
    NodeTrait,
    Port,
    utcnow,
)
from bootforge.errors import BootforgeError, Conflict, InvalidInput, NotFound
from bootforge.keys import SecretKey, load_or_create
from bootforge.netboot.dhcp import LeaseState
from bootforge.text import printable

if TYPE_CHECKING:
    from bootforge.conductor.context import ConductorContext

REFUSED = "bootforge does not expect a discovery report from this address now"
BOOT_ID_RE = re.compile(r"^([0-9]{10})\.([0-9a-f]{16})$")
MAX_RULES = 200
# Ports one report may add (the booting NIC first): a machine has a handful of NICs.
MAX_PORTS_PER_REPORT = 16
# Serial numbers that vendors ship unset: never a machine's identity.
JUNK_SERIALS = frozenset(
    {"", "0", "none", "n/a", "na", "not specified", "not available", "to be filled by o.e.m.",
     "default string", "system serial number", "0123456789", "123456789", "serial", "unknown"}
)  # fmt: skip


class TooManyEnrolments(BootforgeError):
    http_status = 429


# --- discovery boot tokens ------------------------------------------------------------------------


def token_problem(key: SecretKey, mac: str, boot_id: str, token: str, ttl: float, now: float) -> str | None:
    """Why (mac, boot_id, token) is not a valid discovery boot, or None."""
    found = BOOT_ID_RE.match(boot_id)
    if found is None:
        return "the boot id is malformed"
    age = now - int(found.group(1))
    if age > ttl or age < -60:
        return f"the discovery boot is {age:.0f} s old (token_ttl {ttl:g} s)"
    if len(token) != 64 or not hmac.compare_digest(token_for(key, mac, boot_id).encode(), token.encode()):
        return "the discovery token is wrong for this MAC and boot"
    return None


def clean_serial(inventory: dict[str, Any]) -> str | None:
    vendor = inventory.get("system_vendor")
    serial = vendor.get("serial_number") if isinstance(vendor, dict) else None
    if not isinstance(serial, str):
        return None
    serial = serial.strip()[:255]
    return None if serial.lower() in JUNK_SERIALS else serial


def check_inventory_bounds(inventory: Any, max_bytes: int, max_items: int) -> dict[str, Any]:
    if not isinstance(inventory, dict):
        raise InvalidInput("inventory must be an object", "inventory")
    if len(json.dumps(inventory, separators=(",", ":"))) > max_bytes:
        raise InvalidInput(f"inventory is larger than {max_bytes} bytes", "inventory")
    for key in ("interfaces", "disks"):
        items = inventory.get(key)
        if isinstance(items, list) and len(items) > max_items:
            raise InvalidInput(f"inventory.{key} has more than {max_items} entries", f"inventory.{key}")
    from bootforge.conductor.agent import check_result  # agent.py holds this service

    check_result("inspect", {"inventory": inventory})
    bmc = inventory.get("bmc_address")
    if bmc is not None:
        try:
            ipaddress.ip_address(str(bmc))
        except ValueError:
            raise InvalidInput(
                "inventory.bmc_address must be an IP address", "inventory.bmc_address"
            ) from None
    return inventory


# --- rules in the database ------------------------------------------------------------------------


def rule_view(r: DiscoveryRule) -> dict[str, Any]:
    return {
        "uuid": r.uuid,
        "name": r.name,
        "description": r.description,
        "priority": r.priority,
        "match": r.match,
        "conditions": r.conditions,
        "actions": r.actions,
        "created_at": r.created_at.isoformat() if r.created_at else None,
        "updated_at": r.updated_at.isoformat() if r.updated_at else None,
    }


class DiscoveryService:
    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self._lock = asyncio.Lock()
        self._enrolled: deque[float] = deque()
        self._key: SecretKey | None = None
        self.counts = {"enrolled": 0, "merged": 0, "refused": 0, "rate_limited": 0}
        self.last_refusal: str | None = None

    @property
    def settings(self) -> Any:
        return self.conductor.settings.discovery

    def key(self) -> SecretKey:
        if self._key is None:
            self._key = load_or_create(self.conductor.settings.secret_key_path)
        return self._key

    # --- rules ------------------------------------------------------------------------------------

    async def create_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        rule = rules.check_rule(body)
        given = body.get("uuid")
        if given is not None:
            try:
                given = str(uuidlib.UUID(str(given)))
            except ValueError:
                raise InvalidInput(f"uuid {given!r} is not a UUID", "uuid") from None
        async with self.db.write() as s:
            count = len((await s.scalars(select(DiscoveryRule.id))).all())
            if count >= MAX_RULES:
                raise Conflict(f"there are already {MAX_RULES} discovery rules, the most bootforge keeps")
            row = DiscoveryRule(uuid=given or str(uuidlib.uuid4()), **rule)
            s.add(row)
            try:
                await s.commit()
            except IntegrityError:
                raise Conflict(
                    f"a discovery rule named {rule['name']!r} or with uuid {given} already exists"
                ) from None
            await s.refresh(row)
            return rule_view(row)

    async def list_rules(self) -> list[dict[str, Any]]:
        async with self.db.read() as s:
            rows = (await s.scalars(select(DiscoveryRule).order_by(DiscoveryRule.id))).all()
        return rules.order([rule_view(r) for r in rows])

    async def get_rule(self, ident: str) -> dict[str, Any]:
        async with self.db.read() as s:
            row = await s.scalar(select(DiscoveryRule).where(self._ident(ident)))
        if row is None:
            raise NotFound(f"discovery rule {ident} could not be found")
        return rule_view(row)

    async def delete_rule(self, ident: str) -> None:
        async with self.db.write() as s:
            result = await s.execute(delete(DiscoveryRule).where(self._ident(ident)))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(f"discovery rule {ident} could not be found")
            await s.commit()

    @staticmethod
    def _ident(ident: str) -> Any:
        return (DiscoveryRule.uuid == ident) | (DiscoveryRule.name == ident)

    async def plan(self, inventory: dict[str, Any]) -> rules.Plan:
        return rules.plan(await self.list_rules(), inventory)

    async def status(self) -> dict[str, Any]:
        s = self.settings
        async with self.db.read() as session:
            count = len((await session.scalars(select(DiscoveryRule.id))).all())
        return {
            "enabled": s.enabled,
            "subnets": s.subnets,
            "driver": s.driver,
            "max_enrolments_per_minute": s.max_enrolments_per_minute,
            "rules": count,
            "counts": dict(self.counts),
            "last_refusal": self.last_refusal,
        }

    # --- the ramdisk's report ----------------------------------------------------------------------

    async def report(self, body: dict[str, Any], client: str) -> dict[str, Any]:
        """Enrol (or merge by serial) the machine that booted a discovery ramdisk; see the module doc."""
        s = self.settings
        if not s.allows(client):
            self._refused(client, "not from an address inside discovery.subnets")
            raise NotFound(REFUSED)
        mac = str(body.get("mac") or "").strip().lower()
        boot_id = str(body.get("boot_id") or "")
        token = str(body.get("token") or "")
        if not MAC_RE.match(mac):
            raise InvalidInput("mac must be the booting NIC's MAC (aa:bb:cc:dd:ee:ff)", "mac")
        why = token_problem(self.key(), mac, boot_id, token, s.token_ttl, time.time())
        if why is None:
            why = await self._address_problem(mac, client)
        if why is not None:
            self._refused(client, why)
            raise NotFound(REFUSED)
        inventory = check_inventory_bounds(
            body.get("inventory"), s.max_inventory_bytes, s.max_inventory_items
        )
        async with self._lock:
            return await self._enrol(mac, boot_id, inventory, client)

    def _refused(self, client: str, why: str) -> None:
        # Strangers all get the same 404; the operator sees the last reason in `discovery status`.
        self.counts["refused"] += 1
        self.last_refusal = printable(f"{client}: {why}", 300)

    async def _address_problem(self, mac: str, client: str) -> str | None:
        if self.conductor.settings.netboot.dhcp != "full":
            return None
        bound = (Lease.state == LeaseState.BOUND.value) & (Lease.expires > time.time())
        async with self.db.read() as s:
            leased = set((await s.scalars(select(Lease.ip).where(Lease.mac == mac, bound))).all())
        return None if client in leased else "not the address bootforge's DHCP leased to the MAC"

    async def _enrol(self, mac: str, boot_id: str, inventory: dict[str, Any], client: str) -> dict[str, Any]:
        async with self.db.read() as s:
            owner = await s.scalar(
                select(Node).join(Port, Port.node_id == Node.id).where(Port.address == mac)
            )
        if owner is not None:
            seen = (owner.extra or {}).get("discovery")
            if isinstance(seen, dict) and seen.get("boot_id") == boot_id:
                return {"node": {"uuid": owner.uuid, "name": owner.name}, "enrolled": True, "power_off": True}
            raise Conflict("this MAC is already a port of a node; it is not discovered again")
        serial = clean_serial(inventory)
        # Merges count too: each one adds ports, and any machine on the subnet can make reports.
        self._take_enrolment_slot()
        if serial is not None:
            merged = await self._merge(serial, mac, inventory, client)
            if merged is not None:
                return merged
        plan = await self.plan(inventory)
        node = await self._create(mac, boot_id, inventory, client, plan, serial)
        self.counts["enrolled"] += 1
        return {"node": node, "enrolled": True, "power_off": True, "rules": plan.applied}

    def _take_enrolment_slot(self) -> None:
        now = time.monotonic()
        while self._enrolled and now - self._enrolled[0] > 60.0:
            self._enrolled.popleft()
        if len(self._enrolled) >= self.settings.max_enrolments_per_minute:
            self.counts["rate_limited"] += 1
            raise TooManyEnrolments(
                f"more than {self.settings.max_enrolments_per_minute} machines enrolled in the last minute; "
                "try again later"
            )
        self._enrolled.append(now)

    async def _merge(
        self, serial: str, mac: str, inventory: dict[str, Any], client: str
    ) -> dict[str, Any] | None:
        async with self.db.read() as s:
            row = await s.get(MachineSerial, serial)
            node = await s.get(Node, row.node_id) if row is not None else None
        if row is None:
            return None
        if node is None:  # the node went (a database without foreign-key enforcement kept the row)
            async with self.db.write() as s:
                await s.execute(delete(MachineSerial).where(MachineSerial.serial == serial))
                await s.commit()
            return None
        added = await self._add_ports(node.id, inventory, mac, pxe_mac=None, created_by="rediscovery")
        text = (
            f"rediscovered from {client} (serial {serial}, booting MAC {mac}): "
            + (f"ports added with pxe_enabled false: {', '.join(added)}" if added else "no new ports")
            + "; set pxe_enabled on a port to boot from it"
        )
        async with self.db.write() as s:
            await s.execute(
                insert(NODE_EVENTS), [event_row(node.id, "discovery", text, "warning", self.conductor.host)]
            )
            await s.commit()
        self.conductor.state_changed()
        self.counts["merged"] += 1
        return {"node": {"uuid": node.uuid, "name": node.name}, "enrolled": False, "power_off": True}

    async def _create(
        self,
        mac: str,
        boot_id: str,
        inventory: dict[str, Any],
        client: str,
        plan: rules.Plan,
        serial: str | None,
    ) -> dict[str, Any]:
        from bootforge.conductor.agent import inventory_properties
        from bootforge.conductor.service import NodeService  # the service module imports the conductor

        s = self.settings
        driver = plan.driver or s.driver
        info = dict(plan.driver_info)
        bmc = inventory.get("bmc_address")
        if bmc and driver in ("ipmi", "redfish"):
            info.setdefault("ipmi_address" if driver == "ipmi" else "redfish_address", str(bmc))
        properties = {**inventory_properties(inventory, {}), **plan.properties}
        body: dict[str, Any] = {
            "driver": driver,
            "driver_info": info,
            "properties": properties,
            "extra": {"discovery": {"boot_id": boot_id, "mac": mac, "from": client, "serial": serial}},
        }
        if plan.resource_class:
            body["resource_class"] = plan.resource_class
        notes = list(plan.skipped)
        service = NodeService(self.conductor)  # type: ignore[arg-type]
        if plan.name:
            async with self.db.read() as session:
                taken = await session.scalar(select(Node.id).where(Node.name == plan.name))
            if taken:
                notes.append(f"name {plan.name} is taken by another node: enrolled without a name")
            else:
                body["name"] = plan.name
        try:
            row = await service.create(body)
        except InvalidInput as e:
            if not {"driver", "name", "resource_class"} & {e.field or ""}:
                raise
            # A rule asked for what cannot be (a driver not enabled here, a bad name): enrol the machine
            # anyway, with the defaults, and say why on its timeline.
            notes.append(f"rules' {e.field} not used: {e.message}")
            body.pop("name", None)
            body.pop("resource_class", None)
            body["driver"] = s.driver
            row = await service.create(body)
        node_id = int(row["id"])
        await self._add_ports(node_id, inventory, mac, pxe_mac=mac, created_by="discovery")
        async with self.db.write() as session:
            await session.execute(
                insert(NodeInventory).values(
                    node_id=node_id,
                    inventory=inventory,
                    plugin_data={"discovered_from": client},
                    created_at=utcnow(),
                )
            )
            if plan.traits:
                await session.execute(
                    insert(NodeTrait),
                    [{"node_id": node_id, "trait": t, "created_at": utcnow()} for t in plan.traits],
                )
            events = [
                event_row(
                    node_id,
                    "discovery",
                    f"discovered from {client} (booting MAC {mac}"
                    + (f", serial {serial}" if serial else "")
                    + (f", BMC {bmc}" if bmc else ", no BMC address reported")
                    + f"); rules applied: {', '.join(plan.applied) or 'none'}",
                    "info",
                    self.conductor.host,
                )
            ]
            events += [event_row(node_id, "discovery", n, "warning", self.conductor.host) for n in notes]
            await session.execute(insert(NODE_EVENTS), events)
            await session.commit()
        if serial is not None:
            await self.claim_serial(serial, node_id)
        self.conductor.state_changed()
        return {"uuid": row["uuid"], "name": row.get("name")}

    async def claim_serial(self, serial: str, node_id: int) -> bool:
        """Record that `serial` is this node's; False if another node has it already."""
        try:
            async with self.db.write() as s:
                await s.execute(
                    insert(MachineSerial).values(serial=serial, node_id=node_id, created_at=utcnow())
                )
                await s.commit()
        except IntegrityError:
            async with self.db.read() as s:
                row = await s.get(MachineSerial, serial)
            return row is not None and row.node_id == node_id
        return True

    async def _add_ports(
        self, node_id: int, inventory: dict[str, Any], booting: str, *, pxe_mac: str | None, created_by: str
    ) -> list[str]:
        macs = [booting]
        for nic in inventory.get("interfaces") or []:
            mac = str(nic.get("mac_address") or "").lower() if isinstance(nic, dict) else ""
            if MAC_RE.match(mac):
                macs.append(mac)
        macs = list(dict.fromkeys(macs))[:MAX_PORTS_PER_REPORT]
        async with self.db.write() as s:
            known = set((await s.scalars(select(Port.address).where(Port.address.in_(macs)))).all())
            new = [m for m in macs if m not in known]
            if new:
                now = utcnow()
                rows = [
                    {
                        **NEW_PORT,
                        "uuid": str(uuidlib.uuid4()),
                        "address": m,
                        "node_id": node_id,
                        "created_at": now,
                        "pxe_enabled": m == pxe_mac,
                        "extra": {"created_by": created_by},
                    }
                    for m in new
                ]
                await s.execute(insert(PORTS), rows)
                await s.commit()
        return new

    # --- rules on inspection ----------------------------------------------------------------------

    async def on_inspection(self, task: Any, inventory: dict[str, Any]) -> None:
        """Run the rules on a node's new inventory (under the inspection's lock) and claim its serial."""
        serial = clean_serial(inventory)
        if serial is not None and not await self.claim_serial(serial, task.node.id):
            await task.record(
                "discovery",
                f"serial {serial} is already another node's: two nodes for one machine?",
                "warning",
            )
        plan = await self.plan(inventory)
        if not plan.applied:
            return
        node = task.node
        changed: list[str] = []
        if plan.driver and plan.driver != node.driver:
            from bootforge.conductor.service import NodeService

            try:
                values = NodeService(self.conductor)._checked_values({"driver": plan.driver}, node)  # type: ignore[arg-type]
            except InvalidInput as e:
                await task.record(
                    "discovery", f"rules' driver {plan.driver} not used: {e.message}", "warning"
                )
            else:
                for k, v in values.items():
                    setattr(node, k, v)
                changed.append("driver")
        if plan.driver_info:
            node.driver_info = {**node.driver_info, **plan.driver_info}
            changed.append("driver_info " + ", ".join(sorted(plan.driver_info)))
        if plan.properties:
            node.properties = {**node.properties, **plan.properties}
            changed.append("properties " + ", ".join(sorted(plan.properties)))
        if plan.resource_class and plan.resource_class != node.resource_class:
            node.resource_class = plan.resource_class
            changed.append("resource_class")
        if plan.name and plan.name != node.name:
            async with self.db.read() as s:
                taken = await s.scalar(select(Node.id).where(Node.name == plan.name))
            if taken:
                await task.record("discovery", f"rules' name {plan.name} is taken by another node", "warning")
            else:
                node.name = plan.name
                changed.append("name")
        if plan.traits:
            async with self.db.write() as s:
                have = set(
                    (await s.scalars(select(NodeTrait.trait).where(NodeTrait.node_id == node.id))).all()
                )
                new = [t for t in plan.traits if t not in have]
                if new:
                    await s.execute(
                        insert(NodeTrait),
                        [{"node_id": node.id, "trait": t, "created_at": utcnow()} for t in new],
                    )
                    await s.commit()
                    changed.append("traits " + ", ".join(new))
        for note in plan.skipped:
            await task.record("discovery", note, "warning")
        await task.record(
            "discovery", f"rules applied: {', '.join(plan.applied)}; set: {'; '.join(changed) or 'nothing'}"
        )
