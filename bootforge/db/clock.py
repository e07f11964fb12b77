"""The database's clock, for liveness: heartbeats are written with it and judged against it in SQL.

Each host's clock may be off (a VM resumed from a snapshot, NTP not yet synced); the database's is
one clock shared by every conductor, so "this conductor's heartbeat is N seconds old" means the same
to all of them. On SQLite the value is written in the text form SQLAlchemy stores datetimes in
(microseconds, UTC), so that it compares (as text) with timestamps written from Python.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f000"


class db_now(FunctionElement[Any]):
    """The database's current time, `seconds_ago` seconds back (0 for now)."""

    type = DateTime(timezone=True)
    # The interval is part of the SQL text, not a parameter: statements holding it are not cached.
    inherit_cache = False

    def __init__(self, seconds_ago: float = 0.0) -> None:
        super().__init__()
        self.seconds_ago = float(seconds_ago)


@compiles(db_now)
def _default(element: db_now, compiler: Any, **kw: Any) -> str:
    # PostgreSQL (and the rest): the statement's own time, minus the interval.
    if element.seconds_ago:
        return f"(statement_timestamp() - make_interval(secs => {element.seconds_ago!r}))"
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    if element.seconds_ago:
        return f"strftime('{_SQLITE_FORMAT}', 'now', '-{element.seconds_ago!r} seconds')"
    return f"strftime('{_SQLITE_FORMAT}', 'now')"


def heartbeat_fresh(
    column: ColumnElement[Any] | InstrumentedAttribute[Any], offline_after: float
) -> ColumnElement[bool]:
    """`column` (a heartbeat time) is at most `offline_after` seconds old by the database's clock."""
    return column >= db_now(offline_after)
