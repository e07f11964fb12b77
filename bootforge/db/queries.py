"""List queries with Ironic's pagination (limit + marker) and sorting, in SQLAlchemy Core.

Lists skip the ORM: building a thousand mapped objects costs more than the query itself, and the list
of nodes is what dashboards and schedulers poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase

from bootforge.errors import InvalidInput

MAX_LIMIT = 1000


@dataclass
class Page:
    limit: int | None = None
    marker: str | None = None
    sort_key: str = "id"
    sort_dir: str = "asc"
    filters: list[Any] = field(default_factory=list)


def parse_page(params: dict[str, str], sortable: set[str]) -> Page:
    page = Page()
    if "limit" in params:
        try:
            page.limit = int(params["limit"])
        except ValueError:
            raise InvalidInput(f"Invalid limit {params['limit']!r}: must be an integer", "limit") from None
        if page.limit < 0:
            raise InvalidInput("Value must be a non-negative integer", "limit")
        page.limit = min(page.limit, MAX_LIMIT) or MAX_LIMIT
    else:
        page.limit = MAX_LIMIT
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
    if page.marker:
        marker = (await s.execute(select(sort_col, table.id).where(table.uuid == page.marker))).first()
        if marker is None:
            raise InvalidInput(f"The marker {page.marker} is not a known item", "marker")
        value, marker_id = marker
        after = sort_col > value if page.sort_dir == "asc" else sort_col < value
        tie = table.id > marker_id if page.sort_dir == "asc" else table.id < marker_id
        stmt = stmt.where(or_(after, and_(sort_col == value, tie)))
    order = [sort_col.asc(), table.id.asc()] if page.sort_dir == "asc" else [sort_col.desc(), table.id.desc()]
    stmt = stmt.order_by(*order)
    if page.limit:
        stmt = stmt.limit(page.limit)
    return list((await s.execute(stmt)).mappings().all())
