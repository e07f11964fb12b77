"""/v1/allocations: matching by resource class, traits and candidates; errors; release on undeploy."""

from __future__ import annotations

from typing import Any

from apihelp import Api, fault


async def allocate(api: Api, **body: Any) -> dict[str, Any]:
    r = await api.c.post("/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    alloc: dict[str, Any] = r.json()
    return alloc


async def with_traits(api: Api, name: str, rc: str, traits: list[str]) -> str:
    uuid = str((await api.available(name=name, resource_class=rc))["uuid"])
    if traits:
        assert (await api.c.put(f"/v1/nodes/{uuid}/traits", json={"traits": traits})).status_code == 204
    return uuid


async def test_allocation_matches_class_and_traits(api: Api) -> None:
    await with_traits(api, "plain", "gpu-box", [])
    wanted = await with_traits(api, "fancy", "gpu-box", ["CUSTOM_GPU", "CUSTOM_NVME"])
    await with_traits(api, "wrong-class", "tiny", ["CUSTOM_GPU", "CUSTOM_NVME"])
    alloc = await allocate(
        api,
        name="job-1",
        resource_class="gpu-box",
        traits=["CUSTOM_GPU", "CUSTOM_NVME"],
        extra={"team": "ml"},
    )
    assert alloc["state"] == "active" and alloc["last_error"] is None
    assert alloc["node_uuid"] == wanted
    assert alloc["name"] == "job-1" and alloc["extra"] == {"team": "ml"}
    assert alloc["traits"] == ["CUSTOM_GPU", "CUSTOM_NVME"]
    node = await api.get(wanted)
    assert node["instance_uuid"] == alloc["uuid"]
    assert node["allocation_uuid"] == alloc["uuid"]
    assert (await api.c.get("/v1/allocations/job-1")).json()["uuid"] == alloc["uuid"]
    assert (await api.c.get(f"/v1/nodes/{wanted}/allocation")).json()["name"] == "job-1"
    listed = (await api.c.get("/v1/allocations", params={"state": "active"})).json()["allocations"]
    assert [a["uuid"] for a in listed] == [alloc["uuid"]]
    # The allocated node is taken: the next identical request finds nothing.
    second = await allocate(api, resource_class="gpu-box", traits=["CUSTOM_GPU"])
    assert second["state"] == "error"


async def test_candidate_nodes_limit_the_choice(api: Api) -> None:
    await with_traits(api, "a", "std", [])
    b = await with_traits(api, "b", "std", [])
    await with_traits(api, "c", "std", [])
    alloc = await allocate(api, resource_class="std", candidate_nodes=["b"])
    assert alloc["node_uuid"] == b and alloc["candidate_nodes"] == [b]
    r = await api.c.post("/v1/allocations", json={"resource_class": "std", "candidate_nodes": ["ghost"]})
    assert r.status_code == 400 and "ghost" in fault(r)


async def test_no_match_is_an_error_state_with_a_clear_reason(api: Api) -> None:
    await with_traits(api, "only", "std", ["CUSTOM_A"])
    alloc = await allocate(api, resource_class="std", traits=["CUSTOM_B"])
    assert alloc["state"] == "error" and alloc["node_uuid"] is None
    assert "std" in alloc["last_error"] and "CUSTOM_B" in alloc["last_error"]
    alloc = await allocate(api, resource_class="nonexistent")
    assert alloc["state"] == "error" and "nonexistent" in alloc["last_error"]


async def test_nodes_not_available_are_never_allocated(api: Api) -> None:
    await api.node(name="enrolled", resource_class="std")
    alloc = await allocate(api, resource_class="std")
    assert alloc["state"] == "error"


async def test_allocation_validation(api: Api) -> None:
    r = await api.c.post("/v1/allocations", json={"name": "x"})
    assert r.status_code == 400 and "resource_class" in fault(r)
    r = await api.c.post("/v1/allocations", json={"resource_class": "x", "colour": "red"})
    assert r.status_code == 400 and "colour" in fault(r)
    r = await api.c.post("/v1/allocations", json={"node": "some-node"})
    assert r.status_code == 400 and "node" in fault(r)
    assert (await api.c.get("/v1/allocations")).json()["allocations"] == []
    await allocate(api, resource_class="x", name="dup")
    r = await api.c.post("/v1/allocations", json={"resource_class": "x", "name": "dup"})
    assert r.status_code == 409 and "dup" in fault(r)


async def test_patch_allocation_name_and_extra(api: Api) -> None:
    alloc = await allocate(api, resource_class="x", name="before")
    r = await api.c.patch(
        f"/v1/allocations/{alloc['uuid']}",
        json=[
            {"op": "replace", "path": "/name", "value": "after"},
            {"op": "add", "path": "/extra/k", "value": "v"},
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "after" and r.json()["extra"] == {"k": "v"}
    r = await api.c.patch(
        f"/v1/allocations/{alloc['uuid']}", json=[{"op": "replace", "path": "/resource_class", "value": "y"}]
    )
    assert r.status_code == 400 and "resource_class" in fault(r)


async def test_undeploy_removes_the_allocation(api: Api) -> None:
    uuid = await with_traits(api, "worker", "std", [])
    alloc = await allocate(api, resource_class="std")
    assert alloc["node_uuid"] == uuid
    await api.drive(uuid, "active")
    r = await api.c.delete(f"/v1/allocations/{alloc['uuid']}")
    assert r.status_code == 409 and "active" in fault(r)
    node = await api.drive(uuid, "deleted")
    assert node["provision_state"] == "available"
    assert node["instance_uuid"] is None and node["allocation_uuid"] is None
    assert (await api.c.get(f"/v1/allocations/{alloc['uuid']}")).status_code == 404


async def test_deleting_an_allocation_frees_the_node(api: Api) -> None:
    uuid = await with_traits(api, "idle", "std", [])
    alloc = await allocate(api, resource_class="std")
    assert (await api.c.delete(f"/v1/allocations/{alloc['uuid']}")).status_code == 204
    node = await api.get(uuid)
    assert node["instance_uuid"] is None and node["allocation_uuid"] is None
    assert (await allocate(api, resource_class="std"))["node_uuid"] == uuid
