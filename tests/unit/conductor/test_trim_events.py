"""Event retention keeps the newest N events of every node and nothing else, besides its state changes."""

from sqlalchemy import func, select
from support.service import InProcess

from bootforge.db.models import NodeEvent


async def test_trim_keeps_the_newest_per_node(bf: InProcess) -> None:
    bf.conductor.settings.node_events_keep = 3
    uuids = []
    for i in range(2):
        node = (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware"})).json()
        uuids.append(node["uuid"])
        for j in range(5):
            await bf.client.put(f"/v1/nodes/{node['uuid']}/maintenance", json={"reason": f"r{i}{j}"})
    await bf.conductor.trim_events()
    for i, uuid in enumerate(uuids):
        events = (await bf.client.get(f"/v1/nodes/{uuid}/history")).json()["history"]
        # State changes ("created in enroll") are never trimmed.
        assert [e["event"] for e in events] == ["created in enroll"] + [
            f"maintenance set: r{i}{j}" for j in (2, 3, 4)
        ]
    async with bf.conductor.db.read() as s:
        assert await s.scalar(select(func.count()).select_from(NodeEvent)) == 8
