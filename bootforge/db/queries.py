"""List queries with Ironic's pagination (limit + marker) and sorting, in SQLAlchemy Core.

Lists skip the ORM: building a thousand mapped objects costs more than the query itself, and the list
of nodes is what dashboards and schedulers poll.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase

from bootforge.errors import InvalidInput

MAX_LIMIT = 1000


def is_uuid(value: str) -> bool:
    """Whether an identifier in a URL is a UUID (else it is looked up as a name)."""
    try:
        uuidlib.UUID(value)
    except ValueError:
        return False
    return len(value) in (32, 36)


@dataclass
class Page:
    limit: int | None = None
    marker: str | None = None
    sort_key: str = "id"
    sort_dir: str = "asc"
    filters: list[Any] = field(default_factory=list)


def parse_limit(params: dict[str, str]) -> int | None:
    """The `limit` query parameter, capped at MAX_LIMIT (0: MAX_LIMIT); None when not given.

    Checked as text first: a value of thousands of digits is refused before int() spends time on it
    (or raises its own error), and none reaches the database's integer.
    """
    raw = params.get("limit")
    if raw is None:
        return None
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise InvalidInput(
            f"Invalid limit {shown!r}: must be a non-negative integer of at most 9 digits "
            f"(values over {MAX_LIMIT} mean {MAX_LIMIT})",
            "limit",
        )
    return min(int(text), MAX_LIMIT) or MAX_LIMIT


def parse_page(params: dict[str, str], sortable: set[str]) -> Page:
    page = Page()
    page.limit = parse_limit(params) or MAX_LIMIT
    page.marker = params.get("marker")
    page.sort_key = params.get("sort_key", "id")
    if page.sort_key not in sortable:
        raise InvalidInput(
            f"The sort_key value {page.sort_key!r} is an invalid field for sorting; "
            f"use one of: {', '.join(sorted(sortable))}",
            "sort_key",
        )
    page.sort_dir = params.get("sort_dir", "asc")
    if page.sort_dir not in ("asc", "desc"):
        raise InvalidInput(f"Invalid sort direction {page.sort_dir!r}: asc or desc", "sort_dir")
    return page


def parse_bool(params: dict[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    low = raw.strip().lower()
    if low in ("true", "1", "yes", "on", "y", "t"):
        return True
    if low in ("false", "0", "no", "off", "n", "f"):
        return False
    raise InvalidInput(f"Unrecognized value {raw!r} for {name}, acceptable values are true and false", name)


async def page_rows(
    s: AsyncSession | AsyncConnection, model: type[DeclarativeBase], columns: Sequence[Any], page: Page
) -> list[Any]:
    """Rows of `columns` from `model`'s table, filtered, sorted and cut at the marker."""
    table: Any = model
    sort_col = getattr(table, page.sort_key)
    stmt: Select[Any] = select(*columns).where(*page.filters)
    # NULLs sort first ascending and last descending on every database (SQLite and PostgreSQL
    # disagree by default), so a marker on a NULL value continues where the last page stopped.
    asc = page.sort_dir == "asc"
    if page.marker:
        marker = (await s.execute(select(sort_col, table.id).where(table.uuid == page.marker))).first()
        if marker is None:
            raise InvalidInput(f"The marker {page.marker} is not a known item", "marker")
        stmt = stmt.where(_after(sort_col, table.id, marker[0], marker[1], asc))
    column = table.__table__.c.get(page.sort_key)
    if column is not None and not column.nullable:
        # A column without NULLs (the default sort, id) is ordered plainly, so PostgreSQL walks its
        # index and stops at the limit; with NULLS FIRST it sorted the whole table for every page
        # (8.7 ms against 0.4 ms at 10,000 nodes, growing with the fleet).
        order = sort_col.asc() if asc else sort_col.desc()
        stmt = stmt.order_by(order, table.id.asc() if asc else table.id.desc())
    elif asc:
        stmt = stmt.order_by(sort_col.asc().nulls_first(), table.id.asc())
    else:
        stmt = stmt.order_by(sort_col.desc().nulls_last(), table.id.desc())
    if page.limit:
        stmt = stmt.limit(page.limit)
    return list((await s.execute(stmt)).mappings().all())


def _after(col: Any, id_col: Any, value: Any, marker_id: int, asc: bool) -> Any:
    """Rows after the marker (value, id) in the order built above."""
    if asc:
        if value is None:
            return or_(col.is_not(None), and_(col.is_(None), id_col > marker_id))
        return or_(col > value, and_(col == value, id_col > marker_id))
    if value is None:
        return and_(col.is_(None), id_col < marker_id)
    return or_(col < value, and_(col == value, id_col < marker_id), col.is_(None))
