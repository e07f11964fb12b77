"""Reading a node's timeline straight from the database, and waiting for the servers' callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import select

from bootforge.db.models import Node, NodeEvent

from .service import InProcess


async def timeline(bf: InProcess, uuid: str, kind: str) -> list[str]:
    """The node's events of `kind` (event_type), oldest first."""
    async with bf.conductor.db.read() as s:
        node_id = await s.scalar(select(Node.id).where(Node.uuid == uuid))
        rows = await s.scalars(
            select(NodeEvent.event)
            .where(NodeEvent.node_id == node_id, NodeEvent.event_type == kind)
            .order_by(NodeEvent.id)
        )
        return list(rows)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the servers' event callbacks (the fence: the events the test's requests cause)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - the callbacks are the servers', not the test's
            await asyncio.sleep(0.01)
