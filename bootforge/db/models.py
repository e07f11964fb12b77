"""SQLAlchemy tables. The schema is changed only through Alembic migrations (db/migrations).

These rows are bootforge's own; the Ironic wire shape is built from them in `api/` so that either can
change without the other.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations behave the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSON(none_as_null=True), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json}


class Timestamps:
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), onupdate=utcnow)


class Node(Timestamps, Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    driver: Mapped[str] = mapped_column(String(255))
    driver_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    driver_internal_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    instance_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    instance_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resource_class: Mapped[str | None] = mapped_column(String(80), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(255))
    lessee: Mapped[str | None] = mapped_column(String(255))
    conductor_group: Mapped[str] = mapped_column(String(255), default="")

    provision_state: Mapped[str] = mapped_column(String(15), index=True)
    target_provision_state: Mapped[str | None] = mapped_column(String(15))
    provision_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    power_state: Mapped[str | None] = mapped_column(String(15))
    target_power_state: Mapped[str | None] = mapped_column(String(15))
    last_error: Mapped[str | None] = mapped_column(Text)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    fault: Mapped[str | None] = mapped_column(String(255))
    # The conductor holding the node's exclusive lock; NULL when unlocked.
    reservation: Mapped[str | None] = mapped_column(String(255), index=True)
    # Bumped by every reserve (a takeover too); the holder's writes require the one it got, so a
    # stalled holder's late writes after a takeover match no row (conductor/task.py, fencing).
    lock_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    conductor_affinity: Mapped[str | None] = mapped_column(String(255))
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    protected_reason: Mapped[str | None] = mapped_column(Text)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    retired_reason: Mapped[str | None] = mapped_column(Text)
    automated_clean: Mapped[bool | None] = mapped_column(Boolean)
    console_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    boot_mode: Mapped[str | None] = mapped_column(String(16))
    secure_boot: Mapped[bool | None] = mapped_column(Boolean)
    network_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    raid_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    target_raid_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    clean_step: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deploy_step: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inspection_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    inspection_finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    allocation_id: Mapped[int | None] = mapped_column(Integer)

    bios_interface: Mapped[str | None] = mapped_column(String(255))
    boot_interface: Mapped[str | None] = mapped_column(String(255))
    console_interface: Mapped[str | None] = mapped_column(String(255))
    deploy_interface: Mapped[str | None] = mapped_column(String(255))
    firmware_interface: Mapped[str | None] = mapped_column(String(255))
    inspect_interface: Mapped[str | None] = mapped_column(String(255))
    management_interface: Mapped[str | None] = mapped_column(String(255))
    network_interface: Mapped[str | None] = mapped_column(String(255))
    power_interface: Mapped[str | None] = mapped_column(String(255))
    raid_interface: Mapped[str | None] = mapped_column(String(255))
    rescue_interface: Mapped[str | None] = mapped_column(String(255))
    storage_interface: Mapped[str | None] = mapped_column(String(255))
    vendor_interface: Mapped[str | None] = mapped_column(String(255))


class NodeTrait(Base):
    __tablename__ = "node_traits"

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    trait: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Portgroup(Timestamps, Base):
    __tablename__ = "portgroups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    address: Mapped[str | None] = mapped_column(String(18), unique=True)
    mode: Mapped[str | None] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    standalone_ports_supported: Mapped[bool] = mapped_column(Boolean, default=True)
    internal_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Port(Timestamps, Base):
    __tablename__ = "ports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    address: Mapped[str] = mapped_column(String(18), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    portgroup_id: Mapped[int | None] = mapped_column(ForeignKey("portgroups.id"), index=True)
    pxe_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    local_link_connection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    physical_network: Mapped[str | None] = mapped_column(String(64))
    is_smartnic: Mapped[bool] = mapped_column(Boolean, default=False)
    internal_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Allocation(Timestamps, Base):
    __tablename__ = "allocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(15), default="allocating")
    last_error: Mapped[str | None] = mapped_column(Text)
    resource_class: Mapped[str | None] = mapped_column(String(80))
    traits: Mapped[list[Any]] = mapped_column(default=list)
    candidate_nodes: Mapped[list[Any]] = mapped_column(default=list)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    owner: Mapped[str | None] = mapped_column(String(255))
    conductor_affinity: Mapped[str | None] = mapped_column(String(255))


class Conductor(Timestamps, Base):
    __tablename__ = "conductors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), unique=True)
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    conductor_group: Mapped[str] = mapped_column(String(255), default="")
    hardware_types: Mapped[list[Any]] = mapped_column(default=list)
    # Refreshed by the conductor's heartbeat; a conductor silent for too long is taken over.
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NodeEvent(Base):
    """One line of a node's timeline: state changes, power actions, steps, netboot fetches, errors."""

    __tablename__ = "node_events"
    __table_args__ = (Index("ix_node_events_node_id_id", "node_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    severity: Mapped[str] = mapped_column(String(8), default="info")
    event_type: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(Text)
    conductor: Mapped[str | None] = mapped_column(String(255))
    user: Mapped[str | None] = mapped_column(String(255))
    # A sign that the machine network-booted: DHCP offered it a boot file, it fetched over TFTP, or it
    # fetched a boot script or loader over HTTP. The deploy's hand-off watch looks for these.
    network_boot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Lease(Base):
    """A DHCP lease of bootforge's DHCP server in full mode, keyed by address as the DHCP core keeps
    them: the newest record for an address replaces the older one."""

    __tablename__ = "dhcp_leases"

    ip: Mapped[str] = mapped_column(String(45), primary_key=True)
    mac: Mapped[str] = mapped_column(String(18), index=True)
    state: Mapped[str] = mapped_column(String(12))
    # Seconds since the epoch, on the clock the DHCP server runs on (what the core compares with).
    expires: Mapped[float] = mapped_column(Float)
    node_uuid: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NodeInventory(Base):
    """What inspection found on a node (the agent's inventory), one row per node, replaced on each run."""

    __tablename__ = "node_inventories"

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Facts that are not hardware (e.g. LLDP raw TLVs, the agent's version), kept apart like Ironic does.
    plugin_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AgentSession(Base):
    """The deploy agent of a node's current ramdisk boot: its token, when it was last heard, and the
    outcome of the command it was given. Kept apart from the node row, which the conductor rewrites
    while it holds the node's lock: the agent's calls must never race those writes."""

    __tablename__ = "agent_sessions"

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    # The ramdisk boot the token belongs to (driver_internal_info["agent_boot"] when it was issued).
    boot_id: Mapped[str] = mapped_column(String(36))
    # sha256 of the token: the token itself is known only to the agent.
    token_hash: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    agent_address: Mapped[str | None] = mapped_column(String(64))
    # The command the agent reported on last, and what it said.
    command_id: Mapped[str | None] = mapped_column(String(36))
    # running | succeeded | failed
    command_status: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class Image(Timestamps, Base):
    """An OS image in bootforge's catalogue. `disk_format` is what inspecting the file found, never
    what its name says; `stream_*` describe the form the agent is sent (a qcow2 is converted once)."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # Where the operator said it came from: a file path or a URL.
    source: Mapped[str] = mapped_column(Text)
    # raw, qcow2, zstd (raw compressed with zstd)
    disk_format: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer().with_variant(BigInteger(), "postgresql"))
    # Bytes the image occupies once written to a disk (a raw image's size, a qcow2's virtual size).
    virtual_size: Mapped[int] = mapped_column(Integer().with_variant(BigInteger(), "postgresql"))
    sha256: Mapped[str] = mapped_column(String(64))
    sha512: Mapped[str] = mapped_column(String(128))
    # The file served to the agent, relative to the netboot root, with its format and digests.
    stream_path: Mapped[str] = mapped_column(Text)
    stream_format: Mapped[str] = mapped_column(String(16))
    stream_size: Mapped[int] = mapped_column(Integer().with_variant(BigInteger(), "postgresql"))
    stream_sha256: Mapped[str] = mapped_column(String(64))
    stream_sha512: Mapped[str] = mapped_column(String(128))
    # ready | importing | failed (with the reason in `error`)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    error: Mapped[str | None] = mapped_column(Text)
    # x86_64 or aarch64 (Ironic's names), as the operator said or as found in the image's EFI System
    # Partition; NULL when neither told it: deployable to a node of any architecture.
    cpu_arch: Mapped[str | None] = mapped_column(String(16))


class SecretKeyRecord(Base):
    """Which key file encrypted this database's secrets: its fingerprint (never the key), per purpose.

    A conductor started with another key file, or none, refuses to start (bootforge.db.secrets).
    """

    __tablename__ = "secret_keys"

    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventOutbox(Base):
    """An outbound event (a CloudEvent for one webhook target) waiting for delivery.

    Written in the same transaction as the state change it reports, so an event is sent if and only
    if the change happened, and survives a restart; the conductor that wrote it delivers it
    (observe/webhooks.py) and deletes it once the target accepted it or it was given up.
    """

    __tablename__ = "event_outbox"
    __table_args__ = (Index("ix_event_outbox_target_conductor_id", "target", "conductor", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    conductor: Mapped[str] = mapped_column(String(255))
    node_uuid: Mapped[str] = mapped_column(String(36))
    # The CloudEvent, JSON, as it is POSTed (the signature is made per attempt, with its timestamp).
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Rollout(Base):
    """A rolling re-provisioning of a set of active nodes (conductor/rollouts.py), resumable.

    `nodes` holds one entry per selected node, in rollout order: {uuid, name, status, error,
    rebuild_at}; the conductor that runs it is `conductor` and a restarted or surviving conductor
    takes a `running` rollout back from there.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    image: Mapped[str] = mapped_column(Text)
    batch: Mapped[str] = mapped_column(String(16))
    batch_size: Mapped[int] = mapped_column(Integer)
    max_failures: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    drain_hook: Mapped[str | None] = mapped_column(String(64))
    undrain_hook: Mapped[str | None] = mapped_column(String(64))
    nodes: Mapped[list[Any]] = mapped_column(default=list)
    last_error: Mapped[str | None] = mapped_column(Text)
    conductor: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DiscoveryRule(Timestamps, Base):
    """A discovery rule (conductor/discovery_rules.py): conditions on an inventory -> actions on the node,
    run in priority order (highest first) on discovery and on every inspection."""

    __tablename__ = "discovery_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    match: Mapped[str] = mapped_column(String(8), default="all")
    conditions: Mapped[list[Any]] = mapped_column(default=list)
    actions: Mapped[list[Any]] = mapped_column(default=list)


class MachineSerial(Base):
    """The system serial number a node reported (inventory.system_vendor.serial_number): one node per
    serial, enforced by the primary key, so two conductors discovering the same machine at once
    cannot enrol it twice."""

    __tablename__ = "machine_serials"

    serial: Mapped[str] = mapped_column(String(255), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# Plain tables for hot-path Core statements: ORM-enabled DML (insert(Node)) takes the slower
# bulk-ORM route for every row; the tables compile once and are cached.
NODES: Table = Node.__table__  # type: ignore[assignment]
PORTS: Table = Port.__table__  # type: ignore[assignment]
NODE_EVENTS: Table = NodeEvent.__table__  # type: ignore[assignment]
EVENT_OUTBOX: Table = EventOutbox.__table__  # type: ignore[assignment]


class VolumeConnector(Timestamps, Base):
    """How a node reaches storage (Ironic's volume connector, API 1.32): its initiator IQN, a WWPN, an IP.

    `type` + `connector_id` is unique across all nodes: one initiator name belongs to one machine.
    """

    __tablename__ = "volume_connectors"
    __table_args__ = (UniqueConstraint("type", "connector_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    # Deleted with their node, as in Ironic.
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    # iqn | ip | mac | wwnn | wwpn | port | portgroup
    type: Mapped[str] = mapped_column(String(32))
    connector_id: Mapped[str] = mapped_column(String(255))
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)


class VolumeTarget(Timestamps, Base):
    """A volume a node uses (Ironic's volume target, API 1.32); boot_index 0 is the one it boots from.

    `properties` holds the connection (iSCSI: target_iqn, target_portal, target_lun, auth_method,
    auth_username, auth_password); its secret-named values are stored sealed (conductor/volumes.py).
    """

    __tablename__ = "volume_targets"
    __table_args__ = (UniqueConstraint("node_id", "boot_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    volume_type: Mapped[str] = mapped_column(String(64))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    boot_index: Mapped[int] = mapped_column(Integer)
    volume_id: Mapped[str] = mapped_column(String(255))
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
