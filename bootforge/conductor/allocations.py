"""Allocations: pick an available node by resource class, traits and candidates, and reserve it.

Unlike Ironic, which loads every candidate and filters traits in Python, the trait superset test runs in
the database (a GROUP BY over node_traits), so scheduling cost does not grow with the fleet in Python.
Candidates are shuffled so that parallel allocations rarely race for the same node; a lost race simply
tries the next candidate.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm.attributes import set_committed_value

from bootforge.conductor import states
from bootforge.db.models import Allocation, Node, NodeTrait, utcnow
from bootforge.db.queries import is_uuid
from bootforge.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from bootforge.conductor.context import ConductorContext
    from bootforge.conductor.task import NodeTask


class AllocationService:
    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor

    @property
    def db(self) -> Any:
        return self.conductor.db

    async def get(self, ident: str) -> Allocation:
        column = Allocation.uuid if is_uuid(ident) else Allocation.name
        async with self.db.read() as s:
            row: Allocation | None = await s.scalar(select(Allocation).where(column == ident))
        if row is None:
            raise NotFound(f"Allocation {ident} could not be found.")
        return row

    async def create(self, body: dict[str, Any]) -> Allocation:
        if body.get("node") is not None:
            # Ironic's backfill (1.58) records an allocation for an already deployed node; until
            # bootforge implements it, refuse it rather than allocate some other node.
            raise InvalidInput(
                "Backfilling an allocation for a given node is not supported; give resource_class "
                "(and optionally traits and candidate_nodes) instead",
                "node",
            )
        rc = body.get("resource_class")
        if not rc:
            raise InvalidInput("resource_class is required", "resource_class")
        traits = body.get("traits") or []
        if not isinstance(traits, list) or not all(isinstance(t, str) for t in traits):
            raise InvalidInput("traits must be a list of strings", "traits")
        if body.get("uuid") is not None and not is_uuid(str(body["uuid"])):
            raise InvalidInput(f"Expected a UUID but received {body['uuid']}.", "uuid")
        candidates = await self._resolve_candidates(body.get("candidate_nodes") or [])
        row = Allocation(
            uuid=body.get("uuid") or str(uuidlib.uuid4()),
            name=body.get("name"),
            resource_class=rc,
            traits=traits,
            candidate_nodes=candidates,
            extra=body.get("extra") or {},
            owner=body.get("owner"),
            state="allocating",
            created_at=utcnow(),
        )
        async with self.db.write() as s:
            # `is not None`: "" is a name too, unique in the table like any other.
            if row.name is not None and await s.scalar(
                select(Allocation.id).where(Allocation.name == row.name)
            ):
                raise Conflict(f"An allocation with name {row.name} already exists.")
            if await s.scalar(select(Allocation.id).where(Allocation.uuid == row.uuid)):
                raise Conflict(f"An allocation with UUID {row.uuid} already exists.")
            s.add(row)
            await s.commit()
        await self._allocate(row)
        # Re-read: columns never set on this instance (node_id, last_error, updated_at) are not loaded.
        async with self.db.read() as s:
            fresh: Allocation = await s.get_one(Allocation, row.id)
        return fresh

    async def _resolve_candidates(self, idents: list[Any]) -> list[str]:
        if not isinstance(idents, list):
            raise InvalidInput("candidate_nodes must be a list of node UUIDs or names", "candidate_nodes")
        uuids = []
        async with self.db.read() as s:
            for ident in idents:
                column = Node.uuid if is_uuid(str(ident)) else Node.name
                found = await s.scalar(select(Node.uuid).where(column == str(ident)))
                if found is None:
                    raise InvalidInput(f"candidate node {ident} could not be found", "candidate_nodes")
                uuids.append(found)
        return uuids

    async def _allocate(self, row: Allocation) -> None:
        query = select(Node.id, Node.uuid).where(
            Node.provision_state == states.AVAILABLE,
            Node.maintenance.is_(False),
            Node.instance_uuid.is_(None),
            Node.allocation_id.is_(None),
            Node.reservation.is_(None),
            Node.power_state.is_not(None),
        )
        if row.resource_class:
            query = query.where(Node.resource_class == row.resource_class)
        if row.candidate_nodes:
            query = query.where(Node.uuid.in_(row.candidate_nodes))
        if row.traits:
            having = (
                select(NodeTrait.node_id)
                .where(NodeTrait.trait.in_(row.traits))
                .group_by(NodeTrait.node_id)
                .having(func.count() == len(set(row.traits)))
            )
            query = query.where(Node.id.in_(having))
        async with self.db.read() as s:
            found = list((await s.execute(query)).all())
        random.shuffle(found)
        for node_id, node_uuid in found:
            if await self._claim(row, node_id, node_uuid):
                return
        reason = f"No available nodes match the resource class {row.resource_class}" + (
            f" and traits {', '.join(row.traits)}" if row.traits else ""
        )
        await self._set(row, state="error", last_error=reason)

    async def _claim(self, row: Allocation, node_id: int, node_uuid: str) -> bool:
        async with self.db.write() as s:
            result = await s.execute(
                update(Node)
                .where(
                    Node.id == node_id,
                    Node.allocation_id.is_(None),
                    Node.instance_uuid.is_(None),
                    Node.reservation.is_(None),
                    Node.provision_state == states.AVAILABLE,
                )
                .values(allocation_id=row.id, instance_uuid=row.uuid, updated_at=utcnow())
            )
            if result.rowcount != 1:
                await s.rollback()
                return False
            await s.execute(
                update(Allocation)
                .where(Allocation.id == row.id)
                .values(node_id=node_id, state="active", updated_at=utcnow())
            )
            await s.commit()
        set_committed_value(row, "node_id", node_id)
        set_committed_value(row, "state", "active")
        return True

    async def _set(self, row: Allocation, **values: Any) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(Allocation).where(Allocation.id == row.id).values(updated_at=utcnow(), **values)
            )
            await s.commit()
        for k, v in values.items():
            set_committed_value(row, k, v)

    async def update(self, row: Allocation, values: dict[str, Any]) -> Allocation:
        if "name" in values and values["name"] != row.name and values["name"] is not None:
            async with self.db.read() as s:
                if await s.scalar(select(Allocation.id).where(Allocation.name == values["name"])):
                    raise Conflict(f"An allocation with name {values['name']} already exists.")
        await self._set(row, **values)
        return row

    async def delete(self, row: Allocation) -> None:
        async with self.db.write() as s:
            if row.node_id is not None:
                node = await s.get(Node, row.node_id)
                if node is not None and node.provision_state == states.ACTIVE and not node.maintenance:
                    raise Conflict(
                        f"Cannot remove allocation {row.uuid} as its node {node.uuid} is in the active "
                        "state; undeploy the node first or set it to maintenance."
                    )
                await s.execute(
                    update(Node)
                    .where(Node.id == row.node_id, Node.allocation_id == row.id)
                    .values(allocation_id=None, instance_uuid=None)
                )
            await s.delete(await s.merge(row))
            await s.commit()

    async def release_for_node(self, task: NodeTask) -> None:
        """Undeploy ends the node's allocation, as in Ironic."""
        node = task.node
        if node.allocation_id is None:
            return
        async with self.db.write() as s:
            row = await s.get(Allocation, node.allocation_id)
            if row is not None:
                await s.delete(row)
            await s.commit()
        node.allocation_id = None
        await task.record("allocation", "allocation removed on undeploy")

    async def uuid_of(self, allocation_id: int | None) -> str | None:
        if allocation_id is None:
            return None
        async with self.db.read() as s:
            value: str | None = await s.scalar(select(Allocation.uuid).where(Allocation.id == allocation_id))
            return value
