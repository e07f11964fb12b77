"""Issue #11, reproduced through the API first: each test here failed on the code before its fix.

1: JSON-PATCH errors never carry stored values. 3: a failed node action leaves the node unlocked.
4: deep or huge JSON is refused before anything is saved. 9: masking through lists and by key rule.
10: the public lookup does not tell who a MAC belongs to. 12: numbers too long for their field.
15: request body and header limits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api, api_with, fault

SECRET = "hunter2-do-not-show"
INFO = {"ipmi_address": "10.0.0.9", "ipmi_username": "admin", "ipmi_password": SECRET}


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


async def patch(api: Api, uuid: str, *ops: dict[str, Any]) -> Any:
    return await api.c.patch(f"/v1/nodes/{uuid}", json=list(ops))


# --- 1: JSON-PATCH errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        {"op": "test", "path": "/driver_info/ipmi_password", "value": "a-guess"},
        {"op": "test", "path": "/driver_info", "value": {}},
        {"op": "remove", "path": "/driver_info/../x"},
        {"op": "replace", "path": "/driver_info/nope/deeper", "value": 1},
        {"op": "add", "path": "/driver_info/ipmi_password/x", "value": 1},
        {"op": "move", "from": "/driver_info/ipmi_password", "path": "/extra/x"},
        {"op": "copy", "from": "/driver_info/ipmi_password", "path": "/extra/x"},
    ],
)
async def test_patch_errors_name_the_path_never_the_stored_value(api: Api, op: dict[str, Any]) -> None:
    node = await api.node(driver_info=INFO)
    r = await patch(api, node["uuid"], op)
    assert r.status_code == 400, r.text
    assert SECRET not in r.text
    assert op["path"] in fault(r)
    # Nothing was changed, and the node is not left locked.
    assert (await patch(api, node["uuid"], {"op": "add", "path": "/extra/ok", "value": 1})).status_code == 200


async def test_patch_test_op_compares_with_what_the_client_can_read(api: Api) -> None:
    """A `test` on a secret is not an oracle: it sees the masked value, as GET does."""
    node = await api.node(driver_info=INFO)
    right = {"op": "test", "path": "/driver_info/ipmi_password", "value": SECRET}
    r = await patch(api, node["uuid"], right)
    assert r.status_code == 400 and SECRET not in fault(r)
    shown = {"op": "test", "path": "/driver_info/ipmi_password", "value": "******"}
    assert (await patch(api, node["uuid"], shown)).status_code == 200
    other = {"op": "test", "path": "/driver_info/ipmi_username", "value": "admin"}
    assert (await patch(api, node["uuid"], other)).status_code == 200


async def test_port_patch_errors_do_not_echo_values(api: Api) -> None:
    node = await api.node()
    port = await api.port(node["uuid"], "52:54:00:12:34:56", extra={"note": SECRET})
    r = await api.c.patch(f"/v1/ports/{port['uuid']}", json=[{"op": "test", "path": "/extra", "value": {}}])
    assert r.status_code == 400 and SECRET not in r.text and "/extra" in fault(r)


# --- 3: a failed action leaves the node unlocked --------------------------------------------------


async def test_removing_the_driver_is_a_400_and_leaves_the_node_unlocked(api: Api) -> None:
    node = await api.node(name="keeps-driver")
    r = await patch(api, node["uuid"], {"op": "remove", "path": "/driver"})
    assert r.status_code == 400, r.text
    assert "driver" in fault(r)
    r = await patch(api, node["uuid"], {"op": "add", "path": "/extra/after", "value": 1})
    assert r.status_code == 200, r.text
    assert (await api.get(node["uuid"]))["reservation"] is None


# --- 4: deep and huge JSON ------------------------------------------------------------------------


async def test_deep_json_is_refused_naming_the_field_and_nothing_is_saved(api: Api) -> None:
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware", "name": "deep", "extra": deep(500)})
    assert r.status_code == 400, r.text
    assert "extra" in fault(r)
    assert (await api.c.get("/v1/nodes/deep")).status_code == 404
    for path in ("/v1/nodes/detail", "/v1/nodes?fields=extra"):
        assert (await api.c.get(path)).status_code == 200


async def test_deep_json_in_a_patch_is_refused_naming_the_path(api: Api) -> None:
    node = await api.node()
    r = await patch(api, node["uuid"], {"op": "add", "path": "/extra/x", "value": deep(300)})
    assert r.status_code == 400, r.text
    assert "/extra/x" in fault(r)
    assert (await api.c.get("/v1/nodes/detail")).status_code == 200
    assert (await api.get(node["uuid"]))["extra"] == {}


async def test_a_patch_cannot_build_deep_or_huge_json_one_op_at_a_time(api: Api) -> None:
    node = await api.node()
    path = "/extra/x" + "/a" * 25
    ops = [
        {"op": "add", "path": "/extra/x", "value": deep(25)},
        {"op": "add", "path": path, "value": deep(25)},
    ]
    r = await patch(api, node["uuid"], *ops)
    assert r.status_code == 400, r.text
    assert "extra" in fault(r) and "levels" in fault(r)
    ops = [{"op": "add", "path": f"/extra/k{i}", "value": "v" * 1000} for i in range(100)]
    r = await patch(api, node["uuid"], *ops)
    assert r.status_code == 400, r.text
    assert "extra" in fault(r) and "bytes" in fault(r)
    assert (await api.get(node["uuid"]))["extra"] == {}
    port = await api.port(node["uuid"], "52:54:00:12:34:57")
    r = await api.c.patch(f"/v1/ports/{port['uuid']}", json=ops)
    assert r.status_code == 400 and "extra" in fault(r)


async def test_json_deep_enough_for_real_documents_is_accepted(api: Api) -> None:
    node = await api.node(extra=deep(20))
    assert (await api.c.get("/v1/nodes/detail")).status_code == 200
    assert (await api.get(node["uuid"]))["extra"] == deep(20)


async def test_a_json_field_over_its_size_limit_is_refused(api: Api) -> None:
    big = {"blob": "x" * (300 * 1024)}
    r = await api.c.post("/v1/nodes", json={"driver": "fake-hardware", "properties": big})
    assert r.status_code == 400, r.text
    assert "properties" in fault(r)


# --- 9: masking -----------------------------------------------------------------------------------


async def test_masking_goes_through_lists_and_covers_credentials_keys(api: Api) -> None:
    info = {
        "bmcs": [{"address": "10.0.0.1", "password": SECRET}, {"address": "10.0.0.2", "token": SECRET}],
        "ipmi_credentials": {"user": "admin", "pass": SECRET},
        "snmp_auth_key": SECRET,
        "api_secret": SECRET,
        "ipmi_kg": SECRET,
        "ipmi_address": "10.0.0.9",
    }
    node = await api.node(driver_info=info)
    for body in (
        json.dumps(node),
        (await api.c.get(f"/v1/nodes/{node['uuid']}")).text,
        (await api.c.get("/v1/nodes/detail")).text,
        (await api.c.get("/v1/nodes", params={"fields": "driver_info"})).text,
    ):
        assert SECRET not in body
    shown = (await api.get(node["uuid"]))["driver_info"]
    assert shown["bmcs"] == [
        {"address": "10.0.0.1", "password": "******"},
        {"address": "10.0.0.2", "token": "******"},
    ]
    assert shown["ipmi_credentials"] == "******"
    assert shown["ipmi_address"] == "10.0.0.9"


# --- 10: the public lookup ------------------------------------------------------------------------


@pytest.fixture
async def agent_api(tmp_path: Path) -> AsyncIterator[Api]:
    async for api in api_with(tmp_path, agent={"lldp_wait": 0}):
        yield api


async def test_lookup_answers_the_same_for_enrolled_and_unknown_macs(agent_api: Api) -> None:
    api = agent_api
    node = await api.node(name="secret-name", boot_interface="pxe", deploy_interface="direct")
    await api.port(node["uuid"], "52:54:00:00:10:01")
    enrolled = await api.c.get("/v1/lookup", params={"addresses": "52:54:00:00:10:01"})
    unknown = await api.c.get("/v1/lookup", params={"addresses": "52:54:00:00:10:99"})
    by_name = await api.c.get(
        "/v1/lookup", params={"addresses": "52:54:00:00:10:99", "node_uuid": "secret-name"}
    )
    missing = await api.c.get("/v1/lookup", params={"addresses": "52:54:00:00:10:99", "node_uuid": "nobody"})
    for r in (enrolled, unknown, by_name, missing):
        assert r.status_code == 404
        assert node["uuid"] not in r.text and "secret-name" not in r.text and "enroll" not in r.text
        assert fault(r) == fault(unknown)
    # The operator still learns why, on the node's timeline.
    history = (await api.c.get(f"/v1/nodes/{node['uuid']}/history")).json()["history"]
    assert any("lookup" in e["event"] and "enroll" in e["event"] for e in history), history


# --- 12: numbers ----------------------------------------------------------------------------------


async def test_history_limit_too_long_is_a_400(api: Api) -> None:
    node = await api.node()
    r = await api.c.get(f"/v1/nodes/{node['uuid']}/history", params={"limit": "9" * 20})
    assert r.status_code == 400, r.text
    assert "limit" in fault(r)
    r = await api.c.get(f"/v1/nodes/{node['uuid']}/history", params={"limit": "x"})
    assert r.status_code == 400 and "limit" in fault(r)


async def test_list_limit_of_thousands_of_digits_is_a_400(api: Api) -> None:
    r = await api.c.get("/v1/nodes", params={"limit": "9" * 5000})
    assert r.status_code == 400 and "limit" in fault(r)


async def test_microversion_with_thousands_of_digits_is_a_406_naming_the_header(api: Api) -> None:
    for header, value in (
        ("X-OpenStack-Ironic-API-Version", "1." + "9" * 5000),
        ("OpenStack-API-Version", "baremetal 1." + "9" * 5000),
    ):
        request = api.c.build_request("GET", "/v1/nodes", headers={header: value})
        if header == "OpenStack-API-Version":
            del request.headers["X-OpenStack-Ironic-API-Version"]
        r = await api.c.send(request)
        assert r.status_code == 406, r.text
        assert "OpenStack-API-Version" in fault(r)
        assert len(r.text) < 1000


# --- 15: request limits ---------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_a_413(api: Api) -> None:
    big = {"driver": "fake-hardware", "extra": {"x": "y" * (2 << 20)}}
    r = await api.c.post("/v1/nodes", json=big)
    assert r.status_code == 413, r.text
    assert "1048576" in fault(r)
    assert (await api.c.get("/v1/nodes")).json()["nodes"] == []


async def test_a_chunked_body_over_the_limit_is_a_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"driver": "fake-hardware", "extra": {"x": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    r = await api.c.post("/v1/nodes", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


async def test_the_provision_verb_takes_a_config_drive_larger_than_the_default_limit(api: Api) -> None:
    node = await api.available()
    # A base64 gzipped ISO of 2 MiB: over the 1 MiB default, within the provision route's limit.
    r = await api.verb(node["uuid"], "active", configdrive="H4sI" + "A" * (2 << 20))
    assert r.status_code != 413, r.text


async def test_too_many_headers_is_a_431(api: Api) -> None:
    headers = [(f"x-h{i}", "1") for i in range(10_000)]
    r = await api.c.get("/v1/nodes", headers=headers)
    assert r.status_code == 431, r.text
    assert "header" in fault(r)


async def test_headers_too_large_is_a_431(api: Api) -> None:
    r = await api.c.get("/v1/nodes", headers={"x-big": "a" * (64 * 1024)})
    assert r.status_code == 431, r.text
