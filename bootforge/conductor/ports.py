"""Ports (a node's NICs, by MAC) and port groups (bonds). A port's MAC is what netboot recognises."""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, or_, select
from sqlalchemy.exc import IntegrityError

from bootforge.conductor import patching
from bootforge.conductor.task import event_row, load_node
from bootforge.config import ApiLimits
from bootforge.db.batch import BatchInserter
from bootforge.db.models import NODE_EVENTS, PORTS, Node, Port, Portgroup, utcnow
from bootforge.db.queries import is_uuid
from bootforge.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from bootforge.conductor.context import ConductorContext

MAC_RE = re.compile(r"^([0-9a-f]{2})([:-]?)([0-9a-f]{2})(\2[0-9a-f]{2}){4}$")

PORT_FIELDS = {
    "uuid",
    "address",
    "node_uuid",
    "portgroup_uuid",
    "pxe_enabled",
    "local_link_connection",
    "physical_network",
    "is_smartnic",
    "extra",
}
PORT_PATCHABLE = PORT_FIELDS - {"uuid"}
PORTGROUP_FIELDS = {
    "uuid",
    "name",
    "address",
    "node_uuid",
    "mode",
    "properties",
    "standalone_ports_supported",
    "extra",
}
LLC_KEYS = {"switch_id", "port_id", "switch_info", "network_type"}


def normalize_mac(value: Any, field: str = "address") -> str:
    """Lower-case colon form; InvalidInput naming the field for anything that is not a MAC."""
    text = str(value).strip().lower()
    if not MAC_RE.match(text):
        raise InvalidInput(f"Expected a MAC address but received {value}.", field)
    hexdigits = text.replace(":", "").replace("-", "")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


# Every column of a new port that the request does not set.
NEW_PORT: dict[str, Any] = {
    "portgroup_id": None,
    "pxe_enabled": True,
    "local_link_connection": {},
    "physical_network": None,
    "is_smartnic": False,
    "internal_info": {},
    "extra": {},
    "updated_at": None,
}


class PortService:
    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self._inserts = BatchInserter(
            self.db, PORTS, events_table=NODE_EVENTS, events=self._events, prepare=self._resolve_nodes
        )

    async def get(self, port_uuid: str) -> Port:
        async with self.db.read() as s:
            port: Port | None = await s.scalar(select(Port).where(Port.uuid == port_uuid))
        if port is None:
            raise NotFound(f"Port {port_uuid} could not be found.")
        return port

    async def by_address(self, address: str) -> Port | None:
        async with self.db.read() as s:
            found: Port | None = await s.scalar(select(Port).where(Port.address == normalize_mac(address)))
        return found

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a port; returns its full row (a Core insert: enrolment is a hot path)."""
        unknown = sorted(set(body) - PORT_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown attribute for argument port: {', '.join(unknown)}", unknown[0])
        for field in ("address", "node_uuid"):
            if not body.get(field):
                raise InvalidInput(f"Mandatory field missing: '{field}'", field)
        if body.get("portgroup_uuid"):
            # Rare: the group check needs the node first, so no group commit for this one.
            values = await self._checked(body)
            node_ref: Any = values["node_id"]
        else:
            values = await self._checked({k: v for k, v in body.items() if k != "node_uuid"})
            node_ref = str(body["node_uuid"])
        row = {**NEW_PORT, **values, "created_at": utcnow(), "node_id": node_ref}
        row["uuid"] = values.get("uuid") or str(uuidlib.uuid4())
        # Enrolment of many ports at once is grouped into one transaction (db.batch); the unique
        # constraints on address and uuid are the duplicate check, with no look-up before.
        try:
            return await self._inserts.insert(row)
        except IntegrityError as e:
            if "address" in str(e.orig).lower():
                raise Conflict(f"A port with MAC address {row['address']} already exists.") from None
            raise Conflict(f"A port with UUID {row['uuid']} already exists.") from None

    async def _resolve_nodes(self, conn: Any, rows: list[dict[str, Any]]) -> dict[int, Exception]:
        """Turn each row's node reference (UUID or name) into node_id with one query per batch."""
        refs = {r["node_id"] for r in rows if isinstance(r["node_id"], str)}
        found: dict[str, int] = {}
        if refs:
            query = select(Node.uuid, Node.name, Node.id).where(or_(Node.uuid.in_(refs), Node.name.in_(refs)))
            for uuid, name, node_id in await conn.execute(query):
                found[uuid] = node_id
                if name:
                    found[name] = node_id
        rejected: dict[int, Exception] = {}
        for i, r in enumerate(rows):
            if isinstance(r["node_id"], str):
                if r["node_id"] in found:
                    r["node_id"] = found[r["node_id"]]
                else:
                    rejected[i] = InvalidInput(f"Node {r['node_id']} could not be found.", "node_uuid")
        return rejected

    def _events(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        host = self.conductor.host
        return [event_row(r["node_id"], "port", f"port {r['address']} added", "info", host) for r in rows]

    async def _checked(
        self, body: dict[str, Any], current: Port | None = None, session: Any = None
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "address" in body:
            values["address"] = normalize_mac(body["address"])
        if "node_uuid" in body:
            values["node_id"] = await self._node_id(body["node_uuid"], session)
        if "portgroup_uuid" in body:
            values["portgroup_id"] = None
            if body["portgroup_uuid"] is not None:
                group = await PortgroupService(self.conductor).get(str(body["portgroup_uuid"]))
                node_id = values.get("node_id", current.node_id if current else None)
                if group.node_id != node_id:
                    raise InvalidInput("the port group belongs to another node", "portgroup_uuid")
                values["portgroup_id"] = group.id
        for field in ("pxe_enabled", "is_smartnic"):
            if field in body:
                if not isinstance(body[field], bool):
                    raise InvalidInput(f"{field} must be true or false", field)
                values[field] = body[field]
        for field in ("extra", "local_link_connection"):
            if field in body:
                if not isinstance(body[field], dict | None):
                    raise InvalidInput(f"{field} must be an object", field)
                values[field] = body[field] or {}
        bad = set(values.get("local_link_connection", {})) - LLC_KEYS
        if bad:
            raise InvalidInput(
                f"local_link_connection has unknown keys {sorted(bad)}; allowed: {sorted(LLC_KEYS)}",
                "local_link_connection",
            )
        if "physical_network" in body:
            if body["physical_network"] is not None and not isinstance(body["physical_network"], str):
                raise InvalidInput("physical_network must be a string", "physical_network")
            values["physical_network"] = body["physical_network"]
        if "uuid" in body and body["uuid"] is not None:
            if not is_uuid(str(body["uuid"])):
                raise InvalidInput(f"Expected a UUID but received {body['uuid']}.", "uuid")
            values["uuid"] = str(body["uuid"])
        return values

    async def _node_id(self, ident: Any, session: Any = None) -> int:
        column = Node.uuid if is_uuid(str(ident)) else Node.name
        query = select(Node.id).where(column == str(ident))
        if session is not None:
            node_id: int | None = await session.scalar(query)
        else:
            async with self.db.read_conn() as conn:
                node_id = await conn.scalar(query)
        if node_id is None:
            raise InvalidInput(f"Node {ident} could not be found.", "node_uuid")
        return node_id

    async def update(self, port_uuid: str, patch: list[dict[str, Any]]) -> Port:
        port = await self.get(port_uuid)
        doc = await self.patch_doc(port)
        changed = _apply(doc, patch, PORT_PATCHABLE, self.conductor.settings.api_limits)
        values = await self._checked(changed, port)
        if "address" in values and values["address"] != port.address:
            existing = await self.by_address(values["address"])
            if existing is not None:
                raise Conflict(f"A port with MAC address {values['address']} already exists.")
        async with self.db.write() as s:
            row = await s.get(Port, port.id)
            assert row is not None
            for k, v in values.items():
                setattr(row, k, v)
            await s.commit()
        return row

    async def patch_doc(self, port: Port) -> dict[str, Any]:
        async with self.db.read() as s:
            node_uuid = await s.scalar(select(Node.uuid).where(Node.id == port.node_id))
            group_uuid = None
            if port.portgroup_id is not None:
                group_uuid = await s.scalar(select(Portgroup.uuid).where(Portgroup.id == port.portgroup_id))
        return {
            "address": port.address,
            "node_uuid": node_uuid,
            "portgroup_uuid": group_uuid,
            "pxe_enabled": port.pxe_enabled,
            "local_link_connection": port.local_link_connection,
            "physical_network": port.physical_network,
            "is_smartnic": port.is_smartnic,
            "extra": port.extra,
        }

    async def delete(self, port_uuid: str) -> None:
        port = await self.get(port_uuid)
        async with self.db.write() as s:
            row = await s.get(Port, port.id)
            if row is not None:
                await s.delete(row)
                await s.execute(
                    insert(NODE_EVENTS),
                    [
                        event_row(
                            port.node_id, "port", f"port {port.address} removed", "info", self.conductor.host
                        )
                    ],
                )
            await s.commit()


class PortgroupService:
    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor
        self.db = conductor.db

    async def get(self, ident: str) -> Portgroup:
        column = Portgroup.uuid if is_uuid(ident) else Portgroup.name
        async with self.db.read() as s:
            group: Portgroup | None = await s.scalar(select(Portgroup).where(column == ident))
        if group is None:
            raise NotFound(f"Portgroup {ident} could not be found.")
        return group

    async def create(self, body: dict[str, Any]) -> Portgroup:
        unknown = sorted(set(body) - PORTGROUP_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown attribute for argument portgroup: {', '.join(unknown)}", unknown[0])
        if not body.get("node_uuid"):
            raise InvalidInput("Mandatory field missing: 'node_uuid'", "node_uuid")
        values = await self._checked(body)
        group = Portgroup(
            uuid=values.pop("uuid", None) or str(uuidlib.uuid4()), created_at=utcnow(), **values
        )
        async with self.db.write() as s:
            await self._unique(s, group.name, group.address)
            if await s.scalar(select(Portgroup.id).where(Portgroup.uuid == group.uuid)):
                raise Conflict(f"A portgroup with UUID {group.uuid} already exists.")
            s.add(group)
            await s.commit()
        return group

    async def _unique(self, s: Any, name: str | None, address: str | None) -> None:
        # `is not None`: "" is a name too, unique in the table like any other.
        if name is not None and await s.scalar(select(Portgroup.id).where(Portgroup.name == name)):
            raise Conflict(f"A portgroup with name {name} already exists.")
        if address and await s.scalar(select(Portgroup.id).where(Portgroup.address == address)):
            raise Conflict(f"A portgroup with MAC address {address} already exists.")

    async def _checked(self, body: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "node_uuid" in body:
            try:
                values["node_id"] = (await load_node(self.conductor, str(body["node_uuid"]))).id
            except NotFound:
                raise InvalidInput(f"Node {body['node_uuid']} could not be found.", "node_uuid") from None
        if body.get("address") is not None:
            values["address"] = normalize_mac(body["address"])
        elif "address" in body:
            values["address"] = None
        for field in ("name", "mode"):
            if field in body:
                if body[field] is not None and not isinstance(body[field], str):
                    raise InvalidInput(f"{field} must be a string", field)
                values[field] = body[field]
        for field in ("properties", "extra"):
            if field in body:
                if not isinstance(body[field], dict | None):
                    raise InvalidInput(f"{field} must be an object", field)
                values[field] = body[field] or {}
        if "standalone_ports_supported" in body:
            if not isinstance(body["standalone_ports_supported"], bool):
                raise InvalidInput(
                    "standalone_ports_supported must be true or false", "standalone_ports_supported"
                )
            values["standalone_ports_supported"] = body["standalone_ports_supported"]
        if body.get("uuid") is not None:
            if not is_uuid(str(body["uuid"])):
                raise InvalidInput(f"Expected a UUID but received {body['uuid']}.", "uuid")
            values["uuid"] = str(body["uuid"])
        return values

    async def update(self, ident: str, patch: list[dict[str, Any]]) -> Portgroup:
        group = await self.get(ident)
        async with self.db.read() as s:
            node_uuid = await s.scalar(select(Node.uuid).where(Node.id == group.node_id))
        doc = {
            "name": group.name,
            "address": group.address,
            "node_uuid": node_uuid,
            "mode": group.mode,
            "properties": group.properties,
            "extra": group.extra,
            "standalone_ports_supported": group.standalone_ports_supported,
        }
        changed = _apply(doc, patch, PORTGROUP_FIELDS - {"uuid"}, self.conductor.settings.api_limits)
        values = await self._checked(changed)
        async with self.db.write() as s:
            await self._unique(
                s,
                values.get("name") if values.get("name") != group.name else None,
                values.get("address") if values.get("address") != group.address else None,
            )
            row = await s.get(Portgroup, group.id)
            assert row is not None
            for k, v in values.items():
                setattr(row, k, v)
            await s.commit()
        return row

    async def delete(self, ident: str) -> None:
        group = await self.get(ident)
        async with self.db.write() as s:
            if await s.scalar(select(Port.id).where(Port.portgroup_id == group.id).limit(1)):
                raise Conflict(f"Portgroup {group.uuid} still has ports; remove them from it first.")
            row = await s.get(Portgroup, group.id)
            if row is not None:
                await s.delete(row)
            await s.commit()


def _apply(
    doc: dict[str, Any], patch: list[dict[str, Any]], allowed: set[str], limits: ApiLimits
) -> dict[str, Any]:
    ops = patching.check_ops(patch, ("add", "replace", "remove", "test", "move", "copy"), allowed)
    patched = patching.apply(doc, ops, limits=limits)
    for key in doc:
        patched.setdefault(key, None)
    return {k: v for k, v in patched.items() if v != doc.get(k)}
