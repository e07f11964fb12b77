"""Regression tests for the 5xx answers the API fuzzer (tests/integration/test_api_fuzz.py) found."""

from __future__ import annotations

from apihelp import Api, fault


async def test_deleting_an_allocation_with_a_node_answers_204(api: Api) -> None:
    """Found by the fuzzer: the allocation's node, loaded in the session, was refreshed by the ORM
    UPDATE that frees it, and the secrets-at-rest refresh hook read `context.session` from the None
    context such a refresh passes (AttributeError, 500)."""
    node = await api.available(resource_class="fuzz", driver_info={"ipmi_password": "s3cret"})
    r = await api.c.post("/v1/allocations", json={"resource_class": "fuzz"})
    assert r.status_code == 201, r.text
    allocation = r.json()
    await api.bf.conductor.wait_idle()
    r = await api.c.get(f"/v1/allocations/{allocation['uuid']}")
    assert r.json()["node_uuid"] == node["uuid"], r.text

    r = await api.c.delete(f"/v1/allocations/{allocation['uuid']}")
    assert r.status_code == 204, r.text
    after = await api.get(node["uuid"])
    assert after["allocation_uuid"] is None and after["instance_uuid"] is None
    assert after["reservation"] is None
    # The node's secrets still read back (masked) after the refresh the UPDATE caused.
    assert after["driver_info"]["ipmi_password"] == "******"


async def test_a_port_group_with_a_taken_uuid_is_a_conflict(api: Api) -> None:
    """Found by the fuzzer: a second port group with the same uuid answered 500 (IntegrityError)."""
    node = await api.node()
    uuid = "f06742a5-05a3-5e41-bf2e-64fd5a2ef241"
    first = await api.c.post("/v1/portgroups", json={"node_uuid": node["uuid"], "uuid": uuid})
    assert first.status_code == 201, first.text
    again = await api.c.post("/v1/portgroups", json={"node_uuid": node["uuid"], "uuid": uuid})
    assert again.status_code == 409, again.text
    assert uuid in fault(again)


async def test_an_allocation_with_a_taken_uuid_is_a_conflict(api: Api) -> None:
    """The same gap as port groups had: a second allocation with the same uuid."""
    uuid = "0b9a3c1e-8d2f-4a57-9c1e-3f6a2b7d8e90"
    first = await api.c.post("/v1/allocations", json={"resource_class": "none-such", "uuid": uuid})
    assert first.status_code == 201, first.text
    again = await api.c.post("/v1/allocations", json={"resource_class": "none-such", "uuid": uuid})
    assert again.status_code == 409, again.text
    assert uuid in fault(again)


async def test_listing_ports_with_an_empty_node_filter(api: Api) -> None:
    """Found by the fuzzer: `?node=` (empty) fell through to `node_uuid`, absent: KeyError, 500. An
    empty filter is no filter, as in Ironic; a node that does not exist is still a 404."""
    node = await api.node()
    await api.port(node["uuid"], "52:54:00:aa:00:01")
    for path in ("/v1/ports", "/v1/ports/detail"):
        for query in ("?node=", "?node_uuid=", "?node=&node_uuid="):
            r = await api.c.get(path + query)
            assert r.status_code == 200, (path, query, r.text)
            assert [p["address"] for p in r.json()["ports"]] == ["52:54:00:aa:00:01"]
        r = await api.c.get(path + "?node=no-such-node")
        assert r.status_code == 404, r.text
        r = await api.c.get(path + "?node=&node_uuid=" + node["uuid"])
        assert r.status_code == 200 and len(r.json()["ports"]) == 1, r.text


async def test_an_empty_name_taken_twice_is_a_conflict(api: Api) -> None:
    """Found by the fuzzer: names are unique in the database, but the check skipped "" (falsy), so a
    second port group (or allocation) named "" answered 500 (IntegrityError)."""
    node = await api.node()
    for path, body in (
        ("/v1/portgroups", {"node_uuid": node["uuid"], "name": ""}),
        ("/v1/allocations", {"resource_class": "none-such", "name": ""}),
    ):
        first = await api.c.post(path, json=body)
        assert first.status_code == 201, first.text
        again = await api.c.post(path, json=body)
        assert again.status_code == 409, (path, again.text)
        assert "name" in fault(again)
    # The same through JSON-PATCH: a second group renamed to "".
    r = await api.c.post("/v1/portgroups", json={"node_uuid": node["uuid"]})
    patch = [{"op": "add", "path": "/name", "value": ""}]
    r = await api.c.patch(f"/v1/portgroups/{r.json()['uuid']}", json=patch)
    assert r.status_code == 409, r.text
