"""Volume connectors and targets (Ironic's boot from volume, API 1.32): how a node reaches storage and
the volumes it uses; a target with boot_index 0 is the volume the node boots from.

Rules, as in Ironic: a connector's `type` is one of CONNECTOR_TYPES and (type, connector_id) is unique
across nodes; a target's boot_index is unique per node; changing or deleting either needs the node
powered off (a running machine may be using the volume) and not locked by an operation. bootforge adds
one case: a node still in `enroll` whose power state was never read counts as off.

Formats are checked where bootforge itself uses a value (and the error names the field): an `iqn`
connector and an iSCSI target's target_iqn / target_portal / target_lun / CHAP credentials go into
the node's iPXE boot script, so they are held to what a script can carry safely
(netboot/boot/scripts.py). A target may be created before its connection properties are known
(Ironic's cinder interface fills them later); the `iscsi` storage interface requires them complete
when the node deploys or boots (drivers/storage.py).

Secrets: secret-named properties (auth_password, by bootforge.masking's rule) are stored sealed with
the node secrets' key (AES-256-GCM, bound to the target's UUID and the key's path), shown as
"******", and opened only by the conductor (`open_properties`) for the boot script.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError

from bootforge.conductor import patching, states
from bootforge.conductor.ports import normalize_mac
from bootforge.conductor.task import event_row
from bootforge.db import secrets
from bootforge.db.models import NODE_EVENTS, Node, VolumeConnector, VolumeTarget, utcnow
from bootforge.db.queries import is_uuid
from bootforge.drivers.base import POWER_OFF
from bootforge.drivers.storage import IQN, ISCSI, BootVolume, check_iscsi_properties
from bootforge.errors import Conflict, InvalidInput, NodeLocked, NotFound
from bootforge.netboot.boot import scripts

if TYPE_CHECKING:
    from bootforge.conductor.context import ConductorContext
    from bootforge.db.engine import Database

CONNECTOR_TYPES: Final = ("iqn", "ip", "mac", "wwnn", "wwpn", "port", "portgroup")
CONNECTOR_FIELDS: Final = frozenset({"uuid", "node_uuid", "type", "connector_id", "extra"})
TARGET_FIELDS: Final = frozenset(
    {"uuid", "node_uuid", "volume_type", "properties", "boot_index", "volume_id", "extra"}
)
WWN = re.compile(r"[0-9a-f]{16}")
ID_MAX = 255


def _str(body: Mapping[str, Any], field: str, limit: int = ID_MAX) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string", field)
    if len(value) > limit:
        raise InvalidInput(f"{field} is longer than {limit} characters", field)
    return value


def _object(body: Mapping[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object", field)
    return value


def connector_id(kind: str, value: Any) -> str:
    """The connector_id of a `kind` connector in its canonical form; InvalidInput naming connector_id."""
    field = "connector_id"
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string", field)
    text = value.strip()
    if len(text) > ID_MAX:
        raise InvalidInput(f"{field} is longer than {ID_MAX} characters", field)
    if kind == "iqn":
        if not IQN.fullmatch(text):
            raise InvalidInput(
                f"connector_id {text[:80]!r} is not an iSCSI qualified name "
                "(iqn.YYYY-MM.reversed.domain[:name] or eui.<16 hex digits>, RFC 3720)",
                field,
            )
        return text
    if kind == "mac":
        return normalize_mac(text, field)
    if kind in ("wwnn", "wwpn"):
        hexdigits = text.lower().replace(":", "").replace("-", "")
        if not WWN.fullmatch(hexdigits):
            raise InvalidInput(f"connector_id of a {kind} connector must be 16 hexadecimal digits", field)
        return hexdigits
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidInput(f"connector_id {text[:80]!r} is not an IP address", field) from None
    # port, portgroup: Ironic stores the port's (or group's) UUID.
    if not is_uuid(text):
        raise InvalidInput(f"connector_id of a {kind} connector must be a UUID", field)
    return text.lower()


# --- secrets ------------------------------------------------------------------------------------


def _box(db: Database) -> Any:
    if db.secrets is None:
        # A database opened without its key would store CHAP secrets in plaintext: refused.
        raise RuntimeError("volume target secrets written before the secret key was loaded")
    return db.secrets


def seal_properties(db: Database, target_uuid: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """`props` with each secret-named value sealed (values already sealed stay as they are)."""

    def seal(path: tuple[str | int, ...], v: Any) -> Any:
        if isinstance(v, str) and v.startswith(secrets.PREFIX):
            return v
        return _box(db).seal(target_uuid, path, v)

    sealed: dict[str, Any] = secrets.map_volume_secrets(props, seal)
    return sealed


def open_properties(db: Database, target_uuid: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """`props` with each sealed value opened; InvalidInput naming the property if one does not open."""

    def open_(path: tuple[str | int, ...], v: Any) -> Any:
        if not (isinstance(v, str) and v.startswith(secrets.PREFIX)):
            return v
        try:
            return _box(db).open(target_uuid, path, v)
        except ValueError:
            shown = ".".join(str(p) for p in path[1:])
            raise InvalidInput(
                f"volume target {target_uuid}: {shown} cannot be decrypted with this conductor's secret "
                "key; set it again with `baremetal volume target set`",
                shown,
            ) from None

    opened: dict[str, Any] = secrets.map_volume_secrets(props, open_)
    return opened


# --- the service ----------------------------------------------------------------------------------


class VolumeService:
    """Create, change and delete a node's volume connectors and targets (the API's write side)."""

    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor
        self.db = conductor.db

    async def get_connector(self, ident: str) -> VolumeConnector:
        found: VolumeConnector | None = None
        if is_uuid(ident):
            async with self.db.read() as s:
                found = await s.scalar(select(VolumeConnector).where(VolumeConnector.uuid == ident))
        if found is None:
            raise NotFound(f"Volume connector {ident} could not be found.")
        return found

    async def get_target(self, ident: str) -> VolumeTarget:
        found: VolumeTarget | None = None
        if is_uuid(ident):
            async with self.db.read() as s:
                found = await s.scalar(select(VolumeTarget).where(VolumeTarget.uuid == ident))
        if found is None:
            raise NotFound(f"Volume target {ident} could not be found.")
        return found

    async def _node(self, s: Any, ident: Any) -> Node:
        text = str(ident)
        column = Node.uuid if is_uuid(text) else Node.name
        node: Node | None = await s.scalar(select(Node).where(column == text))
        if node is None:
            # 400, not 404: the node is a field of the body (Ironic answers the same).
            raise InvalidInput(f"Node {text[:80]} could not be found.", "node_uuid")
        return node

    @staticmethod
    def _changeable(node: Node, action: str) -> None:
        """Ironic's rule for changing a node's volumes: the node powered off and not busy."""
        if node.reservation is not None:
            raise NodeLocked(
                f"Node {node.uuid} is locked by host {node.reservation}, please retry after the current "
                "operation is completed."
            )
        never_read = node.power_state is None and node.provision_state == states.ENROLL
        if node.power_state != POWER_OFF and not never_read:
            raise InvalidInput(
                f"Cannot {action} of node {node.uuid} while its power state is {node.power_state}: "
                "power the node off first (a running machine may be using the volume)",
                "power_state",
            )

    # --- connectors ---------------------------------------------------------------------------

    def _connector_values(self, body: Mapping[str, Any], current: VolumeConnector | None) -> dict[str, Any]:
        values: dict[str, Any] = {}
        kind = body.get("type", current.type if current else None)
        if "type" in body or current is None:
            if kind not in CONNECTOR_TYPES:
                raise InvalidInput(
                    f"type must be one of {', '.join(CONNECTOR_TYPES)}, not {str(kind)[:40]!r}", "type"
                )
            values["type"] = kind
        if "connector_id" in body or "type" in body or current is None:
            raw = body.get("connector_id", current.connector_id if current else None)
            values["connector_id"] = connector_id(str(kind), raw)
        if "extra" in body:
            values["extra"] = _object(body, "extra")
        return values

    async def create_connector(self, body: dict[str, Any]) -> tuple[VolumeConnector, str]:
        """A new connector and its node's UUID."""
        unknown = sorted(set(body) - CONNECTOR_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown attribute for argument connector: {', '.join(unknown)}", unknown[0])
        for field in ("node_uuid", "type", "connector_id"):
            if body.get(field) in (None, ""):
                raise InvalidInput(f"Mandatory field missing: '{field}'", field)
        values = self._connector_values(body, None)
        new_uuid = self._new_uuid(body)
        async with self.db.write() as s:
            node = await self._node(s, body["node_uuid"])
            row = VolumeConnector(
                uuid=new_uuid, node_id=node.id, created_at=utcnow(), **{"extra": {}, **values}
            )
            s.add(row)
            await self._flush(s, "connector", row.uuid, row.type, row.connector_id)
            await s.execute(
                NODE_EVENTS.insert(),
                [self._event(node.id, f"volume connector {row.type} {row.connector_id} added")],
            )
            await s.commit()
        return row, node.uuid

    async def update_connector(self, ident: str, patch: list[dict[str, Any]]) -> tuple[VolumeConnector, str]:
        current = await self.get_connector(ident)
        async with self.db.read() as s:
            node_uuid = await s.scalar(select(Node.uuid).where(Node.id == current.node_id))
        doc = {
            "node_uuid": node_uuid,
            "type": current.type,
            "connector_id": current.connector_id,
            "extra": current.extra,
        }
        changed = self._patched(doc, patch, CONNECTOR_FIELDS - {"uuid"})
        values = self._connector_values(changed, current)
        async with self.db.write() as s:
            node = await self._locked_node(s, current.node_id, "change a volume connector")
            result_uuid = node.uuid
            if "node_uuid" in changed:
                other = await self._node(s, changed["node_uuid"])
                self._changeable(other, "move a volume connector to")
                values["node_id"] = other.id
                result_uuid = other.uuid
            row = await s.get(VolumeConnector, current.id)
            if row is None:
                raise NotFound(f"Volume connector {ident} could not be found.")
            for k, v in values.items():
                setattr(row, k, v)
            await self._flush(s, "connector", row.uuid, row.type, row.connector_id)
            await s.execute(
                NODE_EVENTS.insert(), [self._event(node.id, f"volume connector {row.uuid} changed")]
            )
            await s.commit()
        return row, result_uuid

    async def delete_connector(self, ident: str) -> None:
        current = await self.get_connector(ident)
        async with self.db.write() as s:
            node = await self._locked_node(s, current.node_id, "delete a volume connector")
            row = await s.get(VolumeConnector, current.id)
            if row is not None:
                await s.delete(row)
                await s.execute(
                    NODE_EVENTS.insert(),
                    [self._event(node.id, f"volume connector {row.type} {row.connector_id} removed")],
                )
            await s.commit()

    # --- targets ------------------------------------------------------------------------------

    def _target_values(self, body: Mapping[str, Any], current: VolumeTarget | None) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "volume_type" in body or current is None:
            values["volume_type"] = _str(body, "volume_type", 64)
        if "volume_id" in body or current is None:
            values["volume_id"] = _str(body, "volume_id")
        if "boot_index" in body or current is None:
            index = body.get("boot_index")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 2**31 - 1:
                raise InvalidInput(
                    "boot_index must be an integer of 0 or more (0: the boot volume)", "boot_index"
                )
            values["boot_index"] = index
        if "properties" in body:
            values["properties"] = _object(body, "properties")
        if "extra" in body:
            values["extra"] = _object(body, "extra")
        return values

    def _check_properties(self, target_uuid: str, volume_type: str, props: Mapping[str, Any]) -> None:
        if volume_type == ISCSI:
            check_iscsi_properties(open_properties(self.db, target_uuid, props), complete=False)

    async def create_target(self, body: dict[str, Any]) -> tuple[VolumeTarget, str]:
        unknown = sorted(set(body) - TARGET_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown attribute for argument target: {', '.join(unknown)}", unknown[0])
        for field in ("node_uuid", "volume_type", "boot_index", "volume_id"):
            if body.get(field) in (None, ""):
                raise InvalidInput(f"Mandatory field missing: '{field}'", field)
        values = {"properties": {}, "extra": {}, **self._target_values(body, None)}
        new_uuid = self._new_uuid(body)
        self._check_properties(new_uuid, values["volume_type"], values["properties"])
        values["properties"] = seal_properties(self.db, new_uuid, values["properties"])
        async with self.db.write() as s:
            node = await self._node(s, body["node_uuid"])
            row = VolumeTarget(uuid=new_uuid, node_id=node.id, created_at=utcnow(), **values)
            s.add(row)
            what = f"volume target {row.volume_id} ({row.volume_type}, boot index {row.boot_index})"
            await self._flush(s, "target", row.uuid, None, None, row.boot_index, node.uuid)
            await s.execute(NODE_EVENTS.insert(), [self._event(node.id, f"{what} added")])
            await s.commit()
        return row, node.uuid

    async def update_target(self, ident: str, patch: list[dict[str, Any]]) -> tuple[VolumeTarget, str]:
        current = await self.get_target(ident)
        async with self.db.read() as s:
            node_uuid = await s.scalar(select(Node.uuid).where(Node.id == current.node_id))
        doc = {
            "node_uuid": node_uuid,
            "volume_type": current.volume_type,
            "properties": current.properties,
            "boot_index": current.boot_index,
            "volume_id": current.volume_id,
            "extra": current.extra,
        }
        changed = self._patched(doc, patch, TARGET_FIELDS - {"uuid"})
        values = self._target_values(changed, current)
        if "properties" in values or "volume_type" in values:
            props = values.get("properties", current.properties)
            self._check_properties(current.uuid, values.get("volume_type", current.volume_type), props)
            if "properties" in values:
                values["properties"] = seal_properties(self.db, current.uuid, props)
        async with self.db.write() as s:
            node = await self._locked_node(s, current.node_id, "change a volume target")
            target_node = node
            if "node_uuid" in changed:
                target_node = await self._node(s, changed["node_uuid"])
                self._changeable(target_node, "move a volume target to")
                values["node_id"] = target_node.id
            row = await s.get(VolumeTarget, current.id)
            if row is None:
                raise NotFound(f"Volume target {ident} could not be found.")
            for k, v in values.items():
                setattr(row, k, v)
            await self._flush(s, "target", row.uuid, None, None, row.boot_index, target_node.uuid)
            await s.execute(NODE_EVENTS.insert(), [self._event(node.id, f"volume target {row.uuid} changed")])
            await s.commit()
            result_uuid = target_node.uuid
        return row, result_uuid

    async def delete_target(self, ident: str) -> None:
        current = await self.get_target(ident)
        async with self.db.write() as s:
            node = await self._locked_node(s, current.node_id, "delete a volume target")
            row = await s.get(VolumeTarget, current.id)
            if row is not None:
                await s.delete(row)
                await s.execute(
                    NODE_EVENTS.insert(),
                    [
                        self._event(
                            node.id, f"volume target {row.volume_id} (boot_index {row.boot_index}) removed"
                        )
                    ],
                )
            await s.commit()

    # --- shared -------------------------------------------------------------------------------

    @staticmethod
    def _new_uuid(body: Mapping[str, Any]) -> str:
        given = body.get("uuid")
        if given is None:
            return str(uuidlib.uuid4())
        if not is_uuid(str(given)):
            raise InvalidInput(f"uuid: expected a UUID but received {str(given)[:80]!r}.", "uuid")
        return str(given).lower()

    def _patched(
        self, doc: dict[str, Any], patch: list[dict[str, Any]], allowed: frozenset[str]
    ) -> dict[str, Any]:
        ops = patching.check_ops(patch, ("add", "replace", "remove", "test"), allowed)
        patched = patching.apply(doc, ops, limits=self.conductor.settings.api_limits)
        for key in doc:
            patched.setdefault(key, None)
        return {k: v for k, v in patched.items() if v != doc.get(k)}

    async def _locked_node(self, s: Any, node_id: int, action: str) -> Node:
        # FOR UPDATE: on PostgreSQL a reserve that comes after waits for this transaction (SQLite's
        # write transactions are serial already).
        node: Node | None = await s.scalar(select(Node).where(Node.id == node_id).with_for_update())
        if node is None:
            raise NotFound(f"Node {node_id} could not be found.")
        self._changeable(node, action)
        return node

    def _event(self, node_id: int, message: str) -> dict[str, Any]:
        return event_row(node_id, "volume", message, "info", self.conductor.host)

    @staticmethod
    async def _flush(
        s: Any,
        kind: str,
        uuid: str,
        ctype: str | None,
        cid: str | None,
        boot_index: int | None = None,
        node_uuid: str | None = None,
    ) -> None:
        # Flushed before anything else in the transaction: the unique constraints are the check.
        try:
            await s.flush()
        except IntegrityError as e:
            await s.rollback()
            text = str(e.orig).lower()
            if "uuid" in text:
                raise Conflict(f"A volume {kind} with UUID {uuid} already exists.") from None
            if kind == "connector":
                raise Conflict(
                    f"A volume connector with type {ctype} and connector_id {cid} already exists."
                ) from None
            raise Conflict(
                f"A volume target with boot index '{boot_index}' for node {node_uuid} already exists."
            ) from None


# --- what the conductor and the netboot view read ----------------------------------------------
# --- what the conductor and the netboot view read ----------------------------------------------


async def boot_volumes(db: Database, node_id: int | None = None) -> dict[str, BootVolume]:
    """node UUID -> its boot volume: of one node (`node_id`), or of every node whose storage
    interface is iscsi (the netboot view: only those boot from their volume)."""
    targets = (
        select(
            Node.uuid,
            VolumeTarget.node_id,
            VolumeTarget.uuid,
            VolumeTarget.volume_id,
            VolumeTarget.volume_type,
            VolumeTarget.properties,
        )
        .join(Node, Node.id == VolumeTarget.node_id)
        .where(VolumeTarget.boot_index == 0)
    )
    iqns = select(VolumeConnector.node_id, VolumeConnector.connector_id).where(VolumeConnector.type == "iqn")
    if node_id is not None:
        targets = targets.where(VolumeTarget.node_id == node_id)
        iqns = iqns.where(VolumeConnector.node_id == node_id)
    else:
        targets = targets.where(Node.storage_interface == ISCSI)
    async with db.read_conn() as conn:
        found = (await conn.execute(targets)).all()
        if not found:
            return {}
        initiators: dict[int, str] = {}
        # The first iqn connector by id: a node has one initiator name in practice.
        for owner, iqn in await conn.execute(iqns.order_by(VolumeConnector.id)):
            initiators.setdefault(owner, iqn)
    out: dict[str, BootVolume] = {}
    for node_uuid, owner, uuid, volume_id, volume_type, props in found:
        unreadable = None
        try:
            opened = open_properties(db, uuid, props or {})
        except InvalidInput as e:
            opened, unreadable = {}, e.message
        out[node_uuid] = BootVolume(uuid, volume_id, volume_type, opened, initiators.get(owner), unreadable)
    return out


async def connectors_and_targets(
    db: Database, node_id: int
) -> tuple[list[VolumeConnector], list[VolumeTarget]]:
    async with db.read() as s:
        connectors = list(
            (await s.scalars(select(VolumeConnector).where(VolumeConnector.node_id == node_id))).all()
        )
        targets = list(
            (
                await s.scalars(
                    select(VolumeTarget)
                    .where(and_(VolumeTarget.node_id == node_id))
                    .order_by(VolumeTarget.boot_index)
                )
            ).all()
        )
    return connectors, targets


# Provision states in which a node with a boot volume boots from it: a deploy writes nothing, so from
# its power-on onwards the machine's boot is the volume's (conductor/netboot.py).
SAN_BOOT_STATES: Final = frozenset({states.DEPLOYING, states.DEPLOYWAIT, states.ACTIVE})


def san_plan(volume: BootVolume) -> scripts.SanBoot:
    """The iPXE sanboot plan of a node's boot volume; InvalidInput (naming the property) or
    ScriptError when the volume cannot be booted. Messages never carry the CHAP secret."""
    conn = volume.iscsi()
    return scripts.SanBoot(
        host=conn.host,
        port=conn.port,
        lun=conn.lun,
        target_iqn=conn.iqn,
        initiator_iqn=volume.initiator_iqn,
        username=conn.username,
        password=conn.password,
    )
