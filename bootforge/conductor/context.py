"""What the conductor's services and node tasks need of the conductor, as a narrow interface.

The Conductor (conductor.py) builds the services (agent, allocations, ports) and runs node work; the
services and NodeTask take this protocol instead of the Conductor class, so they see only the database,
the settings, the drivers, and how to start background work or wake a waiting agent, and conductor.py
is the only module that knows them all (no import cycle back into it). Tests can hand a service a small
context of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bootforge.conductor.allocations import AllocationService
    from bootforge.conductor.task import NodeTask
    from bootforge.config import Settings
    from bootforge.db.engine import Database
    from bootforge.drivers.hardware import Drivers
    from bootforge.images.catalogue import ImageCatalogue
    from bootforge.observe.events import Observer

Work = Callable[..., Awaitable[None]]


class ConductorContext(Protocol):
    @property
    def db(self) -> Database: ...

    @property
    def host(self) -> str:
        """This conductor's name: node reservations and timeline events carry it."""
        ...

    @property
    def settings(self) -> Settings: ...

    @property
    def drivers(self) -> Drivers: ...

    @property
    def images(self) -> ImageCatalogue: ...

    @property
    def allocations(self) -> AllocationService: ...

    @property
    def observer(self) -> Observer:
        """Metrics and outbound events: state changes are staged and published through it."""
        ...

    def spawn(self, task: NodeTask, fn: Work, *args: Any) -> None:
        """Run `fn(task, *args)` in the background; the node's lock is released when it ends."""
        ...

    def agent_wakeup(self, node_id: int) -> None:
        """A command was queued for the node's agent: answer its long-poll now."""
        ...

    def state_changed(self) -> None:
        """A node changed provision state (the netboot view refreshes)."""
        ...

    async def agent_reported(self, node_id: int) -> None:
        """An agent reported its command's outcome: carry on here if this process owns the node,
        else wake the node's owner (conductor/handoff.py)."""
        ...
