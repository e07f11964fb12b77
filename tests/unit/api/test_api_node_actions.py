"""Node verbs: drivers, validate, maintenance, traits, power, boot device, cleaning, abort, rescue,
locking and history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from apihelp import Api, api_with, fault


async def test_drivers_list_show_and_properties(api: Api) -> None:
    drivers = {d["name"]: d for d in (await api.c.get("/v1/drivers")).json()["drivers"]}
    assert set(drivers) == set(api.bf.settings.enabled_hardware_types)
    assert drivers["fake-hardware"]["hosts"] == ["test-conductor"]
    assert "default_power_interface" not in drivers["fake-hardware"]
    detailed = (await api.c.get("/v1/drivers", params={"detail": "true"})).json()["drivers"]
    assert {d["name"]: d["default_power_interface"] for d in detailed}["fake-hardware"] == "fake"
    shown = (await api.c.get("/v1/drivers/fake-hardware")).json()
    assert shown["enabled_rescue_interfaces"] == ["fake", "no-rescue", "agent"]
    assert shown["default_rescue_interface"] == "fake"
    r = await api.c.get("/v1/drivers/fake-hardware/properties")
    assert r.status_code == 200 and isinstance(r.json(), dict)
    r = await api.c.get("/v1/drivers/ipmi")
    assert r.status_code == 200 and r.json()["default_power_interface"] == "ipmitool"
    r = await api.c.get("/v1/drivers/idrac")
    assert r.status_code == 404 and "idrac" in fault(r)


async def test_validate_reports_per_interface(api: Api) -> None:
    uuid = (await api.node(rescue_interface="no-rescue"))["uuid"]
    result = (await api.c.get(f"/v1/nodes/{uuid}/validate")).json()
    assert result["power"] == {"result": True, "reason": None}
    assert result["deploy"]["result"] is True
    assert result["rescue"]["result"] is False
    assert "no-rescue" in result["rescue"]["reason"]


async def test_maintenance_set_and_unset_with_reason(api: Api) -> None:
    uuid = (await api.available())["uuid"]
    r = await api.c.put(f"/v1/nodes/{uuid}/maintenance", json={"reason": "fan broken"})
    assert r.status_code == 202
    node = await api.get(uuid)
    assert node["maintenance"] is True and node["maintenance_reason"] == "fan broken"
    r = await api.verb(uuid, "active")
    assert r.status_code == 400
    assert "maintenance" in fault(r) and "fan broken" in fault(r)
    r = await api.c.delete(f"/v1/nodes/{uuid}/maintenance")
    assert r.status_code == 202
    node = await api.get(uuid)
    assert node["maintenance"] is False and node["maintenance_reason"] is None
    # A body is optional when setting maintenance.
    assert (await api.c.put(f"/v1/nodes/{uuid}/maintenance")).status_code == 202


async def test_traits_set_add_remove(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    path = f"/v1/nodes/{uuid}/traits"
    assert (await api.c.put(path, json={"traits": ["CUSTOM_GPU", "HW_CPU_X86_AVX2"]})).status_code == 204
    assert (await api.c.get(path)).json() == {"traits": ["CUSTOM_GPU", "HW_CPU_X86_AVX2"]}
    assert (await api.c.put(f"{path}/CUSTOM_FAST")).status_code == 204
    assert (await api.get(uuid))["traits"] == ["CUSTOM_FAST", "CUSTOM_GPU", "HW_CPU_X86_AVX2"]
    assert (await api.c.delete(f"{path}/CUSTOM_GPU")).status_code == 204
    assert (await api.c.get(path)).json()["traits"] == ["CUSTOM_FAST", "HW_CPU_X86_AVX2"]
    r = await api.c.delete(f"{path}/CUSTOM_GPU")
    assert r.status_code == 404 and "CUSTOM_GPU" in fault(r)
    assert (await api.c.delete(path)).status_code == 204
    assert (await api.c.get(path)).json()["traits"] == []


@pytest.mark.parametrize("trait", ["lower_case", "HAS SPACE", "DASH-ED"])
async def test_invalid_trait_is_400_naming_it(api: Api, trait: str) -> None:
    uuid = (await api.node())["uuid"]
    r = await api.c.put(f"/v1/nodes/{uuid}/traits", json={"traits": ["CUSTOM_OK", trait]})
    assert r.status_code == 400 and trait in fault(r)
    assert (await api.c.get(f"/v1/nodes/{uuid}/traits")).json()["traits"] == []


async def test_power_actions(api: Api) -> None:
    uuid = (await api.available())["uuid"]
    path = f"/v1/nodes/{uuid}/states/power"
    for target, expected in [
        ("power on", "power on"),
        ("rebooting", "power on"),
        ("soft power off", "power off"),
        ("power on", "power on"),
        ("soft rebooting", "power on"),
        ("power off", "power off"),
    ]:
        r = await api.c.put(path, json={"target": target})
        assert r.status_code == 202, r.text
        await api.bf.conductor.wait_idle()
        node = await api.get(uuid)
        assert node["power_state"] == expected, target
        assert node["target_power_state"] is None
    r = await api.c.put(path, json={"target": "power on", "timeout": 30})
    assert r.status_code == 202
    await api.bf.conductor.wait_idle()
    r = await api.c.put(path, json={"target": "explode"})
    assert r.status_code == 400 and "'explode'" in fault(r) and "power on" in fault(r)
    r = await api.c.put(
        path, json={"target": "soft power off"}, headers={"X-OpenStack-Ironic-API-Version": "1.26"}
    )
    assert r.status_code == 400 and "1.27" in fault(r)
    r = await api.c.put(path, json={"target": "power off", "timeout": -1})
    assert r.status_code == 400 and "timeout" in fault(r)


async def test_boot_device_get_set_supported(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    path = f"/v1/nodes/{uuid}/management/boot_device"
    assert (await api.c.get(f"{path}/supported")).json() == {
        "supported_boot_devices": ["pxe", "disk", "cdrom", "bios"]
    }
    assert (await api.c.get(path)).json() == {"boot_device": None, "persistent": None}
    assert (await api.c.put(path, json={"boot_device": "pxe", "persistent": True})).status_code == 204
    assert (await api.c.get(path)).json() == {"boot_device": "pxe", "persistent": True}
    r = await api.c.put(path, json={"boot_device": "floppy"})
    assert r.status_code == 400 and "'floppy'" in fault(r)
    r = await api.c.put(path, json={"boot_device": "disk", "persistent": "yes"})
    assert r.status_code == 400 and "persistent" in fault(r)


async def test_manual_clean_with_steps(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    await api.drive(uuid, "manage")
    step = {"interface": "deploy", "step": "erase_devices_metadata", "args": {}}
    r = await api.verb(uuid, "clean", clean_steps=[step])
    assert r.status_code == 202, r.text
    await api.bf.conductor.wait_idle()
    node = await api.get(uuid)
    assert node["provision_state"] == "manageable" and node["last_error"] is None
    history = (await api.c.get(f"/v1/nodes/{uuid}/history")).json()["history"]
    assert any("erase_devices_metadata done" in e["event"] for e in history)


async def test_manual_clean_refuses_bad_steps_naming_them(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    await api.drive(uuid, "manage")
    r = await api.verb(uuid, "clean", clean_steps=[{"interface": "deploy", "step": "shred_everything"}])
    assert r.status_code == 400
    assert "shred_everything" in fault(r) and "erase_devices_metadata" in fault(r)
    r = await api.verb(uuid, "clean", clean_steps=[{"interface": "warp", "step": "x"}])
    assert r.status_code == 400 and "'warp'" in fault(r)
    r = await api.verb(uuid, "clean")
    assert r.status_code == 400 and "clean_steps" in fault(r)
    assert (await api.get(uuid))["provision_state"] == "manageable"


async def test_abort_outside_a_wait_state_is_refused_naming_the_state(api: Api) -> None:
    # fake-hardware never waits for an agent, so no wait state is reachable here; abort must be refused.
    uuid = (await api.available())["uuid"]
    r = await api.verb(uuid, "abort")
    assert r.status_code == 409
    assert '"abort"' in fault(r) and '"available"' in fault(r)


async def test_rescue_and_unrescue(api: Api) -> None:
    uuid = (await api.available())["uuid"]
    await api.drive(uuid, "active")
    r = await api.verb(uuid, "rescue")
    assert r.status_code == 400 and "rescue_password" in fault(r)
    r = await api.verb(uuid, "rescue", rescue_password="letmein")
    assert r.status_code == 202
    await api.bf.conductor.wait_idle()
    assert (await api.get(uuid))["provision_state"] == "rescue"
    node = await api.drive(uuid, "unrescue")
    assert node["provision_state"] == "active" and node["last_error"] is None


async def test_rescue_with_no_rescue_interface_is_refused(api: Api) -> None:
    uuid = (await api.available(rescue_interface="no-rescue"))["uuid"]
    await api.drive(uuid, "active")
    r = await api.verb(uuid, "rescue", rescue_password="x")
    assert r.status_code == 400 and "rescue" in fault(r)
    assert (await api.get(uuid))["provision_state"] == "active"


async def test_deploy_of_an_enroll_node_is_409_naming_state_and_verb(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    r = await api.verb(uuid, "active")
    assert r.status_code == 409
    msg = fault(r)
    assert '"active"' in msg and '"enroll"' in msg and "manage" in msg


async def test_full_lifecycle_with_history(api: Api) -> None:
    uuid = (await api.node(name="life"))["uuid"]
    await api.port(uuid, "52:54:00:cc:00:01")
    assert (await api.drive(uuid, "manage"))["provision_state"] == "manageable"
    assert (await api.drive(uuid, "provide"))["provision_state"] == "available"
    active = await api.drive(uuid, "active")
    assert active["provision_state"] == "active" and active["power_state"] == "power on"
    done = await api.drive(uuid, "deleted")
    assert done["provision_state"] == "available" and done["power_state"] == "power off"

    history = (await api.c.get(f"/v1/nodes/{uuid}/history")).json()
    events = [e["event"] for e in history["history"]]
    assert set(history["history"][0]) == {"uuid", "created_at", "severity", "event", "links"}
    assert any("enroll -> verifying" in e for e in events)
    assert any("available -> deploying" in e for e in events)
    detail = (await api.c.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})).json()["history"]
    assert {"event_type", "conductor", "user"} <= set(detail[0])
    one = (await api.c.get(f"/v1/nodes/{uuid}/history/{detail[1]['uuid']}")).json()
    assert one["event"] == detail[1]["event"] and one["conductor"] == "test-conductor"
    page = (await api.c.get(f"/v1/nodes/{uuid}/history", params={"limit": "2"})).json()
    assert len(page["history"]) == 2 and "marker=" in page["next"]
    rest = (await api.c.get(page["next"])).json()["history"]
    assert rest[0]["uuid"] == history["history"][2]["uuid"]
    r = await api.c.get(f"/v1/nodes/{uuid}/history/0b5ee0e2-3cc1-4e44-a2a5-7c8d1f5b7a11")
    assert r.status_code == 404


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in api_with(tmp_path, fake_delays={"deploy": 1.5}):
        yield a


async def test_second_action_on_a_locked_node_is_409_at_once(slow: Api) -> None:
    uuid = (await slow.available())["uuid"]
    r = await slow.verb(uuid, "active")
    assert r.status_code == 202
    node = await slow.get(uuid)
    assert node["provision_state"] == "deploying" and node["target_provision_state"] == "active"
    assert node["reservation"] == "test-conductor"
    r = await slow.c.put(f"/v1/nodes/{uuid}/states/power", json={"target": "power off"})
    assert r.status_code == 409 and "locked" in fault(r)
    r = await slow.c.patch(f"/v1/nodes/{uuid}", json=[{"op": "add", "path": "/extra/x", "value": 1}])
    assert r.status_code == 409 and "locked" in fault(r)
    r = await slow.verb(uuid, "deleted")
    assert r.status_code == 409 and '"deploying"' in fault(r)
    await slow.bf.conductor.wait_idle()
    node = await slow.get(uuid)
    assert node["provision_state"] == "active" and node["reservation"] is None
