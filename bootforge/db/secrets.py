"""Secrets at rest: the values the API masks are stored encrypted (AES-256-GCM) in the database.

What is encrypted is exactly what bootforge.masking hides (its one rule): in `driver_info`, every
secret-named key's value at any depth and through lists (ipmi_password, redfish_password,
`ipmi_credentials: {...}` whole, `bmcs: [{"password": ...}]`); in `instance_info`, the same plus
configdrive, rescue_password and image_url (masking.INSTANCE_SECRETS); in `driver_internal_info`,
secret-named keys likewise (the config drive a deploy built, in `deploy_configdrive` and in the
agent's queued command). Image checksums, URLs of kernels and the rest stay readable: they are not
secrets and the netboot view reads some of them.
Empty values (null, "", {}, []) are left as they are, as the API shows them.

A stored secret is the text "bfenc:v1:" + base64(nonce 12 bytes + ciphertext + tag). The plaintext is
the value's JSON (a secret may be a number or an object); the associated data is the node's UUID and
the value's path (["driver_info", "bmcs", 0, "password"]), so a value pasted into another node's row
or under another key fails to decrypt instead of becoming that node's password. The key is the
"driver-info-encryption" subkey of the conductor's key file (bootforge/keys.py); the database records
the key's fingerprint (table secret_keys), so a conductor started with another key file, or without
one, refuses to start instead of writing secrets that nobody can read later.

Where: one seam, the ORM mapping of Node plus the two Core writes of those columns.
- ORM objects hold plaintext: a loaded Node is opened once as it is loaded (InstanceEvents.load), and
  sealed as it is flushed (SessionEvents.before_flush, only the fields that changed), the object
  keeping its plaintext afterwards. Drivers, PATCH and the conductor see plaintext without knowing.
- Core reads (node list, detail, GET of one node, the netboot view) get the stored text and never
  decrypt: the API masks these values anyway, and a sealed value masks to the same "******".
- Core writes of these columns (enrolment's batched INSERT, reserve()'s UPDATE) call seal_columns().

A value that does not decrypt (pasted from another node, written under another key) stays sealed in
the loaded object; NodeTask refuses to hand that node to a driver (SecretUnreadable, a 400 naming
the node and the field), while a PATCH that sets the field again still works.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, event, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Session, attributes
from sqlalchemy.orm.attributes import set_committed_value

from bootforge import keys
from bootforge.db.models import NODES, Node, SecretKeyRecord, VolumeTarget, utcnow
from bootforge.errors import InvalidInput
from bootforge.masking import INSTANCE_SECRETS, is_secret_key

if TYPE_CHECKING:
    from bootforge.db.engine import Database

log = logging.getLogger("bootforge.db.secrets")

PREFIX: Final = "bfenc:v1:"
PURPOSE: Final = "driver-info-encryption"
FIELDS: Final = ("driver_info", "instance_info", "driver_internal_info")
NONCE_BYTES: Final = 12
# The key of session.info under which Database puts itself, so that ORM events find the key.
SESSION_DB: Final = "bootforge.db"
# Advisory lock key for opening/rotating on PostgreSQL (the same as the migrations', so that the
# first conductor of a fleet records the key and seals old rows before the next one looks).
PG_LOCK: Final = 0x626F6F74

Path_ = tuple[str | int, ...]
# Set on a loaded Node's InstanceState.info: the paths of its secrets that did not decrypt.
UNREADABLE: Final = "bootforge.secrets.unreadable"
# masking's rule, remembered per key name: a node's JSON has a handful of distinct keys, and this runs
# for each key of every node loaded.
_secret_key = functools.lru_cache(maxsize=4096)(is_secret_key)
SECRET_KEYS = cast(Table, SecretKeyRecord.__table__)


class SecretUnreadable(InvalidInput):
    """A stored secret of a node does not decrypt with this conductor's key (400, names the field)."""

    def __init__(self, node_uuid: str, paths: list[str], key: str) -> None:
        fields = ", ".join(paths)
        super().__init__(
            f"Node {node_uuid}: {fields} cannot be decrypted with the secret key {key} (it was "
            "written for another node or field, or under another key); set it again with "
            "`baremetal node set` / PATCH",
            paths[0],
        )


class SecretKeyRefused(Exception):
    """The key file does not belong to this database (or is missing while the database needs it)."""


class NodeSecrets:
    """Seals and opens one node's secret values under the key's "driver-info-encryption" subkey."""

    def __init__(self, key: keys.SecretKey) -> None:
        self._aead = AESGCM(key.derive(PURPOSE))
        self.fingerprint = key.fingerprint()
        self.source = key.source

    def __repr__(self) -> str:
        return f"NodeSecrets(source={self.source!r}, fingerprint={self.fingerprint})"

    def describe(self) -> str:
        return f"{self.source} (fingerprint {self.fingerprint})"

    def seal(self, node_uuid: str, path: Path_, value: Any) -> str:
        nonce = os.urandom(NONCE_BYTES)
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = self._aead.encrypt(nonce, data, _aad(node_uuid, path))
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, node_uuid: str, path: Path_, stored: str) -> Any:
        """The value sealed in `stored`; raises ValueError if it is not one of this key's for this path."""
        try:
            raw = base64.b64decode(stored[len(PREFIX) :], validate=True)
            if len(raw) < NONCE_BYTES + 16:
                raise ValueError("too short")
            data = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(node_uuid, path))
            return json.loads(data)
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise ValueError(f"{_show(path)} does not decrypt") from exc

    # --- whole fields ---------------------------------------------------------------------------

    def seal_field(self, node_uuid: str, field: str, value: Any) -> Any:
        """`value` (one of a node's FIELDS) with every plaintext secret sealed.

        Values already sealed are kept as they are (never sealed twice): they are either this key's
        for this place, or unreadable values kept until someone sets them again.
        """

        return _seal_with(lambda: self, node_uuid, field, value)

    def open_field(self, node_uuid: str, field: str, value: Any) -> tuple[Any, list[str]]:
        """`value` with every sealed secret opened, and the paths of those that did not open."""
        bad: list[str] = []

        def unseal(path: Path_, v: Any) -> Any:
            if not _is_sealed(v):
                return v
            try:
                return self.open(node_uuid, path, v)
            except ValueError:
                bad.append(_show(path))
                return v

        return _map_secrets(field, value, unseal), bad


def _aad(node_uuid: str, path: Path_) -> bytes:
    return json.dumps(["bootforge-secret", node_uuid, *path], separators=(",", ":")).encode()


def _show(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _is_set(value: Any) -> bool:
    # masking's rule for "nothing to hide": these are shown as they are, so they are stored so too.
    if isinstance(value, dict | list | tuple | str):
        return len(value) > 0
    return value is not None


def _map_secrets(field: str, value: Any, fn: Callable[[Path_, Any], Any]) -> Any:
    """`value` with fn(path, v) applied to each value bootforge.masking.mask_node_field hides.

    Returns `value` itself (not a copy) when fn changed nothing, so callers can tell cheaply. Runs
    for every node loaded through the ORM: scalars that are not secrets are not even visited.
    """
    named = INSTANCE_SECRETS if field == "instance_info" else frozenset()

    def walk(path: Path_, item: Any, top: bool) -> Any:
        if isinstance(item, Mapping):
            out: dict[str, Any] | None = None
            for k, v in item.items():
                if (_secret_key(k) or (top and k in named)) and _is_set(v):
                    new = fn((*path, k), v)
                elif isinstance(v, Mapping | list | tuple):
                    new = walk((*path, k), v, False)
                else:
                    continue
                if new is not v:
                    if out is None:
                        out = dict(item)
                    out[k] = new
            return item if out is None else out
        if isinstance(item, list | tuple):
            changed: list[Any] | None = None
            for i, v in enumerate(item):
                if not isinstance(v, Mapping | list | tuple):
                    continue
                new = walk((*path, i), v, False)
                if new is not v:
                    if changed is None:
                        changed = list(item)
                    changed[i] = new
            return item if changed is None else changed
        return item

    if field not in FIELDS:
        return value
    return walk((field,), value, True)


def _seal_with(box: Callable[[], NodeSecrets], node_uuid: str, field: str, value: Any) -> Any:
    # The key is asked for only when there is a plaintext secret to seal.
    def seal(path: Path_, v: Any) -> Any:
        return v if _is_sealed(v) else box().seal(node_uuid, path, v)

    return _map_secrets(field, value, seal)


def sealed_paths(field: str, value: Any) -> list[str]:
    """The paths in `value` whose secrets are stored sealed (in a loaded node: the unreadable ones)."""
    found: list[str] = []

    def note(path: Path_, v: Any) -> Any:
        if _is_sealed(v):
            found.append(_show(path))
        return v

    _map_secrets(field, value, note)
    return found


def unreadable(node: Node) -> list[str]:
    """The secrets of `node` that did not decrypt as it was loaded (or were saved since in sealed form)."""
    found: list[str] = attributes.instance_state(node).info.get(UNREADABLE, [])
    return found


def check_readable(node: Node, db: Database | None) -> None:
    """Raise SecretUnreadable if a secret of `node` could not be decrypted when it was loaded."""
    bad = unreadable(node)
    if bad:
        box = db.secrets if db is not None else None
        raise SecretUnreadable(node.uuid, bad, box.describe() if box else "(none loaded)")


def seal_columns(db: Database, node_uuid: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for a Core INSERT/UPDATE of a node: its secret-holding FIELDS sealed."""
    out = dict(values)
    for field in FIELDS:
        if out.get(field) is not None:
            out[field] = _seal_with(lambda: _require(db), node_uuid, field, out[field])
    return out


def seal_row(db: Database, row: Mapping[str, Any]) -> dict[str, Any]:
    return seal_columns(db, str(row["uuid"]), row)


def _require(db: Database | None) -> NodeSecrets:
    if db is None or db.secrets is None:
        # A database opened without its key would store BMC passwords in plaintext: refused.
        raise RuntimeError("node secrets written before the secret key was loaded (db.secrets.open_with_key)")
    return db.secrets


# --- the ORM seam -------------------------------------------------------------------------------


def _db_of(session: Session | None) -> Database | None:
    return None if session is None else session.info.get(SESSION_DB)


def _open_loaded(node: Node, db: Database | None, *, refresh: bool = False) -> None:
    box = db.secrets if db is not None else None
    state = attributes.instance_state(node)
    bad: list[str] = []
    for field in FIELDS:
        if field not in state.dict:
            continue
        value = state.dict[field]
        if box is None:
            # No key loaded (a Database used without open_with_key): whatever is sealed stays so.
            bad += sealed_paths(field, value)
            continue
        opened, failed = box.open_field(node.uuid, field, value)
        if opened is not value:
            set_committed_value(node, field, opened)
        bad += failed
    if refresh:
        # A refresh may reload one field only: what the other still holds sealed counts too.
        bad = [p for f in FIELDS for p in sealed_paths(f, state.dict.get(f))]
    if bad:
        state.info[UNREADABLE] = bad
        if box is not None:
            log.warning("node %s: %s cannot be decrypted with %s", node.uuid, ", ".join(bad), box.describe())
    else:
        state.info.pop(UNREADABLE, None)


@event.listens_for(Node, "load")
def _on_load(node: Node, context: Any) -> None:
    _open_loaded(node, _db_of(context.session))


@event.listens_for(Node, "refresh")
def _on_refresh(node: Node, context: Any, attrs: Any) -> None:
    # An ORM UPDATE that synchronizes the session by evaluation refreshes the objects it matched with
    # no query context (None): their session is the object's own.
    session = context.session if context is not None else attributes.instance_state(node).session
    _open_loaded(node, _db_of(session), refresh=True)


PENDING: Final = "bootforge.secrets.pending"


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    pending: list[tuple[Node, str, Any]] = []
    for obj in (*session.new, *session.dirty):
        if not isinstance(obj, Node):
            continue
        state = attributes.instance_state(obj)
        for field in FIELDS:
            if field not in state.dict:
                continue
            if not (obj in session.new or state.attrs[field].history.has_changes()):
                continue
            plain = state.dict[field]
            sealed = _seal_with(lambda: _require(_db_of(session)), obj.uuid, field, plain)
            if sealed is not plain:
                setattr(obj, field, sealed)
                pending.append((obj, field, plain))
    if pending:
        session.info.setdefault(PENDING, []).extend(pending)


def note_unreadable(node: Node) -> None:
    """Record which of the node's secrets still do not decrypt, after a Core write of its columns."""
    info = attributes.instance_state(node).info
    still = [p for f in FIELDS for p in sealed_paths(f, getattr(node, f, None))]
    if still:
        info[UNREADABLE] = still
    else:
        info.pop(UNREADABLE, None)


def _restore(session: Session) -> None:
    # The object goes on with its plaintext, recorded as what the row holds (not a pending change).
    for obj, field, plain in session.info.pop(PENDING, ()):
        set_committed_value(obj, field, plain)
        # What is still sealed now was kept as it was: values that do not decrypt.
        info = attributes.instance_state(obj).info
        still = [p for f in FIELDS for p in sealed_paths(f, getattr(obj, f, None))]
        if still:
            info[UNREADABLE] = still
        else:
            info.pop(UNREADABLE, None)


@event.listens_for(Session, "after_flush_postexec")
def _after_flush(session: Session, _context: Any) -> None:
    _restore(session)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, _previous: Any) -> None:
    _restore(session)


# --- start-up: the key, its record, and plaintext left from before --------------------------------


async def open_with_key(db: Database, key_path: Path) -> NodeSecrets:
    """Load the key for `db` (creating it only for a database that has no secrets yet), check it is the
    one the database's secrets were sealed with, seal any plaintext secret left from an older
    bootforge, and hand the key to `db`. Raises SecretKeyRefused with what to do otherwise.

    One write transaction (on PostgreSQL under the migrations' advisory lock): conductors starting
    together agree on one key record.
    """
    async with db.write_conn() as conn:
        await _lock(conn)
        recorded = await _recorded(conn)
        # A file read at start-up (once), like the key itself: not worth a thread.
        missing = not key_path.exists()  # noqa: ASYNC240
        if missing and (recorded is not None or await _count_sealed(conn)):
            raise SecretKeyRefused(
                f"the secret key file {key_path} is missing, and this database's secrets are encrypted "
                f"with key {recorded or '(not recorded)'}: restore {key_path} from the backup taken with "
                "the database, or give this conductor the fleet's key file (secret_key_file); a new key "
                "could not read them"
            )
        try:
            key = keys.load_or_create(key_path)
        except keys.KeyFileError as exc:
            raise SecretKeyRefused(str(exc)) from None
        box = NodeSecrets(key)
        if recorded is None:
            if await _count_sealed(conn):
                raise SecretKeyRefused(
                    f"this database holds encrypted secrets but no record of their key; {key_path} "
                    f"(fingerprint {box.fingerprint}) may not be it: restore the key file and the "
                    "database from one backup"
                )
            await conn.execute(
                SECRET_KEYS.insert().values(purpose=PURPOSE, fingerprint=box.fingerprint, created_at=utcnow())
            )
        elif recorded != box.fingerprint:
            raise SecretKeyRefused(
                f"the secret key file {key_path} (fingerprint {box.fingerprint}) is not the key this "
                f"database's secrets are encrypted with (fingerprint {recorded}): use the key file "
                "backed up with this database, or change keys with `bootforge secrets rotate`"
            )
        sealed = await _reseal_all(conn, box, box)
    if sealed.values:
        log.warning(
            "encrypted %d plaintext secret(s) of %d node(s) with %s",
            sealed.values,
            sealed.nodes,
            box.describe(),
        )
    db.secrets = box
    return box


class Resealed:
    def __init__(self) -> None:
        self.nodes = 0
        self.values = 0
        self.unreadable: list[str] = []


async def rotate(db: Database, old: keys.SecretKey, new: keys.SecretKey) -> Resealed:
    """Re-encrypt every node's secrets from `old` to `new` and record `new`, in one transaction.

    Refuses (nothing changed) if `old` is not the recorded key or any value does not decrypt.
    """
    old_box, new_box = NodeSecrets(old), NodeSecrets(new)
    async with db.write_conn() as conn:
        await _lock(conn)
        recorded = await _recorded(conn)
        if recorded is not None and recorded != old_box.fingerprint:
            raise SecretKeyRefused(
                f"the current key {old_box.describe()} is not the one recorded for this database "
                f"(fingerprint {recorded})"
            )
        done = await _reseal_all(conn, old_box, new_box)
        if done.unreadable:
            raise SecretKeyRefused(
                "not rotated, nothing changed: these values do not decrypt with the current key: "
                + "; ".join(done.unreadable)
                + " (set them again with PATCH, then rotate)"
            )
        table = SECRET_KEYS
        if recorded is None:
            await conn.execute(
                table.insert().values(purpose=PURPOSE, fingerprint=new_box.fingerprint, created_at=utcnow())
            )
        else:
            await conn.execute(
                table.update()
                .where(table.c.purpose == PURPOSE)
                .values(fingerprint=new_box.fingerprint, created_at=utcnow())
            )
    return done


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK})


async def _recorded(conn: AsyncConnection) -> str | None:
    table = SECRET_KEYS
    found = await conn.scalar(select(table.c.fingerprint).where(table.c.purpose == PURPOSE))
    return None if found is None else str(found)


async def _count_sealed(conn: AsyncConnection) -> int:
    rows = await conn.execute(
        select(NODES.c.driver_info, NODES.c.instance_info, NODES.c.driver_internal_info)
    )
    return sum(len(sealed_paths(f, v)) for row in rows for f, v in zip(FIELDS, row, strict=True))


async def _reseal_all(conn: AsyncConnection, old: NodeSecrets, new: NodeSecrets) -> Resealed:
    """Open every sealed value with `old` and seal it (and every plaintext secret) with `new`.

    With old is new, sealed values are left untouched and only plaintext is sealed (start-up).
    """
    done = Resealed()
    rows = (
        await conn.execute(
            select(
                NODES.c.id,
                NODES.c.uuid,
                NODES.c.driver_info,
                NODES.c.instance_info,
                NODES.c.driver_internal_info,
            )
        )
    ).all()
    for node_id, node_uuid, *values in rows:
        changes: dict[str, Any] = {}
        for field, value in zip(FIELDS, values, strict=True):
            if value is None:
                continue
            plain = value
            if old is not new:
                plain, bad = old.open_field(node_uuid, field, value)
                done.unreadable += [f"node {node_uuid} {p}" for p in bad]
            count = [0]

            def seal(path: Path_, v: Any, uuid: str = node_uuid, count: list[int] = count) -> Any:
                if _is_sealed(v):
                    return v
                count[0] += 1
                return new.seal(uuid, path, v)

            sealed = _map_secrets(field, plain, seal)
            if old is new and sealed is value:
                continue
            changes[field] = sealed
            done.values += count[0]
        if changes:
            done.nodes += 1
            await conn.execute(update(NODES).where(NODES.c.id == node_id).values(**changes))
    await _reseal_volume_targets(conn, old, new, done)
    return done


# Volume targets (conductor/volumes.py) keep secret-named properties (the CHAP auth_password) sealed
# under the same key, bound to the target's UUID and this path prefix.
VOLUME_PATH: Final = ("volume_target", "properties")


def map_volume_secrets(props: Any, fn: Callable[[Path_, Any], Any], path: Path_ = VOLUME_PATH) -> Any:
    """A volume target's properties with fn(path, v) applied to each set secret-named value."""
    if isinstance(props, Mapping):
        return {
            k: fn((*path, k), v) if _secret_key(k) and _is_set(v) else map_volume_secrets(v, fn, (*path, k))
            for k, v in props.items()
        }
    if isinstance(props, list):
        return [map_volume_secrets(v, fn, (*path, i)) for i, v in enumerate(props)]
    return props


async def _reseal_volume_targets(
    conn: AsyncConnection, old: NodeSecrets, new: NodeSecrets, done: Resealed
) -> None:
    table = cast(Table, VolumeTarget.__table__)
    rows = (await conn.execute(select(table.c.id, table.c.uuid, table.c.properties))).all()
    for target_id, target_uuid, props in rows:
        if not props:
            continue
        count = [0]

        def reseal(path: Path_, v: Any, uuid: str = target_uuid, count: list[int] = count) -> Any:
            if _is_sealed(v):
                if old is new:
                    return v
                try:
                    v = old.open(uuid, path, v)
                except ValueError:
                    done.unreadable.append(f"volume target {uuid} {_show(path)}")
                    return v
            count[0] += 1
            return new.seal(uuid, path, v)

        resealed = map_volume_secrets(props, reseal)
        if count[0]:
            done.values += count[0]
            await conn.execute(update(table).where(table.c.id == target_id).values(properties=resealed))
