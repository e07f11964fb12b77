"""/v1/volume connectors and targets (Ironic API 1.32): create, list, show, patch, delete, the rules
Ironic applies (types, uniqueness, the node powered off for changes), errors naming the field, and the
CHAP secret masked in answers and sealed at rest."""

from __future__ import annotations

from typing import Any

import pytest
from apihelp import Api, fault
from sqlalchemy import text

V = {"X-OpenStack-Ironic-API-Version": "1.78"}
IQN = "iqn.2026-12.org.bootforge:node1"
TARGET_IQN = "iqn.2026-12.org.bootforge:vol1"
PASSWORD = "chap-secret-0123"


async def connector(api: Api, node: str, **body: Any) -> dict[str, Any]:
    r = await api.c.post(
        "/v1/volume/connectors",
        json={"node_uuid": node, "type": "iqn", "connector_id": IQN, **body},
        headers=V,
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def iscsi_properties(**more: Any) -> dict[str, Any]:
    return {
        "target_iqn": TARGET_IQN,
        "target_portal": "192.0.2.5:3260",
        "target_lun": 1,
        "auth_method": "CHAP",
        "auth_username": "initiator",
        "auth_password": PASSWORD,
        **more,
    }


async def target(api: Api, node: str, **body: Any) -> dict[str, Any]:
    doc = {"node_uuid": node, "volume_type": "iscsi", "boot_index": 0, "volume_id": "vol-1", **body}
    r = await api.c.post("/v1/volume/targets", json=doc, headers=V)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_connector_lifecycle(api: Api) -> None:
    node = (await api.node(name="bfv"))["uuid"]
    made = await connector(api, "bfv", extra={"rack": "r1"})
    assert made["node_uuid"] == node and made["type"] == "iqn" and made["connector_id"] == IQN
    assert made["links"][0]["href"].endswith(f"/v1/volume/connectors/{made['uuid']}")
    mac = await connector(api, node, type="mac", connector_id="52-54-00-AA-BB-01")
    assert mac["connector_id"] == "52:54:00:aa:bb:01"

    listed = (await api.c.get("/v1/volume/connectors", headers=V)).json()["connectors"]
    assert {c["uuid"] for c in listed} == {made["uuid"], mac["uuid"]}
    assert set(listed[0]) == {"uuid", "node_uuid", "type", "connector_id", "links"}
    nested = (await api.c.get(f"/v1/nodes/{node}/volume/connectors?detail=true", headers=V)).json()
    assert {c["uuid"] for c in nested["connectors"]} == {made["uuid"], mac["uuid"]}
    assert "extra" in nested["connectors"][0]
    shown = (await api.c.get(f"/v1/volume/connectors/{made['uuid']}", headers=V)).json()
    assert shown["extra"] == {"rack": "r1"} and shown["created_at"]

    r = await api.c.patch(
        f"/v1/volume/connectors/{made['uuid']}",
        json=[{"op": "replace", "path": "/connector_id", "value": "iqn.2026-12.org.bootforge:renamed"}],
        headers=V,
    )
    assert r.status_code == 200, r.text
    assert r.json()["connector_id"] == "iqn.2026-12.org.bootforge:renamed"

    assert (await api.c.delete(f"/v1/volume/connectors/{made['uuid']}", headers=V)).status_code == 204
    assert (await api.c.get(f"/v1/volume/connectors/{made['uuid']}", headers=V)).status_code == 404
    events = [e["event"] for e in (await api.c.get(f"/v1/nodes/{node}/history", headers=V)).json()["history"]]
    assert any("volume connector iqn" in e and "added" in e for e in events), events


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "nvme", "connector_id": "x"}, "type"),
        ({"type": "iqn", "connector_id": "not an iqn"}, "connector_id"),
        ({"type": "wwpn", "connector_id": "12345"}, "connector_id"),
        ({"type": "ip", "connector_id": "300.1.1.1"}, "connector_id"),
        ({"type": "iqn", "connector_id": IQN, "colour": "blue"}, "colour"),
        ({"type": "iqn"}, "connector_id"),
        ({"type": "iqn", "connector_id": IQN, "uuid": "nope"}, "uuid"),
    ],
)
async def test_connector_errors_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    node = (await api.node())["uuid"]
    r = await api.c.post("/v1/volume/connectors", json={"node_uuid": node, **body}, headers=V)
    assert r.status_code == 400, r.text
    assert field in fault(r)


async def test_connector_type_and_id_unique_across_nodes(api: Api) -> None:
    a = (await api.node())["uuid"]
    b = (await api.node())["uuid"]
    await connector(api, a)
    r = await api.c.post(
        "/v1/volume/connectors", json={"node_uuid": b, "type": "iqn", "connector_id": IQN}, headers=V
    )
    assert r.status_code == 409 and IQN in fault(r)


async def test_unknown_node_is_400_naming_node_uuid(api: Api) -> None:
    r = await api.c.post(
        "/v1/volume/connectors", json={"node_uuid": "ghost", "type": "iqn", "connector_id": IQN}, headers=V
    )
    assert r.status_code == 400 and "ghost" in fault(r)


async def test_volume_needs_api_1_32(api: Api) -> None:
    old = {"X-OpenStack-Ironic-API-Version": "1.31"}
    assert (await api.c.get("/v1/volume/connectors", headers=old)).status_code == 404
    assert (await api.c.get("/v1/volume", headers=V)).status_code == 200
    assert (await api.c.get("/v1/", headers=V)).json()["volume"][0]["href"].endswith("/v1/volume/")
    node = await api.node()
    assert "volume" not in (await api.c.get(f"/v1/nodes/{node['uuid']}", headers=old)).json()
    shown = (await api.c.get(f"/v1/nodes/{node['uuid']}", headers=V)).json()
    assert shown["volume"][0]["href"].endswith(f"/v1/nodes/{node['uuid']}/volume")
    assert shown["storage_interface"] == "fake"
    nested = (await api.c.get(f"/v1/nodes/{node['uuid']}/volume", headers=V)).json()
    assert nested["targets"][0]["href"].endswith("/volume/targets")


async def test_target_lifecycle_masks_and_seals_the_chap_password(api: Api) -> None:
    node = (await api.node(name="bfv-t"))["uuid"]
    made = await target(api, node, properties=iscsi_properties())
    assert made["properties"]["auth_password"] == "******"
    assert made["properties"]["target_iqn"] == TARGET_IQN and made["boot_index"] == 0
    listed = (await api.c.get("/v1/volume/targets", headers=V)).json()["targets"]
    assert set(listed[0]) == {"uuid", "node_uuid", "volume_type", "boot_index", "volume_id", "links"}
    detail = (await api.c.get("/v1/volume/targets?detail=true", headers=V)).json()["targets"]
    assert detail[0]["properties"]["auth_password"] == "******"

    # At rest: sealed, not plaintext (a copy of the database gives no CHAP secret away).
    async with api.bf.conductor.db.read_conn() as conn:
        stored = (await conn.execute(text("SELECT properties FROM volume_targets"))).scalar_one()
    assert PASSWORD not in str(stored) and "bfenc:v1:" in str(stored)

    # The conductor opens it: the boot volume as the netboot view and the storage interface read it.
    from bootforge.conductor.volumes import boot_volumes

    volumes = await boot_volumes(api.bf.conductor.db, await node_id(api, node))
    (vol,) = volumes.values()
    conn_ = vol.iscsi()
    assert (conn_.host, conn_.port, conn_.lun, conn_.iqn) == ("192.0.2.5", 3260, 1, TARGET_IQN)
    assert (conn_.username, conn_.password) == ("initiator", PASSWORD)

    # A patch that leaves the password alone keeps it; one that changes the LUN is checked.
    r = await api.c.patch(
        f"/v1/volume/targets/{made['uuid']}",
        json=[{"op": "replace", "path": "/properties/target_lun", "value": 2}],
        headers=V,
    )
    assert r.status_code == 200, r.text
    (vol,) = (await boot_volumes(api.bf.conductor.db, await node_id(api, node))).values()
    assert vol.iscsi().lun == 2 and vol.iscsi().password == PASSWORD
    r = await api.c.patch(
        f"/v1/volume/targets/{made['uuid']}",
        json=[{"op": "replace", "path": "/properties/target_lun", "value": 4096}],
        headers=V,
    )
    assert r.status_code == 400 and "target_lun" in fault(r)

    assert (await api.c.delete(f"/v1/volume/targets/{made['uuid']}", headers=V)).status_code == 204
    assert (await api.c.get("/v1/volume/targets", headers=V)).json()["targets"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"boot_index": -1}, "boot_index"),
        ({"boot_index": True}, "boot_index"),
        ({"volume_id": ""}, "volume_id"),
        ({"properties": iscsi_properties(target_portal="10.0.0.1:99999")}, "target_portal"),
        ({"properties": iscsi_properties(target_iqn="iqn bad")}, "target_iqn"),
        ({"properties": iscsi_properties(auth_password="has space")}, "auth_password"),
        ({"properties": iscsi_properties(auth_method="Kerberos")}, "auth_method"),
        ({"properties": "no"}, "properties"),
    ],
)
async def test_target_errors_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    node = (await api.node())["uuid"]
    doc = {"node_uuid": node, "volume_type": "iscsi", "boot_index": 0, "volume_id": "v", **body}
    r = await api.c.post("/v1/volume/targets", json=doc, headers=V)
    assert r.status_code == 400, r.text
    assert field in fault(r)
    assert "has space" not in fault(r)


async def test_target_boot_index_unique_per_node(api: Api) -> None:
    a = (await api.node())["uuid"]
    b = (await api.node())["uuid"]
    await target(api, a)
    await target(api, b)  # another node may have its own boot_index 0
    r = await api.c.post(
        "/v1/volume/targets",
        json={"node_uuid": a, "volume_type": "iscsi", "boot_index": 0, "volume_id": "vol-2"},
        headers=V,
    )
    assert r.status_code == 409 and "boot index" in fault(r)


async def test_changes_need_the_node_powered_off(api: Api) -> None:
    node = (await api.node())["uuid"]
    t = await target(api, node)
    c = await connector(api, node)
    await api.drive(node, "manage")  # verify reads the fake power state
    r = await api.c.put(f"/v1/nodes/{node}/states/power", json={"target": "power on"}, headers=V)
    assert r.status_code == 202, r.text
    await api.bf.conductor.wait_idle()
    r = await api.c.delete(f"/v1/volume/targets/{t['uuid']}", headers=V)
    assert r.status_code == 400 and "power" in fault(r)
    r = await api.c.patch(
        f"/v1/volume/connectors/{c['uuid']}", json=[{"op": "add", "path": "/extra/a", "value": 1}], headers=V
    )
    assert r.status_code == 400 and "power" in fault(r)
    r = await api.c.put(f"/v1/nodes/{node}/states/power", json={"target": "power off"}, headers=V)
    await api.bf.conductor.wait_idle()
    assert (await api.c.delete(f"/v1/volume/targets/{t['uuid']}", headers=V)).status_code == 204


async def test_node_delete_takes_its_volumes(api: Api) -> None:
    node = (await api.node())["uuid"]
    await target(api, node)
    await connector(api, node)
    assert (await api.c.delete(f"/v1/nodes/{node}", headers=V)).status_code == 204
    assert (await api.c.get("/v1/volume/targets", headers=V)).json()["targets"] == []
    assert (await api.c.get("/v1/volume/connectors", headers=V)).json()["connectors"] == []


async def node_id(api: Api, uuid: str) -> int:
    from bootforge.conductor.task import load_node

    return (await load_node(api.bf.conductor, uuid)).id
