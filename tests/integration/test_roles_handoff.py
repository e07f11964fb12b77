"""Work handed from an API-only process to the node's owner (conductor/handoff.py), in-process on SQLite.

The API side is a Conductor that was never started (as `serve --role api` builds it) on the same
database as a running conductor: its NodeService writes the action unlocked and names the owner; the
owner's poll (there is no NOTIFY on SQLite: this is the path a lost notification takes on PostgreSQL)
claims the node and runs the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from support.service import LATEST, InProcess, in_process

from bootforge import boot_token
from bootforge.api.app import create_app
from bootforge.api.deps import Services
from bootforge.conductor import states
from bootforge.conductor.conductor import POWER_REQUEST, Conductor
from bootforge.conductor.service import NodeService
from bootforge.db.models import Node, NodeEvent
from bootforge.errors import InvalidInput, NodeLocked


@pytest.fixture
async def bf(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for x in in_process(tmp_path):
        yield x


@pytest.fixture
async def api(bf: InProcess) -> AsyncIterator[NodeService]:
    settings = bf.settings.model_copy(update={"host": "api-only", "role": "api"})
    conductor = Conductor(settings, bf.conductor.db)
    try:
        yield NodeService(conductor)
    finally:
        await conductor.drivers.close()


async def row(bf: InProcess, uuid: str) -> Node:
    async with bf.conductor.db.read() as s:
        node = await s.scalar(select(Node).where(Node.uuid == uuid))
    assert node is not None
    return node


async def texts(bf: InProcess, uuid: str) -> list[tuple[str, str]]:
    node = await row(bf, uuid)
    async with bf.conductor.db.read() as s:
        rows = await s.scalars(select(NodeEvent).where(NodeEvent.node_id == node.id).order_by(NodeEvent.id))
        return [(e.conductor or "", e.event) for e in rows.all()]


async def enrol(bf: InProcess, **fields: Any) -> str:
    r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", **fields})
    assert r.status_code == 201, r.text
    uuid: str = r.json()["uuid"]
    return uuid


async def test_provision_and_power_run_on_the_owner_not_the_api_process(
    bf: InProcess, api: NodeService
) -> None:
    uuid = await enrol(bf)
    await api.provision(uuid, "manage", {})
    node = await row(bf, uuid)
    # Written by the API process, unlocked, for the owner to pick up: nothing ran yet.
    assert (node.provision_state, node.reservation) == (states.VERIFYING, None)
    assert ("api-only", "enroll -> verifying (manage); handed to conductor test-conductor") in await texts(
        bf, uuid
    )
    # Handed-off work holds the node as a lock would: a power action waits for it.
    with pytest.raises(NodeLocked):
        await api.power(uuid, "power off", None)

    await bf.conductor.pick_up_work()
    await bf.conductor.wait_idle()
    node = await row(bf, uuid)
    assert (node.provision_state, node.reservation) == (states.MANAGEABLE, None)
    assert ("test-conductor", "picked up by conductor test-conductor: verifying") in await texts(bf, uuid)

    await api.power(uuid, "power off", 12.5)
    node = await row(bf, uuid)
    assert (node.target_power_state, node.reservation) == ("power off", None)
    assert node.driver_internal_info[POWER_REQUEST] == {"target": "power off", "timeout": 12.5}
    await bf.conductor.pick_up_work()
    await bf.conductor.wait_idle()
    node = await row(bf, uuid)
    assert (node.power_state, node.target_power_state, node.reservation) == ("power off", None, None)
    assert POWER_REQUEST not in node.driver_internal_info
    events = await texts(bf, uuid)
    assert ("test-conductor", "picked up by conductor test-conductor: power off") in events
    # Picked up once: a second poll finds nothing to do.
    await bf.conductor.pick_up_work()
    await bf.conductor.wait_idle()
    assert await texts(bf, uuid) == events


async def test_a_node_of_a_group_nobody_serves_is_refused_naming_the_field(
    bf: InProcess, api: NodeService
) -> None:
    uuid = await enrol(bf, conductor_group="rack9")
    with pytest.raises(InvalidInput) as e:
        await api.provision(uuid, "manage", {})
    assert e.value.field == "conductor_group"
    assert (await row(bf, uuid)).provision_state == states.ENROLL
    # The running conductor does not take it either: the ring of rack9 is empty.
    await bf.conductor.pick_up_work()
    assert (await row(bf, uuid)).provision_state == states.ENROLL
    r = await bf.client.get(f"/v1/nodes/{uuid}")
    assert r.json()["conductor"] is None


async def test_conductor_group_patch_is_checked(bf: InProcess) -> None:
    uuid = await enrol(bf)
    bad = [{"op": "replace", "path": "/conductor_group", "value": "rack 1!"}]
    r = await bf.client.patch(f"/v1/nodes/{uuid}", json=bad)
    assert r.status_code == 400 and "conductor_group" in r.json()["error_message"], r.text
    good = [{"op": "replace", "path": "/conductor_group", "value": "Rack-1.a"}]
    r = await bf.client.patch(f"/v1/nodes/{uuid}", json=good)
    assert r.status_code == 200 and r.json()["conductor_group"] == "rack-1.a", r.text


MAC = "52:54:00:aa:bb:01"
INVENTORY = {
    "cpu": {"count": 2, "architecture": "x86_64"},
    "memory": {"total": 2 * 1024**3, "physical_mb": 2048},
    "disks": [{"name": "/dev/vda", "size": 20 * 1024**3, "rotational": True}],
    "interfaces": [{"name": "eth0", "mac_address": MAC, "has_carrier": True}],
    "boot": {"current_boot_mode": "bios", "pxe_interface": MAC},
}


@pytest.fixture
async def with_ramdisk(tmp_path: Path) -> AsyncIterator[InProcess]:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    async for x in in_process(tmp_path, agent={"inspection_add_ports": "none", "lldp_wait": 0}):
        yield x


async def test_the_agent_talks_to_an_api_process_and_its_owner_carries_on(with_ramdisk: InProcess) -> None:
    """Inspection asked of an API-only process; the ramdisk's agent looks up, polls and reports there;
    the owner boots the ramdisk and takes the report (woken as NOTIFY would wake it)."""
    bf = with_ramdisk
    settings = bf.settings.model_copy(update={"host": "api-only", "role": "api"})
    api_conductor = Conductor(settings, bf.conductor.db)
    app = create_app(Services.build(settings, api_conductor))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
            body = {"driver": "fake-hardware", "boot_interface": "pxe", "inspect_interface": "agent"}
            uuid = (await c.post("/v1/nodes", json=body)).json()["uuid"]
            assert (await c.post("/v1/ports", json={"node_uuid": uuid, "address": MAC})).status_code == 201
            for verb in ("manage", "inspect"):
                r = await c.put(f"/v1/nodes/{uuid}/states/provision", json={"target": verb})
                assert r.status_code == 202, r.text
                await bf.conductor.pick_up_work()
                await bf.conductor.wait_idle()
            node = await row(bf, uuid)
            assert (node.provision_state, node.reservation) == (states.INSPECTWAIT, None)

            boot = node.driver_internal_info["agent_boot"]
            header = {boot_token.HEADER: boot_token.for_boot(settings.secret_key_path, uuid, boot)}
            r = await c.get("/v1/lookup", params={"addresses": MAC}, headers=header)
            assert r.status_code == 200, r.text
            agent = {"X-Agent-Token": r.json()["config"]["agent_token"]}
            r = await c.get(f"/v1/nodes/{uuid}/agent/command", params={"wait": 0.5}, headers=agent)
            assert r.status_code == 200, r.text
            command = r.json()
            done = {"status": "succeeded", "result": {"inventory": INVENTORY, "plugin_data": {}}}
            r = await c.post(f"/v1/nodes/{uuid}/agent/command/{command['id']}", json=done, headers=agent)
            assert r.status_code == 200, r.text
            # Stored by the API process, not acted on there: no work runs in it.
            assert (await row(bf, uuid)).provision_state == states.INSPECTWAIT

            node_id = (await row(bf, uuid)).id
            await bf.conductor.pick_up_work([node_id])
            await bf.conductor.wait_idle()
            node = await row(bf, uuid)
            assert (node.provision_state, node.reservation) == (states.MANAGEABLE, None)
            assert node.properties["memory_mb"] == 2048
            events = await texts(bf, uuid)
            assert ("test-conductor", "picked up by conductor test-conductor: inspecting") in events
    finally:
        await api_conductor.drivers.close()
