"""Group commit for the DHCP servers (v4 and v6): the lease writes of everything queued while one
commit runs go into the next, and replies held for their write are sent after it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

Item = TypeVar("Item")


class GroupCommit(Generic[Item]):
    """One long-lived task woken by an Event, so a batch costs no task creation. `commit(batch)`
    writes a batch and sends what it held; `close` still commits (and so sends) what is queued."""

    def __init__(self, commit: Callable[[list[Item]], Awaitable[None]], name: str) -> None:
        self._commit = commit
        self._name = name
        self._pending: list[Item] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    def add(self, item: Item) -> None:
        self._pending.append(item)

    def kick(self) -> None:
        """Wake the committer if anything is queued (once per burst of datagrams, not per item)."""
        if self._pending:
            self._wake.set()

    async def close(self) -> None:
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task

    async def _loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)
