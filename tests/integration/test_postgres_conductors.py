"""Several conductors on one PostgreSQL database, and the whole node life cycle on PostgreSQL.

Two real `bootforge serve` processes (different --host names and ports) share a throwaway PostgreSQL
database. A conductor killed with SIGKILL mid-deploy stops heartbeating; the other one takes its nodes
over once the heartbeat is older than conductor_offline_after, and finishes or fails them with a reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from support.lifecycle import act, client, create_nodes, history, in_state, nodes, settled, wait_until
from support.service import LATEST, InProcess, Served, in_process, served

from bootforge.conductor import states
from bootforge.db.models import Node

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    # support.service.Served.start() leaves its log file object open after Popen (reported to the lead).
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <_io.FileIO name='.*/serve-\d+\.log'"),
]

# Small enough for a test to see a dead conductor within seconds, large enough that a live conductor
# on a busy machine is never mistaken for a dead one.
CLUSTER_ENV = {
    "BOOTFORGE_CONDUCTOR_HEARTBEAT_INTERVAL": "0.5",
    "BOOTFORGE_CONDUCTOR_OFFLINE_AFTER": "5",
    "BOOTFORGE_TIMEOUT_CHECK_INTERVAL": "0.5",
    "BOOTFORGE_POWER_SYNC_INTERVAL": "0",
    "BOOTFORGE_FAKE_DELAYS__DEPLOY": "4",
    "BOOTFORGE_FAKE_DELAYS__CLEAN": "0.2",
}


@contextlib.contextmanager
def conductor(tmp_path: Path, name: str, database_url: str) -> Iterator[Served]:
    home = tmp_path / name
    home.mkdir()
    # Every conductor of one database shares one key file (BMC passwords are encrypted with it).
    env = {**CLUSTER_ENV, "BOOTFORGE_SECRET_KEY_FILE": str(tmp_path / "secret.key")}
    yield from served(home, env=env, args=["--host", name, "--database-url", database_url])


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def test_nodes_are_shared_and_a_dead_conductor_is_taken_over(tmp_path: Path, postgres_fresh_url: str) -> None:
    with (
        conductor(tmp_path, "conductor-a", postgres_fresh_url) as a,
        conductor(tmp_path, "conductor-b", postgres_fresh_url) as b,
        client(a.url) as ca,
        client(b.url) as cb,
    ):
        via_a = create_nodes(ca, [f"a-{i}" for i in range(4)])
        via_b = create_nodes(cb, [f"b-{i}" for i in range(4)])
        everyone = via_a + via_b
        # Enough nodes that each conductor owns some on the hash ring (one of a's, two of b's).
        for i in range(40):
            owners = [n["conductor"] for n in nodes(ca, everyone).values()]
            if owners.count("conductor-a") >= 1 and owners.count("conductor-b") >= 2:
                break
            everyone += create_nodes(cb, [f"c-{i}"])
        for c in (ca, cb):
            assert set(nodes(c, everyone)) == set(everyone)
        # Requests go to either process; each node's work runs on its owner on the hash ring.
        owner = {u: n["conductor"] for u, n in nodes(ca, everyone).items()}
        assert set(owner.values()) <= {"conductor-a", "conductor-b"}
        act(ca, everyone[::2], "manage")
        act(cb, everyone[1::2], "manage")
        wait_until(ca, everyone, in_state(states.MANAGEABLE))
        act(cb, everyone, "provide")
        wait_until(ca, everyone, in_state(states.AVAILABLE))

        doomed = [u for u in everyone if owner[u] == "conductor-a"]
        idle = [u for u in everyone if owner[u] == "conductor-b"]
        survivors, idle = idle[:2], idle[2:]
        assert doomed and len(survivors) == 2, owner
        act(ca, doomed, "active")
        act(ca, survivors, "active")
        in_flight = wait_until(
            cb, doomed, lambda n: n["deploy_step"].get("step") == "deploy", what="in the deploy step"
        )
        assert {n["reservation"] for n in in_flight.values()} == {"conductor-a"}
        a.kill()

        final = wait_until(cb, everyone, settled, timeout=50, what="settled after conductor-a died")
        taken_over = (
            "conductor conductor-a stopped heartbeating; taken over by conductor-b: resuming deploying"
        )
        for u in doomed:
            events = history(cb, u)
            assert taken_over in texts(events)
            node = final[u]
            if node["provision_state"] in states.FAILED_STATES:
                assert node["last_error"], node
            else:
                assert node["provision_state"] == states.ACTIVE, node
            assert events[-1]["conductor"] == "conductor-b"
        # Fake hardware cannot fail, so conductor-b finished every deploy conductor-a started.
        assert {final[u]["provision_state"] for u in doomed} == {states.ACTIVE}
        # A live conductor's nodes are never taken from it.
        for u in survivors:
            assert final[u]["provision_state"] == states.ACTIVE
            assert not any("taken over" in t for t in texts(history(cb, u)))
        assert {final[u]["provision_state"] for u in idle} <= {states.AVAILABLE}

        # conductor-a comes back under its name and works again; it finds nothing of its own to resume.
        a.start()
        act(ca, doomed, "undeploy")
        wait_until(cb, doomed, in_state(states.AVAILABLE))
        for u in doomed:
            assert texts(history(ca, u)).count(taken_over) == 1


@pytest.fixture
async def bf_pg(tmp_path: Path, postgres_fresh_url: str) -> AsyncIterator[InProcess]:
    async for x in in_process(tmp_path, database_url=postgres_fresh_url, timeout_check_interval=0.2):
        yield x


async def test_full_life_cycle_on_postgresql(bf_pg: InProcess) -> None:
    """Every API path a node goes through, once, on PostgreSQL: JSON, booleans, aware timestamps."""
    bf = bf_pg
    c = bf.client
    body = {
        "driver": "fake-hardware",
        "name": "pg-node",
        "properties": {"cpus": 8, "memory_mb": 16384, "capabilities": "boot_mode:uefi"},
        "extra": {"rack": "r1", "nested": {"list": [1, 2, None], "flag": True}},
        "driver_info": {"note": "ünïcode ok"},
    }
    r = await c.post("/v1/nodes", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["extra"] == body["extra"]
    assert created["properties"] == body["properties"]

    await _provision(bf, "manage", states.MANAGEABLE)
    await _provision(bf, "provide", states.AVAILABLE)
    r = await c.put("/v1/nodes/pg-node/traits", json={"traits": ["CUSTOM_GPU", "CUSTOM_FAST"]})
    assert r.status_code == 204, r.text
    await _provision(bf, "active", states.ACTIVE, configdrive={"meta_data": {"hostname": "pg"}})
    node = (await c.get("/v1/nodes/pg-node")).json()
    async with bf.conductor.db.read() as s:
        row = await s.scalar(select(Node).where(Node.name == "pg-node"))
    assert row is not None
    assert row.instance_info["configdrive"] == {"meta_data": {"hostname": "pg"}}
    assert row.provision_updated_at is not None and row.provision_updated_at.tzinfo is not None
    assert node["power_state"] == "power on"
    assert node["provision_updated_at"].endswith("+00:00"), node["provision_updated_at"]
    assert node["maintenance"] is False

    r = await c.put("/v1/nodes/pg-node/states/power", json={"target": "power off"})
    assert r.status_code == 202, r.text
    await bf.conductor.wait_idle()
    assert (await c.get("/v1/nodes/pg-node")).json()["power_state"] == "power off"

    r = await c.put("/v1/nodes/pg-node/maintenance", json={"reason": "disk swap"})
    assert r.status_code == 202, r.text
    listed = (await c.get("/v1/nodes", params={"maintenance": "true"})).json()["nodes"]
    assert [n["name"] for n in listed] == ["pg-node"]
    assert (await c.get("/v1/nodes", params={"maintenance": "false"})).json()["nodes"] == []
    r = await c.delete("/v1/nodes/pg-node/maintenance")
    assert r.status_code == 202, r.text

    patch = [{"op": "add", "path": "/extra/owner_team", "value": "infra"}]
    r = await c.patch("/v1/nodes/pg-node", json=patch)
    assert r.status_code == 200, r.text
    assert r.json()["extra"]["owner_team"] == "infra"
    assert r.json()["extra"]["nested"] == body["extra"]["nested"]

    # The periodics run against PostgreSQL too (wait timeouts every 0.2 s; power sync once here).
    await bf.conductor.sync_power_states()
    await bf.conductor.take_over_orphans()
    await _provision(bf, "undeploy", states.AVAILABLE)
    node = (await c.get("/v1/nodes/pg-node")).json()
    assert node["instance_info"] == {}
    assert node["instance_uuid"] is None
    events = (await c.get("/v1/nodes/pg-node/history")).json()["history"]
    assert [e["event"] for e in events if "-> active" in e["event"]] == ["deploying -> active (done)"]
    r = await c.delete("/v1/nodes/pg-node")
    assert r.status_code == 204, r.text
    assert (await c.get("/v1/nodes/pg-node")).status_code == 404


async def _provision(bf: Any, verb: str, expect: str, **body: Any) -> None:
    c: httpx.AsyncClient = bf.client
    r = await c.put("/v1/nodes/pg-node/states/provision", json={"target": verb, **body}, headers=LATEST)
    assert r.status_code == 202, r.text
    await bf.conductor.wait_idle()
    node = (await c.get("/v1/nodes/pg-node")).json()
    assert node["provision_state"] == expect, node
    assert node["reservation"] is None
    assert node["last_error"] is None
