"""Version discovery, microversion negotiation and what each microversion shows."""

from __future__ import annotations

import pytest
from apihelp import Api, fault

V = "X-OpenStack-Ironic-API-Version"


def at(version: str) -> dict[str, str]:
    return {V: version}


async def test_root_lists_v1_with_its_version_range(api: Api) -> None:
    r = await api.c.get("/", headers={V: ""})
    assert r.status_code == 200
    doc = r.json()
    assert doc["default_version"]["id"] == "v1"
    assert doc["default_version"]["min_version"] == "1.1"
    assert doc["default_version"]["version"] == "1.78"
    assert doc["versions"] == [doc["default_version"]]
    assert doc["default_version"]["links"][0]["href"] == "http://localhost/v1/"


@pytest.mark.parametrize("path", ["/v1", "/v1/"])
async def test_v1_links_every_resource(api: Api, path: str) -> None:
    r = await api.c.get(path)
    assert r.status_code == 200
    doc = r.json()
    assert doc["id"] == "v1"
    assert doc["version"]["version"] == "1.78"
    assert doc["media_types"][0]["type"] == "application/vnd.openstack.ironic.v1+json"
    for name in ("nodes", "ports", "portgroups", "drivers", "allocations", "conductors"):
        assert doc[name][0]["href"] == f"http://localhost/v1/{name}/"


@pytest.mark.parametrize("path", ["/", "/v1/nodes", "/v1/nodes/nope", "/v1/drivers"])
async def test_every_response_carries_the_version_range(api: Api, path: str) -> None:
    r = await api.c.get(path, headers=at("1.40"))
    assert r.headers["X-OpenStack-Ironic-API-Minimum-Version"] == "1.1"
    assert r.headers["X-OpenStack-Ironic-API-Maximum-Version"] == "1.78"
    assert r.headers["X-OpenStack-Ironic-API-Version"] == "1.40"
    assert r.headers["OpenStack-API-Version"] == "baremetal 1.40"
    assert r.headers["X-OpenStack-Request-Id"].startswith("req-")


@pytest.mark.parametrize("version", ["1.79", "1.0", "2.1", "1.999"])
async def test_version_outside_the_range_is_406_naming_the_range(api: Api, version: str) -> None:
    r = await api.c.get("/v1/nodes", headers=at(version))
    assert r.status_code == 406
    msg = fault(r)
    assert version in msg and "[1.1, 1.78]" in msg
    # Even the refusal tells the client what it may ask for, so it can negotiate down.
    assert r.headers["X-OpenStack-Ironic-API-Minimum-Version"] == "1.1"
    assert r.headers["X-OpenStack-Ironic-API-Maximum-Version"] == "1.78"


@pytest.mark.parametrize("version", ["abc", "1", "1.x", "latest.1"])
async def test_malformed_version_is_406_quoting_it(api: Api, version: str) -> None:
    r = await api.c.get("/v1/nodes", headers=at(version))
    assert r.status_code == 406
    assert version in fault(r)


async def test_latest_means_the_maximum(api: Api) -> None:
    r = await api.c.get("/v1/nodes", headers=at("latest"))
    assert r.status_code == 200
    assert r.headers["X-OpenStack-Ironic-API-Version"] == "1.78"


async def test_standard_openstack_api_version_header_is_understood(api: Api) -> None:
    del api.c.headers[V]
    r = await api.c.get("/v1/nodes", headers={"OpenStack-API-Version": "baremetal 1.50"})
    assert r.headers["X-OpenStack-Ironic-API-Version"] == "1.50"


async def test_no_version_header_means_1_1_and_new_nodes_start_available(api: Api) -> None:
    del api.c.headers[V]
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware"})
    assert r.status_code == 201
    assert r.headers["X-OpenStack-Ironic-API-Version"] == "1.1"
    node = r.json()
    # Before 1.11 Ironic enrolled nodes straight into available; old clients rely on it.
    assert node["provision_state"] == "available"
    assert "name" not in node and "resource_class" not in node and "traits" not in node


async def test_from_1_11_new_nodes_start_in_enroll(api: Api) -> None:
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware"}, headers=at("1.11"))
    assert r.json()["provision_state"] == "enroll"


async def test_fields_follow_the_requested_version(api: Api) -> None:
    uuid = (await api.node(name="gated", resource_class="baremetal"))["uuid"]
    old = (await api.c.get(f"/v1/nodes/{uuid}", headers=at("1.20"))).json()
    assert "resource_class" not in old and "network_interface" in old and "traits" not in old
    mid = (await api.c.get(f"/v1/nodes/{uuid}", headers=at("1.30"))).json()
    assert mid["resource_class"] == "baremetal"
    assert "traits" not in mid and "boot_interface" not in mid
    new = (await api.c.get(f"/v1/nodes/{uuid}", headers=at("1.78"))).json()
    for field in ("traits", "boot_interface", "protected", "owner", "retired", "lessee", "boot_mode"):
        assert field in new, field
    assert "states" not in (await api.c.get(f"/v1/nodes/{uuid}", headers=at("1.13"))).json()
    assert "states" in new and "portgroups" in new


async def test_a_resource_newer_than_the_version_does_not_exist(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    r = await api.c.get(f"/v1/nodes/{uuid}/traits", headers=at("1.36"))
    assert r.status_code == 404
    assert "1.37" in fault(r)
    assert (await api.c.get("/v1/allocations", headers=at("1.51"))).status_code == 404
    assert (await api.c.get(f"/v1/nodes/{uuid}/history", headers=at("1.77"))).status_code == 404


async def test_a_verb_newer_than_the_version_is_refused_with_the_known_verbs(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    r = await api.c.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "deploy"}, headers=at("1.72"))
    assert r.status_code == 400
    msg = fault(r)
    assert "'deploy'" in msg and "1.72" in msg and "active" in msg


async def test_fields_selection(api: Api) -> None:
    uuid = (await api.node(name="picked", driver_info={"ipmi_address": "10.0.0.1"}))["uuid"]
    r = await api.c.get(f"/v1/nodes/{uuid}", params={"fields": "name,driver_info"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) - {"links", "ports", "states", "portgroups", "volume"} == {"uuid", "name", "driver_info"}
    assert body["name"] == "picked"
    listed = (await api.c.get("/v1/nodes", params={"fields": "name,provision_state"})).json()["nodes"]
    assert listed[0]["name"] == "picked" and listed[0]["provision_state"] == "enroll"
    assert "power_state" not in listed[0]


async def test_unknown_field_or_one_newer_than_the_version_is_400_naming_it(api: Api) -> None:
    uuid = (await api.node())["uuid"]
    r = await api.c.get(f"/v1/nodes/{uuid}", params={"fields": "name,colour"})
    assert r.status_code == 400
    assert "colour" in fault(r) and "name" not in fault(r)
    r = await api.c.get("/v1/nodes", params={"fields": "traits"}, headers=at("1.30"))
    assert r.status_code == 400
    assert "traits" in fault(r)


async def test_detail_and_fields_together_are_refused(api: Api) -> None:
    r = await api.c.get("/v1/nodes/detail", params={"fields": "name"})
    assert r.status_code == 400
    assert "fields" in fault(r)
