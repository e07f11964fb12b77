"""/v1/discovery_rules and the discovery report (/v1/discovery/report) on an in-process bootforge.

The report is what the discovery ramdisk's agent posts: its token is computed here as the boot
script's would be (discovery.token_for under the conductor's key file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api, api_with, fault

from bootforge.conductor.discovery_boot import new_boot_id, token_for
from bootforge.keys import load_or_create

RULE = {
    "name": "lab-qemu",
    "priority": 10,
    "conditions": [{"field": "inventory.system_vendor.manufacturer", "op": "eq", "value": "QEMU"}],
    "actions": [
        {"action": "set-driver", "value": "fake-hardware"},
        {"action": "set-name", "value": "rack1-{inventory.system_vendor.serial_number}"},
        {"action": "set-resource-class", "value": "vm-small"},
        {"action": "add-trait", "value": "CUSTOM_LAB"},
        {"action": "set-driver-info", "field": "fake_note", "value": "bmc {inventory.bmc_address}"},
    ],
}


def inventory(serial: str, mac: str, extra_mac: str | None = None) -> dict[str, Any]:
    nics = [{"name": "ens3", "mac_address": mac}]
    if extra_mac:
        nics.append({"name": "ens4", "mac_address": extra_mac})
    return {
        "cpu": {"count": 2, "architecture": "x86_64"},
        "memory": {"physical_mb": 1024},
        "disks": [{"name": "/dev/vda", "size": 8 << 30}],
        "interfaces": nics,
        "system_vendor": {"manufacturer": "QEMU", "product_name": "pc", "serial_number": serial},
        "boot": {"pxe_interface": mac, "current_boot_mode": "bios"},
        "bmc_address": "10.9.9.9",
    }


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    discovery = {"enabled": True, "subnets": ["127.0.0.0/8"], "max_enrolments_per_minute": 3}
    async for a in api_with(tmp_path, discovery=discovery):
        yield a


def report(api: Api, mac: str, inv: dict[str, Any], boot: str | None = None) -> dict[str, Any]:
    key = load_or_create(api.bf.settings.secret_key_path)
    boot = boot or new_boot_id()
    return {"mac": mac, "boot_id": boot, "token": token_for(key, mac, boot), "inventory": inv}


async def test_rules_crud_and_order(api: Api) -> None:
    r = await api.c.post("/v1/discovery_rules", json=RULE)
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    r = await api.c.post(
        "/v1/discovery_rules",
        json={"name": "first", "priority": 99, "actions": [{"action": "add-trait", "value": "CUSTOM_A"}]},
    )
    assert r.status_code == 201
    rules = (await api.c.get("/v1/discovery_rules")).json()["rules"]
    assert [x["name"] for x in rules] == ["first", "lab-qemu"]
    assert (await api.c.get(f"/v1/discovery_rules/{uuid}")).json()["conditions"] == RULE["conditions"]
    assert (await api.c.get("/v1/discovery_rules/lab-qemu")).json()["uuid"] == uuid
    assert (await api.c.post("/v1/discovery_rules", json=RULE)).status_code == 409
    assert (await api.c.delete("/v1/discovery_rules/lab-qemu")).status_code == 204
    assert (await api.c.get(f"/v1/discovery_rules/{uuid}")).status_code == 404
    assert (await api.c.delete(f"/v1/discovery_rules/{uuid}")).status_code == 404
    status = (await api.c.get("/v1/discovery")).json()
    assert status["enabled"] is True and status["rules"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"actions": [{"action": "set-drive", "value": "x"}]}, "actions[0].action"),
        ({"actions": [{"action": "set-name", "value": "a"}],
          "conditions": [{"field": "inventory.cpu.count", "op": "gt", "value": "x"}]}, "conditions[0].value"),
        ({"actions": [{"action": "set-property", "value": 1}]}, "actions[0].field"),
        ({"name": "bad name", "actions": [{"action": "set-name", "value": "a"}]}, "name"),
        ({"conditions": []}, "actions"),
    ],
)  # fmt: skip
async def test_rule_errors_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    r = await api.c.post("/v1/discovery_rules", json=body)
    assert r.status_code == 400
    assert field in fault(r)


async def test_discovery_enrols_with_rules_and_merges_a_known_serial(api: Api) -> None:
    assert (await api.c.post("/v1/discovery_rules", json=RULE)).status_code == 201
    body = report(api, "52:54:00:aa:00:01", inventory("SN-1", "52:54:00:aa:00:01", "52:54:00:aa:00:11"))
    r = await api.c.post("/v1/discovery/report", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["enrolled"] is True and r.json()["power_off"] is True
    node = await api.get("rack1-SN-1")
    assert node["provision_state"] == "enroll"
    assert node["driver"] == "fake-hardware" and node["resource_class"] == "vm-small"
    assert node["driver_info"]["fake_note"] == "bmc 10.9.9.9"
    assert node["properties"]["cpus"] == 2 and node["properties"]["memory_mb"] == 1024
    traits = (await api.c.get(f"/v1/nodes/{node['uuid']}/traits")).json()["traits"]
    assert traits == ["CUSTOM_LAB"]
    ports = (await api.c.get(f"/v1/ports?node={node['uuid']}&detail=true")).json()["ports"]
    assert {(p["address"], p["pxe_enabled"]) for p in ports} == {
        ("52:54:00:aa:00:01", True),
        ("52:54:00:aa:00:11", False),
    }
    inv = (await api.c.get(f"/v1/nodes/{node['uuid']}/inventory")).json()["inventory"]
    assert inv["system_vendor"]["serial_number"] == "SN-1"
    # The same boot's retry: the same answer, nothing new.
    again = await api.c.post("/v1/discovery/report", json=body)
    assert again.status_code == 200 and again.json()["node"]["uuid"] == node["uuid"]
    # Another boot of a known MAC: refused.
    other = report(api, "52:54:00:aa:00:01", inventory("SN-1", "52:54:00:aa:00:01"))
    assert (await api.c.post("/v1/discovery/report", json=other)).status_code == 409
    # The same serial with a new NIC: one node, a new port that does not PXE-boot.
    merged = await api.c.post(
        "/v1/discovery/report", json=report(api, "52:54:00:aa:00:02", inventory("SN-1", "52:54:00:aa:00:02"))
    )
    assert merged.status_code == 200 and merged.json()["enrolled"] is False
    assert merged.json()["node"]["uuid"] == node["uuid"]
    nodes = (await api.c.get("/v1/nodes")).json()["nodes"]
    assert len(nodes) == 1
    ports = (await api.c.get(f"/v1/ports?node={node['uuid']}&detail=true")).json()["ports"]
    assert ("52:54:00:aa:00:02", False) in {(p["address"], p["pxe_enabled"]) for p in ports}


async def test_strangers_get_the_same_404(api: Api) -> None:
    mac = "52:54:00:aa:00:03"
    good = report(api, mac, inventory("SN-3", mac))
    for bad in (
        {**good, "token": "0" * 64},
        {**good, "mac": "52:54:00:aa:00:04"},
        {**good, "boot_id": new_boot_id()},
        {**good, "boot_id": new_boot_id(now=1)},
    ):
        r = await api.c.post("/v1/discovery/report", json=bad)
        assert r.status_code == 404
        assert fault(r) == "bootforge does not expect a discovery report from this address now"
    assert (await api.c.get("/v1/nodes")).json()["nodes"] == []
    status = (await api.c.get("/v1/discovery")).json()
    assert status["counts"]["refused"] == 4 and "old (token_ttl" in status["last_refusal"]


async def test_inventory_limits_and_rate_limit(api: Api) -> None:
    mac = "52:54:00:aa:00:05"
    inv = inventory("SN-5", mac)
    inv["interfaces"] = [{"name": f"e{i}", "mac_address": mac} for i in range(300)]
    r = await api.c.post("/v1/discovery/report", json=report(api, mac, inv))
    assert r.status_code == 400 and "inventory.interfaces" in fault(r)
    inv = inventory("SN-5", mac)
    inv["cpu"]["count"] = "many"
    r = await api.c.post("/v1/discovery/report", json=report(api, mac, inv))
    assert r.status_code == 400 and "inventory.cpu.count" in fault(r)
    codes = []
    for i in range(4):
        m = f"52:54:00:aa:01:{i:02x}"
        codes.append(
            (await api.c.post("/v1/discovery/report", json=report(api, m, inventory(f"R{i}", m)))).status_code
        )
    assert codes == [200, 200, 200, 429]


async def test_outside_the_subnets_nothing(tmp_path: Path) -> None:
    async for api in api_with(tmp_path, discovery={"enabled": True, "subnets": ["10.0.0.0/8"]}):
        mac = "52:54:00:aa:00:06"
        r = await api.c.post("/v1/discovery/report", json=report(api, mac, inventory("SN-6", mac)))
        assert r.status_code == 404
    async for api in api_with(tmp_path / "off"):
        r = await api.c.post("/v1/discovery/report", json=report(api, mac, inventory("SN-6", mac)))
        assert r.status_code == 404
