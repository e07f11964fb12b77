"""The read side of the API: every query a GET route needs, so that routes shape replies and never SQL.

Routes name what they want in plain terms (column names, `{column: value}` equality filters, the
list query parameters) and get rows back as mappings or ORM rows; the SQL stays on this side of the
conductor, where tests/unit/test_layering.py keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase

from bootforge.db.engine import Database
from bootforge.db.models import (
    AgentSession,
    Allocation,
    Conductor,
    Node,
    NodeEvent,
    NodeInventory,
    NodeTrait,
    Portgroup,
)
from bootforge.db.queries import Page, is_uuid, page_rows, parse_bool
from bootforge.errors import InvalidInput

__all__ = [
    "agent_session",
    "allocation_uuids",
    "conductor",
    "conductors",
    "inventory",
    "node_event",
    "node_events",
    "node_events_newest",
    "node_row",
    "node_rows",
    "node_traits",
    "node_uuids",
    "portgroup_uuids",
    "rows",
]

NODE_STRING_FILTERS = (
    "provision_state",
    "driver",
    "resource_class",
    "conductor_group",
    "fault",
    "owner",
    "lessee",
    "instance_uuid",
)


def _columns(model: type[DeclarativeBase], names: Iterable[str]) -> list[Any]:
    table: Any = model.__table__
    return [table.c[n] for n in names]


def _equal(model: type[DeclarativeBase], equal: Mapping[str, Any] | None) -> list[Any]:
    return [getattr(model, name) == value for name, value in (equal or {}).items()]


async def rows(
    db: Database,
    model: type[DeclarativeBase],
    names: Iterable[str] | None,
    page: Page,
    equal: Mapping[str, Any] | None = None,
) -> list[Any]:
    """One page of `model`'s rows (`names` columns, None: all), where each `equal` column has its value."""
    columns = list(model.__table__.columns) if names is None else _columns(model, names)
    page.filters = [*page.filters, *_equal(model, equal)]
    async with db.read() as s:
        return await page_rows(s, model, columns, page)


def node_filters(params: Mapping[str, str]) -> list[Any]:
    """The node list's query-parameter filters (provision_state=, maintenance=, associated=, ...)."""
    filters: list[Any] = []
    for name in NODE_STRING_FILTERS:
        if name in params:
            filters.append(getattr(Node, name) == params[name])
    for name in ("maintenance", "retired"):
        value = parse_bool(dict(params), name)
        if value is not None:
            filters.append(getattr(Node, name).is_(value))
    associated = parse_bool(dict(params), "associated")
    if associated is not None:
        filters.append(Node.instance_uuid.is_not(None) if associated else Node.instance_uuid.is_(None))
    if "description_contains" in params:
        filters.append(Node.description.contains(params["description_contains"]))
    if params.get("chassis_uuid"):
        filters.append(Node.id.is_(None))  # bootforge has no chassis: nothing matches
    return filters


async def node_rows(db: Database, names: Iterable[str], page: Page, params: Mapping[str, str]) -> list[Any]:
    """One page of nodes (`names` columns) matching the list query parameters.

    Core rows on the read connection: building a thousand mapped objects costs more than the query.
    """
    page.filters = [*page.filters, *node_filters(params)]
    async with db.read_conn() as s:
        return await page_rows(s, Node, _columns(Node, names), page)


async def node_row(db: Database, names: Iterable[str], ident: str) -> Any:
    """One node's `names` columns by UUID or name, or None."""
    where = Node.uuid == ident if is_uuid(ident) else Node.name == ident
    async with db.read_conn() as s:
        return (await s.execute(select(*_columns(Node, names)).where(where))).mappings().first()


async def node_traits(db: Database, node_ids: Iterable[int]) -> dict[int, list[str]]:
    """Each node's traits, sorted (an empty list for a node without any)."""
    ids = list(node_ids)
    traits: dict[int, list[str]] = {i: [] for i in ids}
    async with db.read_conn() as s:
        for node_id, trait in await s.execute(
            select(NodeTrait.node_id, NodeTrait.trait).where(NodeTrait.node_id.in_(ids))
        ):
            traits[node_id].append(trait)
    return {k: sorted(v) for k, v in traits.items()}


async def _uuids(db: Database, model: Any, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    async with db.read_conn() as s:
        return {i: u for i, u in (await s.execute(select(model.id, model.uuid).where(model.id.in_(wanted))))}


async def allocation_uuids(db: Database, allocation_ids: Iterable[int | None]) -> dict[int, str]:
    return await _uuids(db, Allocation, allocation_ids)


async def node_uuids(db: Database, node_ids: Iterable[int | None]) -> dict[int, str]:
    return await _uuids(db, Node, node_ids)


async def portgroup_uuids(db: Database, group_ids: Iterable[int | None]) -> dict[int, str]:
    return await _uuids(db, Portgroup, group_ids)


async def conductors(db: Database) -> list[Conductor]:
    async with db.read() as s:
        return list((await s.scalars(select(Conductor).order_by(Conductor.hostname))).all())


async def conductor(db: Database, hostname: str) -> Conductor | None:
    async with db.read() as s:
        return await s.scalar(select(Conductor).where(Conductor.hostname == hostname))


async def inventory(db: Database, node_id: int) -> NodeInventory | None:
    async with db.read() as s:
        return await s.get(NodeInventory, node_id)


async def node_events(db: Database, node_id: int, marker: str | None, limit: int | None) -> list[NodeEvent]:
    """A node's timeline, oldest first, after the event `marker` (a UUID), at most `limit` events."""
    stmt = select(NodeEvent).where(NodeEvent.node_id == node_id).order_by(NodeEvent.id)
    async with db.read() as s:
        if marker:
            marker_id = await s.scalar(select(NodeEvent.id).where(NodeEvent.uuid == marker))
            if marker_id is None:
                raise InvalidInput(f"The marker {marker} is not a known event", "marker")
            stmt = stmt.where(NodeEvent.id > marker_id)
        if limit:
            stmt = stmt.limit(limit)
        return list((await s.scalars(stmt)).all())


async def node_event(db: Database, node_id: int, event_uuid: str) -> NodeEvent | None:
    async with db.read() as s:
        stmt = select(NodeEvent).where(NodeEvent.node_id == node_id, NodeEvent.uuid == event_uuid)
        return await s.scalar(stmt)


async def node_events_newest(db: Database, node_id: int, limit: int) -> list[NodeEvent]:
    """A node's newest `limit` timeline events, oldest first (what `node why` reads)."""
    stmt = select(NodeEvent).where(NodeEvent.node_id == node_id).order_by(NodeEvent.id.desc()).limit(limit)
    async with db.read() as s:
        return list(reversed((await s.scalars(stmt)).all()))


async def agent_session(db: Database, node_id: int) -> AgentSession | None:
    """The node's agent session (its current ramdisk boot's agent: last heard, command, progress)."""
    async with db.read() as s:
        return await s.get(AgentSession, node_id)
