"""Regression tests for the 5xx answers the API fuzzer (tests/integration/test_api_fuzz.py) found."""

from __future__ import annotations

from apihelp import Api


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
