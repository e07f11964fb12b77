"""The dashboard's reads (bootforge/web): one page of the fleet, filtered and searched, and a node's ports.

Kept next to conductor/reads.py and for the same reason: the web layer shapes pages and runs no SQL.
A fleet page is one query for the rows (LIMIT page size + 1, so "is there a next page" costs no count)
and one COUNT with the same filters; neither reads a column the table does not show, so a fleet of
10,000 nodes answers as fast as one of ten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select

from bootforge.db.engine import Database
from bootforge.db.models import Node, Port

__all__ = ["FLEET_COLUMNS", "FleetFilter", "FleetPage", "fleet_page", "node_ports"]

FLEET_COLUMNS = (
    "id",
    "uuid",
    "name",
    "driver",
    "provision_state",
    "target_provision_state",
    "power_state",
    "maintenance",
    "maintenance_reason",
    "resource_class",
    "reservation",
    "conductor_affinity",
    "last_error",
    "provision_updated_at",
)
MAX_PAGE_SIZE = 200
MAX_SEARCH = 64  # characters of a search term: names are at most 255, UUIDs 36, MACs 17
_MAC_CHARS = re.compile(r"^[0-9a-f:.-]+$")


@dataclass
class FleetFilter:
    """What the fleet view asks for; empty strings and None filter nothing."""

    provision_state: str = ""
    maintenance: bool | None = None
    driver: str = ""
    resource_class: str = ""
    search: str = ""  # part of a name, the start of a UUID, or the start of a port's MAC


@dataclass
class FleetPage:
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    has_next: bool = False


def _where(f: FleetFilter) -> list[Any]:
    where: list[Any] = []
    if f.provision_state:
        where.append(Node.provision_state == f.provision_state)
    if f.maintenance is not None:
        where.append(Node.maintenance.is_(f.maintenance))
    if f.driver:
        where.append(Node.driver == f.driver)
    if f.resource_class:
        where.append(Node.resource_class == f.resource_class)
    term = f.search.strip()[:MAX_SEARCH]
    if term:
        low = term.lower()
        matches = [Node.name.contains(term, autoescape=True), Node.uuid.startswith(low, autoescape=True)]
        if _MAC_CHARS.match(low):
            macs = select(Port.node_id).where(Port.address.startswith(low.replace("-", ":"), autoescape=True))
            matches.append(Node.id.in_(macs))
        where.append(or_(*matches))
    return where


async def fleet_page(db: Database, f: FleetFilter, page: int, size: int) -> FleetPage:
    """Page `page` (from 1) of `size` nodes matching `f`, in enrolment order, and how many match."""
    size = max(1, min(size, MAX_PAGE_SIZE))
    page = max(1, page)
    table: Any = Node.__table__
    where = _where(f)
    stmt = (
        select(*(table.c[c] for c in FLEET_COLUMNS))
        .where(*where)
        .order_by(Node.id)
        .offset((page - 1) * size)
        .limit(size + 1)
    )
    async with db.read_conn() as s:
        rows = [dict(r) for r in (await s.execute(stmt)).mappings().all()]
        total = int(await s.scalar(select(func.count()).select_from(Node).where(*where)) or 0)
    return FleetPage(rows[:size], total, len(rows) > size)


async def node_ports(db: Database, node_id: int) -> list[Port]:
    async with db.read() as s:
        return list((await s.scalars(select(Port).where(Port.node_id == node_id).order_by(Port.id))).all())
