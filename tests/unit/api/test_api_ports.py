"""/v1/ports and /v1/portgroups: create, list (by node, by address), show, patch, delete and validation."""

from __future__ import annotations

from apihelp import Api, fault

MAC1 = "52:54:00:aa:00:01"
MAC2 = "52:54:00:aa:00:02"


async def test_port_lifecycle(api: Api) -> None:
    a = (await api.node(name="a"))["uuid"]
    b = (await api.node(name="b"))["uuid"]
    # MACs are stored in Ironic's lower-case colon form whatever form they arrive in.
    p1 = await api.port(a, "52-54-00-AA-00-01", extra={"slot": 1})
    assert p1["address"] == MAC1 and p1["node_uuid"] == a and p1["extra"] == {"slot": 1}
    p2 = await api.port(b, MAC2, pxe_enabled=False)
    assert p2["pxe_enabled"] is False

    listed = (await api.c.get("/v1/ports")).json()["ports"]
    assert {p["address"] for p in listed} == {MAC1, MAC2}
    assert set(listed[0]) == {"uuid", "address", "links"}
    by_node = (await api.c.get("/v1/ports", params={"node": "b"})).json()["ports"]
    assert [p["uuid"] for p in by_node] == [p2["uuid"]]
    nested = (await api.c.get(f"/v1/nodes/{a}/ports")).json()["ports"]
    assert [p["uuid"] for p in nested] == [p1["uuid"]]
    nested_detail = (await api.c.get("/v1/nodes/a/ports/detail")).json()["ports"]
    assert nested_detail[0]["node_uuid"] == a
    by_address = (await api.c.get("/v1/ports", params={"address": "52:54:00:AA:00:02"})).json()["ports"]
    assert [p["uuid"] for p in by_address] == [p2["uuid"]]
    detail = (await api.c.get("/v1/ports/detail")).json()["ports"]
    assert {p["node_uuid"] for p in detail} == {a, b}

    shown = (await api.c.get(f"/v1/ports/{p1['uuid']}")).json()
    assert shown["address"] == MAC1 and shown["pxe_enabled"] is True

    r = await api.c.patch(
        f"/v1/ports/{p1['uuid']}",
        json=[
            {"op": "replace", "path": "/address", "value": "52:54:00:aa:00:0a"},
            {"op": "add", "path": "/extra/cable", "value": "blue"},
            {"op": "replace", "path": "/node_uuid", "value": b},
        ],
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["address"] == "52:54:00:aa:00:0a"
    assert patched["extra"] == {"slot": 1, "cable": "blue"}
    assert patched["node_uuid"] == b

    assert (await api.c.delete(f"/v1/ports/{p1['uuid']}")).status_code == 204
    r = await api.c.get(f"/v1/ports/{p1['uuid']}")
    assert r.status_code == 404 and p1["uuid"] in fault(r)


async def test_bad_mac_is_400_naming_address(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    for bad in ("52:54:00:aa:00", "zz:54:00:aa:00:01", "not-a-mac"):
        r = await api.c.post("/v1/ports", json={"node_uuid": uuid, "address": bad})
        assert r.status_code == 400, bad
        assert bad in fault(r) and "MAC address" in fault(r)
    r = await api.c.post("/v1/ports", json={"node_uuid": uuid})
    assert r.status_code == 400 and "address" in fault(r)


async def test_duplicate_mac_is_409(api: Api) -> None:
    a = (await api.node())["uuid"]
    b = (await api.node())["uuid"]
    await api.port(a, MAC1)
    r = await api.c.post("/v1/ports", json={"node_uuid": b, "address": MAC1.upper()})
    assert r.status_code == 409 and MAC1 in fault(r)
    other = await api.port(b, MAC2)
    r = await api.c.patch(
        f"/v1/ports/{other['uuid']}", json=[{"op": "replace", "path": "/address", "value": MAC1}]
    )
    assert r.status_code == 409 and MAC1 in fault(r)


async def test_port_for_a_missing_node_or_unknown_field(api: Api) -> None:
    r = await api.c.post("/v1/ports", json={"node_uuid": "ghost", "address": MAC1})
    assert r.status_code == 400 and "ghost" in fault(r)
    uuid = (await api.node())["uuid"]
    r = await api.c.post("/v1/ports", json={"node_uuid": uuid, "address": MAC1, "speed": 10})
    assert r.status_code == 400 and "speed" in fault(r)
    port = await api.port(uuid, MAC1)
    r = await api.c.patch(
        f"/v1/ports/{port['uuid']}", json=[{"op": "replace", "path": "/uuid", "value": "x"}]
    )
    assert r.status_code == 400 and "/uuid" in fault(r)


async def test_portgroups(api: Api) -> None:
    node = (await api.node(name="bonded"))["uuid"]
    r = await api.c.post(
        "/v1/portgroups",
        json={"node_uuid": node, "name": "bond0", "address": "52:54:00:bb:00:01", "mode": "802.3ad"},
    )
    assert r.status_code == 201, r.text
    group = r.json()
    assert group["name"] == "bond0" and group["mode"] == "802.3ad" and group["node_uuid"] == node
    port = await api.port(node, MAC1, portgroup_uuid=group["uuid"])
    assert port["portgroup_uuid"] == group["uuid"]

    assert (await api.c.get("/v1/portgroups/bond0")).json()["uuid"] == group["uuid"]
    listed = (await api.c.get("/v1/portgroups")).json()["portgroups"]
    assert [g["name"] for g in listed] == ["bond0"]
    assert [g["uuid"] for g in (await api.c.get(f"/v1/nodes/{node}/portgroups")).json()["portgroups"]] == [
        group["uuid"]
    ]
    members = (await api.c.get("/v1/portgroups/bond0/ports")).json()["ports"]
    assert [p["uuid"] for p in members] == [port["uuid"]]

    r = await api.c.post("/v1/portgroups", json={"node_uuid": node, "name": "bond0"})
    assert r.status_code == 409 and "bond0" in fault(r)

    r = await api.c.patch("/v1/portgroups/bond0", json=[{"op": "replace", "path": "/name", "value": "bond1"}])
    assert r.status_code == 200 and r.json()["name"] == "bond1"

    r = await api.c.delete("/v1/portgroups/bond1")
    assert r.status_code == 409 and "ports" in fault(r)
    r = await api.c.patch(f"/v1/ports/{port['uuid']}", json=[{"op": "remove", "path": "/portgroup_uuid"}])
    assert r.status_code == 200 and r.json()["portgroup_uuid"] is None
    assert (await api.c.delete("/v1/portgroups/bond1")).status_code == 204
    assert (await api.c.get("/v1/portgroups/bond1")).status_code == 404


async def test_port_cannot_join_another_nodes_group(api: Api) -> None:
    a = (await api.node())["uuid"]
    b = (await api.node())["uuid"]
    group = (await api.c.post("/v1/portgroups", json={"node_uuid": a, "name": "g"})).json()
    r = await api.c.post("/v1/ports", json={"node_uuid": b, "address": MAC1, "portgroup_uuid": group["uuid"]})
    assert r.status_code == 400 and "another node" in fault(r)
