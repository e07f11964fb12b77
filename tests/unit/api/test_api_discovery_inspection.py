"""Discovery rules run on every inspection too: an enrolled node inspected by its agent gets what the
matching rules set, and its serial is claimed (a later discovery of that serial merges into it)."""

from __future__ import annotations

from typing import Any

from apihelp import Api
from test_api_agent import INVENTORY, MAC, agent_api, enrolled, lookup, poll, report  # noqa: F401

RULE = {
    "name": "inspected",
    "conditions": [{"field": "inventory.cpu.count", "op": "gt", "value": 2}],
    "actions": [
        {"action": "set-resource-class", "value": "big"},
        {"action": "add-trait", "value": "CUSTOM_INSPECTED"},
        {"action": "set-name", "value": "node-{inventory.system_vendor.serial_number}"},
        {"action": "set-property", "field": "rack", "value": "r7"},
        {"action": "set-driver-info", "field": "deploy_kernel", "value": "{inventory.nothing}"},
    ],
}


async def test_rules_apply_on_inspection(agent_api: Api) -> None:  # noqa: F811
    api = agent_api
    assert (await api.c.post("/v1/discovery_rules", json=RULE)).status_code == 201
    node = await enrolled(api)
    await api.drive(node, "inspect")
    token = await lookup(api)
    command = await poll(api, node, token)
    assert command is not None
    inventory: dict[str, Any] = {
        **INVENTORY,
        "system_vendor": {**INVENTORY["system_vendor"], "serial_number": "X9"},
    }
    result = {"inventory": inventory, "plugin_data": {}}
    assert await report(api, node, token, command["id"], status="succeeded", result=result) == 200
    shown = await api.get(node)
    assert shown["provision_state"] == "manageable", shown["last_error"]
    assert shown["resource_class"] == "big" and shown["name"] == "node-X9"
    assert shown["properties"]["rack"] == "r7" and shown["properties"]["cpus"] == 4
    assert "deploy_kernel" not in shown["driver_info"]
    assert (await api.c.get(f"/v1/nodes/{node}/traits")).json()["traits"] == ["CUSTOM_INSPECTED"]
    events = [e["event"] for e in (await api.c.get(f"/v1/nodes/{node}/history")).json()["history"]]
    assert any(e.startswith("rules applied: inspected") for e in events), events
    assert any("the inventory has no inventory.nothing" in e for e in events), events
