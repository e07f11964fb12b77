"""db.engine.is_connection_lost: which errors mean "the database went away" (resume the work once it
answers) and which mean the work itself failed (fail the node with the reason)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.exc import DBAPIError, IntegrityError

from bootforge.db.engine import Database, is_connection_lost, wait_until_reachable


class CannotConnectNowError(Exception):
    """Stands in for asyncpg's exception of that name (matched by name: asyncpg is optional)."""


def raised_in(module: str, exc: BaseException) -> BaseException:
    """`exc` as raised by code of `module` (its traceback's frame names that module)."""
    scope: dict[str, object] = {"__name__": module, "exc": exc}
    # A function whose frame belongs to `module`, as if defined there.
    exec("def boom():\n    raise exc\n", scope)
    try:
        scope["boom"]()  # type: ignore[operator]
    except BaseException as caught:
        return caught
    raise AssertionError("not raised")


def test_lost_connections_are_recognised() -> None:
    invalidated = DBAPIError("COMMIT", None, Exception("connection closed"), connection_invalidated=True)
    assert is_connection_lost(invalidated)
    assert is_connection_lost(DBAPIError("SELECT 1", None, CannotConnectNowError("starting up")))
    # asyncpg raises a refused connect unwrapped, from inside its own code.
    assert is_connection_lost(raised_in("asyncpg.connect_utils", ConnectionRefusedError(111, "refused")))
    # Wrapped further by other code: the cause chain is followed.
    outer = RuntimeError("save failed")
    outer.__cause__ = invalidated
    assert is_connection_lost(outer)


def test_other_errors_are_not_outages() -> None:
    # A BMC driver's own refused connection is the machine's problem, not the database's.
    assert not is_connection_lost(
        raised_in("bootforge.drivers.redfish", ConnectionRefusedError(111, "refused"))
    )
    assert not is_connection_lost(IntegrityError("INSERT", None, Exception("duplicate key")))
    assert not is_connection_lost(TimeoutError())
    assert not is_connection_lost(ValueError("bad"))


async def test_waiting_for_a_reachable_database(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite'}")
    try:
        assert await wait_until_reachable(db, give_up_after=1.0)
    finally:
        await db.close()
    unreachable = Database("postgresql+asyncpg://u:p@127.0.0.1:1/none")
    try:
        began = asyncio.get_running_loop().time()
        assert not await wait_until_reachable(unreachable, give_up_after=0.5, first_delay=0.1)
        assert asyncio.get_running_loop().time() - began < 5
    finally:
        await unreachable.close()
