"""Issue #11 finding 3 (agent side): an agent report with wrong types is a 400 naming the field, and
whatever the stored result holds, taking it never leaves the node locked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api, api_with, boot_token_header, fault
from sqlalchemy import update

from bootforge.conductor.task import load_node
from bootforge.db.models import AgentSession

MAC = "52:54:00:aa:cc:01"
AGENT = {"boot_interface": "pxe", "deploy_interface": "direct", "inspect_interface": "agent"}
GOOD = {
    "cpu": {"count": 2, "architecture": "x86_64"},
    "memory": {"physical_mb": 1024},
    "disks": [{"name": "/dev/vda", "size": 10 * 1024**3}],
    "interfaces": [{"name": "eth0", "mac_address": MAC}],
    "boot": {"pxe_interface": MAC},
}


@pytest.fixture
async def agent_api(tmp_path: Path) -> AsyncIterator[Api]:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    async for api in api_with(tmp_path, agent={"lldp_wait": 0}):
        yield api


async def inspecting(api: Api) -> tuple[str, str, str]:
    """A node in inspect wait, its agent token and the inspect command's id."""
    node = await api.node(**AGENT)
    await api.port(node["uuid"], MAC)
    await api.drive(node["uuid"], "manage", "inspect")
    r = await api.c.get(
        "/v1/lookup", params={"addresses": MAC}, headers=await boot_token_header(api, node["uuid"])
    )
    assert r.status_code == 200, r.text
    token = r.json()["config"]["agent_token"]
    r = await api.c.get(
        f"/v1/nodes/{node['uuid']}/agent/command", params={"wait": 1}, headers={"X-Agent-Token": token}
    )
    assert r.status_code == 200, r.text
    return node["uuid"], token, r.json()["id"]


async def post(api: Api, uuid: str, token: str, command: str, body: dict[str, Any]) -> Any:
    r = await api.c.post(
        f"/v1/nodes/{uuid}/agent/command/{command}", json=body, headers={"X-Agent-Token": token}
    )
    await api.bf.conductor.wait_idle()
    return r


@pytest.mark.parametrize(
    ("inventory", "field"),
    [
        ({**GOOD, "cpu": "x"}, "result.inventory.cpu"),
        ({**GOOD, "cpu": {"count": "four"}}, "result.inventory.cpu.count"),
        ({**GOOD, "memory": []}, "result.inventory.memory"),
        ({**GOOD, "disks": {"a": 1}}, "result.inventory.disks"),
        ({**GOOD, "disks": [{"name": "/dev/vda", "size": "big"}]}, "result.inventory.disks[0].size"),
        ({**GOOD, "interfaces": [{"mac_address": 5}]}, "result.inventory.interfaces[0].mac_address"),
        ({**GOOD, "boot": "pxe"}, "result.inventory.boot"),
    ],
)
async def test_a_result_with_wrong_types_is_a_400_and_the_node_stays_usable(
    agent_api: Api, inventory: dict[str, Any], field: str
) -> None:
    api = agent_api
    uuid, token, command = await inspecting(api)
    r = await post(api, uuid, token, command, {"status": "succeeded", "result": {"inventory": inventory}})
    assert r.status_code == 400, r.text
    assert field in fault(r)
    node = await api.get(uuid)
    assert node["reservation"] is None and node["provision_state"] == "inspect wait"
    r = await post(api, uuid, token, command, {"status": "succeeded", "result": {"inventory": GOOD}})
    assert r.status_code == 200, r.text
    node = await api.get(uuid)
    assert node["provision_state"] == "manageable" and node["properties"]["cpus"] == 2


async def test_a_stored_result_the_conductor_cannot_use_fails_the_node_and_unlocks_it(agent_api: Api) -> None:
    """A result written by another (older) conductor is taken by this one's periodic resume."""
    api = agent_api
    uuid, _token, command = await inspecting(api)
    node_id = (await load_node(api.bf.conductor, uuid)).id
    async with api.bf.conductor.db.write() as s:
        await s.execute(
            update(AgentSession)
            .where(AgentSession.node_id == node_id)
            .values(command_id=command, command_status="succeeded", result={"inventory": {"cpu": "x"}})
        )
        await s.commit()
    await api.bf.conductor.agent.resume(node_id)
    await api.bf.conductor.wait_idle()
    node = await api.get(uuid)
    assert node["reservation"] is None
    assert node["provision_state"] == "inspect failed"
    assert "cpu" in node["last_error"]


async def test_a_large_inventory_is_accepted_up_to_the_agent_route_limit(agent_api: Api) -> None:
    """More than the 64 KiB a node field may hold: inventories with many disks and NICs are."""
    api = agent_api
    uuid, token, command = await inspecting(api)
    disks = [{"name": f"/dev/sd{i}", "size": 10 * 1024**3, "serial": "S" * 200} for i in range(400)]
    r = await post(
        api, uuid, token, command, {"status": "succeeded", "result": {"inventory": {**GOOD, "disks": disks}}}
    )
    assert r.status_code == 200, r.text
    assert (await api.get(uuid))["provision_state"] == "manageable"
