"""/v1/nodes: list filters, pagination and sorting, show, JSON-PATCH, delete rules and secret masking."""

from __future__ import annotations

import json

from apihelp import Api, fault


async def names(api: Api, **params: str) -> list[str]:
    r = await api.c.get("/v1/nodes", params={"fields": "name", **params})
    assert r.status_code == 200, r.text
    return [n["name"] for n in r.json()["nodes"]]


async def test_list_filters(api: Api) -> None:
    await api.node(name="enrolled", resource_class="small")
    ready = await api.available(name="ready", resource_class="large")
    await api.available(name="other-driver", resource_class="large", driver="fake-hardware")
    r = await api.c.patch(
        f"/v1/nodes/{ready['uuid']}", json=[{"op": "replace", "path": "/maintenance", "value": True}]
    )
    assert r.status_code == 200, r.text
    r = await api.c.patch(
        f"/v1/nodes/{ready['uuid']}",
        json=[{"op": "add", "path": "/instance_uuid", "value": "6d1b1a8e-55a7-4a39-86f8-2dc2e8a9c6a6"}],
    )
    assert r.status_code == 200, r.text

    assert await names(api, provision_state="available") == ["ready", "other-driver"]
    assert await names(api, provision_state="enroll") == ["enrolled"]
    assert await names(api, maintenance="true") == ["ready"]
    assert await names(api, maintenance="false") == ["enrolled", "other-driver"]
    assert await names(api, resource_class="large") == ["ready", "other-driver"]
    assert await names(api, driver="fake-hardware") == ["enrolled", "ready", "other-driver"]
    assert await names(api, driver="ipmi") == []
    assert await names(api, associated="true") == ["ready"]
    assert await names(api, associated="false") == ["enrolled", "other-driver"]
    assert await names(api, provision_state="available", associated="false") == ["other-driver"]


async def test_bad_boolean_filter_is_400_naming_it(api: Api) -> None:
    r = await api.c.get("/v1/nodes", params={"maintenance": "perhaps"})
    assert r.status_code == 400
    assert "maintenance" in fault(r) and "perhaps" in fault(r)


async def test_pagination_with_limit_marker_and_next_link(api: Api) -> None:
    for i in range(5):
        await api.node(name=f"n{i}")
    r = await api.c.get("/v1/nodes", params={"limit": "2", "fields": "name"})
    page = r.json()
    assert [n["name"] for n in page["nodes"]] == ["n0", "n1"]
    assert "limit=2" in page["next"] and f"marker={page['nodes'][-1]['uuid']}" in page["next"]
    assert "fields=name" in page["next"]
    seen = [n["name"] for n in page["nodes"]]
    while "next" in page:
        page = (await api.c.get(page["next"])).json()
        seen += [n["name"] for n in page["nodes"]]
    assert seen == ["n0", "n1", "n2", "n3", "n4"]


async def test_sorting_by_key_and_direction(api: Api) -> None:
    for name in ("bravo", "alpha", "charlie"):
        await api.node(name=name)
    assert await names(api, sort_key="name") == ["alpha", "bravo", "charlie"]
    assert await names(api, sort_key="name", sort_dir="desc") == ["charlie", "bravo", "alpha"]
    first = (
        await api.c.get("/v1/nodes", params={"sort_key": "name", "sort_dir": "desc", "limit": "1"})
    ).json()
    marker = first["nodes"][0]["uuid"]
    assert await names(api, sort_key="name", sort_dir="desc", marker=marker) == ["bravo", "alpha"]


async def test_invalid_sort_key_direction_limit_and_marker_are_400(api: Api) -> None:
    r = await api.c.get("/v1/nodes", params={"sort_key": "driver_info"})
    assert r.status_code == 400
    assert "'driver_info'" in fault(r) and "sort" in fault(r)
    r = await api.c.get("/v1/nodes", params={"sort_dir": "up"})
    assert r.status_code == 400 and "'up'" in fault(r)
    r = await api.c.get("/v1/nodes", params={"limit": "many"})
    assert r.status_code == 400 and "limit" in fault(r)
    r = await api.c.get("/v1/nodes", params={"marker": "0b5ee0e2-3cc1-4e44-a2a5-7c8d1f5b7a11"})
    assert r.status_code == 400 and "marker" in fault(r)


async def test_show_by_uuid_and_by_name_and_missing(api: Api) -> None:
    node = await api.node(name="by-name")
    by_name = await api.get("by-name")
    assert by_name["uuid"] == node["uuid"]
    assert (await api.get(node["uuid"]))["name"] == "by-name"
    r = await api.c.get("/v1/nodes/no-such-node")
    assert r.status_code == 404
    assert "no-such-node" in fault(r)


async def test_create_validation_names_the_field(api: Api) -> None:
    r = await api.c.post("/v1/nodes", json={"name": "x"})
    assert r.status_code == 400 and "driver" in fault(r)
    r = await api.c.post("/v1/nodes", json={"driver": "no-such-driver"})
    assert r.status_code == 400 and "no-such-driver" in fault(r)
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware", "colour": "red"})
    assert r.status_code == 400 and "colour" in fault(r)
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware", "name": "has space"})
    assert r.status_code == 400 and "has space" in fault(r)
    r = await api.c.post("/v1/nodes", content=b"{not json")
    assert r.status_code == 400 and "JSON" in fault(r)


async def test_patch_nested_driver_info_keys(api: Api) -> None:
    node = await api.node(driver_info={"ipmi_address": "10.0.0.1", "ipmi_username": "admin"})
    r = await api.c.patch(
        f"/v1/nodes/{node['uuid']}",
        json=[
            {"op": "add", "path": "/driver_info/ipmi_port", "value": 623},
            {"op": "replace", "path": "/driver_info/ipmi_address", "value": "10.0.0.2"},
            {"op": "remove", "path": "/driver_info/ipmi_username"},
            {"op": "add", "path": "/extra/rack", "value": "r1"},
            {"op": "replace", "path": "/name", "value": "patched"},
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["driver_info"] == {"ipmi_address": "10.0.0.2", "ipmi_port": 623}
    assert body["extra"] == {"rack": "r1"}
    assert body["name"] == "patched"
    assert (await api.get("patched"))["driver_info"] == body["driver_info"]
    r = await api.c.patch(f"/v1/nodes/{node['uuid']}", json=[{"op": "remove", "path": "/extra"}])
    assert r.json()["extra"] == {}


async def test_patch_refuses_read_only_and_unknown_fields_naming_them(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    for path in ("/provision_state", "/power_state", "/uuid", "/no_such_field"):
        r = await api.c.patch(f"/v1/nodes/{uuid}", json=[{"op": "replace", "path": path, "value": "x"}])
        assert r.status_code == 400, path
        assert path in fault(r)
    r = await api.c.patch(f"/v1/nodes/{uuid}", json=[{"op": "remove", "path": "/driver_info/missing"}])
    assert r.status_code == 400
    assert "missing" in fault(r) or "patch" in fault(r).lower()
    r = await api.c.patch(f"/v1/nodes/{uuid}", json={"op": "replace"})
    assert r.status_code == 400


async def test_name_must_be_unique(api: Api) -> None:
    await api.node(name="taken")
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware", "name": "taken"})
    assert r.status_code == 409 and "taken" in fault(r)
    other = await api.node(name="free")
    r = await api.c.patch(
        f"/v1/nodes/{other['uuid']}", json=[{"op": "replace", "path": "/name", "value": "taken"}]
    )
    assert r.status_code == 409 and "taken" in fault(r)


async def test_delete_of_an_active_node_is_409_naming_the_state(api: Api) -> None:
    uuid = (await api.available())["uuid"]
    await api.drive(uuid, "active")
    r = await api.c.delete(f"/v1/nodes/{uuid}")
    assert r.status_code == 409
    assert '"active"' in fault(r) and "delete" in fault(r).lower()
    assert (await api.get(uuid))["provision_state"] == "active"


async def test_delete_of_a_protected_node_is_403(api: Api) -> None:
    uuid = (await api.available())["uuid"]
    await api.drive(uuid, "active")
    r = await api.c.patch(
        f"/v1/nodes/{uuid}",
        json=[
            {"op": "replace", "path": "/protected", "value": True},
            {"op": "replace", "path": "/protected_reason", "value": "production db"},
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json()["protected_reason"] == "production db"
    r = await api.c.delete(f"/v1/nodes/{uuid}")
    assert r.status_code == 403 and "protected" in fault(r)
    r = await api.verb(uuid, "deleted")
    assert r.status_code == 403 and "protected" in fault(r)


async def test_protection_only_on_active_nodes(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    r = await api.c.patch(f"/v1/nodes/{uuid}", json=[{"op": "replace", "path": "/protected", "value": True}])
    assert r.status_code == 400 and "active" in fault(r)


async def test_delete_removes_the_node_and_its_ports(api: Api) -> None:
    uuid = (await api.node(name="gone"))["uuid"]
    port = await api.port(uuid, "52:54:00:00:00:01")
    assert (await api.c.delete("/v1/nodes/gone")).status_code == 204
    assert (await api.c.get(f"/v1/nodes/{uuid}")).status_code == 404
    assert (await api.c.get(f"/v1/ports/{port['uuid']}")).status_code == 404


SECRET = "s3cr3t-do-not-show"


async def test_secrets_are_masked_everywhere(api: Api) -> None:
    info = {
        "ipmi_address": "10.0.0.9",
        "ipmi_password": SECRET,
        "redfish_auth_token": SECRET,
        "bmc": {"user": "root", "password": SECRET},
    }
    node = await api.node(name="secretive", driver_info=info)
    uuid = node["uuid"]
    assert node["driver_info"]["ipmi_password"] == "******"
    assert node["driver_info"]["redfish_auth_token"] == "******"
    assert node["driver_info"]["ipmi_address"] == "10.0.0.9"
    assert node["driver_info"]["bmc"] == {"user": "root", "password": "******"}
    r = await api.c.patch(
        f"/v1/nodes/{uuid}",
        json=[{"op": "replace", "path": "/driver_info/ipmi_password", "value": SECRET + "2"}],
    )
    assert r.status_code == 200
    await api.drive(uuid, "manage", "provide")
    await api.drive(uuid, "active")
    r = await api.verb(uuid, "rescue", rescue_password=SECRET)
    assert r.status_code == 202, r.text
    await api.bf.conductor.wait_idle()
    bodies = [
        (await api.c.get(f"/v1/nodes/{uuid}")).text,
        (await api.c.get("/v1/nodes/detail")).text,
        (await api.c.get("/v1/nodes", params={"fields": "driver_info,instance_info"})).text,
        (await api.c.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})).text,
        (await api.c.get(f"/v1/nodes/{uuid}/validate")).text,
        (await api.c.get(f"/v1/nodes/{uuid}/states")).text,
    ]
    history = json.loads(bodies[3])["history"]
    for item in history:
        bodies.append((await api.c.get(item["links"][0]["href"])).text)
    for text in bodies:
        assert SECRET not in text
    shown = json.loads(bodies[0])
    assert shown["driver_info"]["ipmi_password"] == "******"
    assert shown["instance_info"]["rescue_password"] == "******"


async def test_next_link_encodes_the_query(api: Api) -> None:
    for _ in range(2):
        await api.node(owner="team a&b")
    await api.node(owner="team a")
    page = (await api.c.get("/v1/nodes", params={"owner": "team a&b", "limit": "1"})).json()
    assert " " not in page["next"] and "owner=team+a%26b" in page["next"]
    second = (await api.c.get(page["next"])).json()
    assert len(second["nodes"]) == 1 and second["nodes"][0]["uuid"] != page["nodes"][0]["uuid"]


async def test_paging_by_a_column_with_nulls(api: Api) -> None:
    await api.node(name="named")
    for _ in range(2):
        await api.node()
    seen = []
    page = (await api.c.get("/v1/nodes", params={"sort_key": "name", "limit": "1"})).json()
    seen += page["nodes"]
    while "next" in page:
        r = await api.c.get(page["next"])
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["nodes"]
    assert len(seen) == 3 and len({n["uuid"] for n in seen}) == 3
