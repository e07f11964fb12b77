"""The agent's side of the API, driven the way the agent drives it: lookup, long-poll, reports.

The machine is fake-hardware with the agent's interfaces (pxe boot, direct deploy, agent inspect), so the
conductor's half of every exchange is real; the agent's half is played by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api, api_with, boot_token_header, fault

MAC = "52:54:00:aa:bb:01"
AGENT = {"boot_interface": "pxe", "deploy_interface": "direct", "inspect_interface": "agent"}
INVENTORY = {
    "cpu": {"count": 4, "architecture": "x86_64", "model_name": "QEMU", "frequency": "2000", "flags": []},
    "memory": {"total": 2 * 1024**3, "physical_mb": 2048},
    "disks": [
        {"name": "/dev/vda", "size": 20 * 1024**3, "model": None, "serial": "S1", "rotational": True},
        {"name": "/dev/vdb", "size": 8 * 1024**3, "model": None, "serial": "S2", "rotational": False},
    ],
    "interfaces": [
        {"name": "eth0", "mac_address": MAC, "ipv4_address": "10.0.0.5", "has_carrier": True},
        {"name": "eth1", "mac_address": "52:54:00:aa:bb:02", "ipv4_address": None, "has_carrier": False},
    ],
    "system_vendor": {"manufacturer": "QEMU", "product_name": "Standard PC", "serial_number": None},
    "boot": {"current_boot_mode": "bios", "pxe_interface": MAC},
    "hostname": "localhost",
}


@pytest.fixture
async def agent_api(tmp_path: Path) -> AsyncIterator[Api]:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    settings: dict[str, Any] = {"agent": {"inspection_add_ports": "all", "lldp_wait": 0}}
    async for api in api_with(tmp_path, **settings):
        yield api


async def enrolled(api: Api) -> str:
    node = await api.node(name="n1", **AGENT)
    await api.port(node["uuid"], MAC)
    await api.drive(node["uuid"], "manage")
    return str(node["uuid"])


async def node_of(api: Api, mac: str) -> str:
    ports = (await api.c.get("/v1/ports", params={"address": mac, "fields": "node_uuid"})).json()["ports"]
    return str(ports[0]["node_uuid"])


async def lookup(api: Api, node: str | None = None) -> str:
    """The agent's lookup: the MACs and the boot token its kernel command line carries."""
    params = {"addresses": MAC.upper()} | ({"node_uuid": node} if node else {})
    headers = await boot_token_header(api, node or await node_of(api, MAC))
    r = await api.c.get("/v1/lookup", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["config"]["agent_token"])


async def poll(api: Api, node: str, token: str, wait: float = 0.5) -> dict[str, Any] | None:
    r = await api.c.get(
        f"/v1/nodes/{node}/agent/command", params={"wait": wait}, headers={"X-Agent-Token": token}
    )
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    command: dict[str, Any] = r.json()
    return command


async def report(api: Api, node: str, token: str, command: str, **body: Any) -> int:
    r = await api.c.post(
        f"/v1/nodes/{node}/agent/command/{command}", json=body, headers={"X-Agent-Token": token}
    )
    await api.bf.conductor.wait_idle()
    return r.status_code


async def test_inspection_by_the_agent_stores_inventory_properties_and_ports(agent_api: Api) -> None:
    api = agent_api
    node = await enrolled(api)
    assert (await api.drive(node, "inspect"))["provision_state"] == "inspect wait"
    token = await lookup(api)
    command = await poll(api, node, token)
    assert command is not None and command["name"] == "inspect"
    assert command["args"] == {"lldp_wait": 0}
    # A progress report is no outcome: the node keeps waiting.
    assert await report(api, node, token, command["id"], status="running", progress={"done": 1}) == 200
    assert (await api.get(node))["provision_state"] == "inspect wait"
    result = {"inventory": INVENTORY, "plugin_data": {"agent_version": "test"}}
    assert await report(api, node, token, command["id"], status="succeeded", result=result) == 200

    shown = await api.get(node)
    assert shown["provision_state"] == "manageable" and shown["last_error"] is None
    # local_gb: the smallest disk of at least 4 GiB, less the GiB kept for the partition table.
    assert shown["properties"] == {"cpus": 4, "cpu_arch": "x86_64", "memory_mb": 2048, "local_gb": 7}
    ports = (await api.c.get("/v1/ports", params={"node": node})).json()["ports"]
    assert sorted(p["address"] for p in ports) == [MAC, "52:54:00:aa:bb:02"]
    assert shown["power_state"] == "power off"  # no fast track: the ramdisk is left
    # The ramdisk boot is over, and with it the token.
    r = await api.c.get(f"/v1/nodes/{node}/agent/command", headers={"X-Agent-Token": token})
    assert r.status_code == 401
    history = (await api.c.get(f"/v1/nodes/{node}/history")).json()["history"]
    assert any("4 CPUs, 2048 MiB" in e["event"] for e in history)
    stored = (await api.c.get(f"/v1/nodes/{node}/inventory")).json()
    assert stored == {"inventory": INVENTORY, "plugin_data": {"agent_version": "test"}}


async def test_token_is_issued_once_per_boot_and_checked(agent_api: Api) -> None:
    api = agent_api
    node = await enrolled(api)
    r = await api.c.get("/v1/lookup", params={"addresses": MAC})
    assert r.status_code == 404 and "does not expect an agent" in fault(r)
    missing = await api.c.get(f"/v1/nodes/{node}/inventory")
    assert missing.status_code == 404 and "inspect it first" in fault(missing)
    await api.drive(node, "inspect")
    token = await lookup(api, node)
    again = await api.c.get(
        "/v1/lookup", params={"addresses": MAC}, headers=await boot_token_header(api, node)
    )
    assert again.status_code == 409 and "already issued" in fault(again)
    # Without the boot token a second lookup does not even learn that much (see test_hardening_agent_session).
    blind = await api.c.get("/v1/lookup", params={"addresses": MAC})
    assert blind.status_code == 404
    bad = await api.c.get(f"/v1/nodes/{node}/agent/command", headers={"X-Agent-Token": token + "x"})
    assert bad.status_code == 401
    command = await poll(api, node, token)
    assert command is not None
    assert await report(api, node, token, "not-the-command", status="succeeded", result={}) == 409
    assert await report(api, node, token, command["id"], status="done") == 400


async def test_a_failed_agent_command_fails_cleaning_with_its_reason(agent_api: Api) -> None:
    api = agent_api
    node = await enrolled(api)
    assert (await api.drive(node, "provide"))["provision_state"] == "clean wait"
    token = await lookup(api)
    command = await poll(api, node, token)
    assert command is not None and command["name"] == "erase" and command["args"] == {"mode": "metadata"}
    error = "wipefs on /dev/vda failed: device busy"
    assert await report(api, node, token, command["id"], status="failed", error=error) == 200
    shown = await api.get(node)
    assert shown["provision_state"] == "clean failed"
    assert shown["last_error"] == f"the agent's erase failed: {error}"


async def test_cleaning_resumes_after_the_erase_and_powers_off(agent_api: Api) -> None:
    api = agent_api
    node = await enrolled(api)
    await api.drive(node, "provide")
    token = await lookup(api)
    command = await poll(api, node, token)
    assert command is not None
    result = {"disks": [{"name": "/dev/vda", "mode": "metadata", "bytes": 2 * 1024**2}]}
    assert await report(api, node, token, command["id"], status="succeeded", result=result) == 200
    # The boot ended with cleaning: a late retry of the report is refused, and changes nothing.
    assert await report(api, node, token, command["id"], status="succeeded", result=result) == 401
    shown = await api.get(node)
    assert shown["provision_state"] == "available", shown["last_error"]
    assert shown["power_state"] == "power off"


async def test_a_silent_agent_times_out_naming_it(tmp_path: Path) -> None:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"k")
    (ramdisk / "initrd").write_bytes(b"i")
    async for api in api_with(tmp_path, clean_callback_timeout=0.0):
        node = await enrolled(api)
        await api.drive(node, "provide")
        await api.bf.conductor.check_wait_timeouts()
        shown = await api.get(node)
        assert shown["provision_state"] == "clean failed"
        assert "no agent called from the ramdisk" in shown["last_error"]


async def test_fast_track_keeps_the_agent_between_inspection_and_cleaning(tmp_path: Path) -> None:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"k")
    (ramdisk / "initrd").write_bytes(b"i")
    async for api in api_with(tmp_path, agent={"fast_track": True, "lldp_wait": 0}):
        node = await enrolled(api)
        await api.drive(node, "inspect")
        token = await lookup(api)
        command = await poll(api, node, token)
        assert command is not None
        await report(api, node, token, command["id"], status="succeeded", result={"inventory": INVENTORY})
        shown = await api.get(node)
        assert shown["provision_state"] == "manageable" and shown["power_state"] == "power on"
        # The same agent, same token, gets the cleaning command: no reboot, no new lookup.
        await api.drive(node, "provide")
        erase = await poll(api, node, token)
        assert erase is not None and erase["name"] == "erase"
        history = (await api.c.get(f"/v1/nodes/{node}/history")).json()["history"]
        assert any("the agent is running already" in e["event"] for e in history)


async def test_a_silent_agent_fails_the_deploy_with_the_reason(tmp_path: Path) -> None:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"k")
    (ramdisk / "initrd").write_bytes(b"i")
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\1" * 512)
    settings: dict[str, Any] = {
        "deploy_callback_timeout": 0.0,
        "automated_clean": False,
        "netboot": {"address": "127.0.0.1", "http": True},
    }
    async for api in api_with(tmp_path, **settings):
        r = await api.c.put("/v1/images/tiny/file", content=image.read_bytes())
        assert r.status_code == 201, r.text
        node = await enrolled(api)
        await api.drive(node, "provide")
        patch = [{"op": "add", "path": "/instance_info/image_source", "value": "tiny"}]
        assert (await api.c.patch(f"/v1/nodes/{node}", json=patch)).status_code == 200
        shown = await api.drive(node, "active")
        assert shown["provision_state"] == "wait call-back", shown["last_error"]
        assert shown["deploy_step"]["step"] == "deploy"
        await api.bf.conductor.check_wait_timeouts()
        failed = await api.get(node)
        assert failed["provision_state"] == "deploy failed"
        assert "wait call-back" in failed["last_error"]
        assert "no agent called from the ramdisk" in failed["last_error"]
