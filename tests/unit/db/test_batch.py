"""Group commit of enrolment: concurrent creates share transactions, but every error stays with its row."""

import asyncio
import json

from support.service import InProcess


def fault(body: dict[str, str]) -> str:
    return str(json.loads(body["error_message"])["faultstring"])


async def test_concurrent_creates_each_get_their_own_answer(bf: InProcess) -> None:
    names = [f"n{i}" for i in range(40)] + ["n3"]  # one duplicate name in the same burst
    replies = await asyncio.gather(
        *(bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": n}) for n in names)
    )
    codes = [r.status_code for r in replies]
    assert codes.count(201) == 40 and codes.count(409) == 1
    conflict = next(r for r in replies if r.status_code == 409)
    assert fault(conflict.json()) == "A node with name n3 already exists."
    uuids = {r.json()["uuid"] for r in replies if r.status_code == 201}
    listed = (await bf.client.get("/v1/nodes")).json()["nodes"]
    assert {n["uuid"] for n in listed} == uuids
    # every created node has its creation on its timeline, written in the same transaction
    one = next(iter(uuids))
    history = (await bf.client.get(f"/v1/nodes/{one}/history")).json()["history"]
    assert history[0]["event"] == "created in enroll"


async def test_port_batch_rejects_only_the_bad_rows(bf: InProcess) -> None:
    nodes = [
        (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": f"m{i}"})).json()
        for i in range(20)
    ]
    bodies = [{"node_uuid": n["uuid"], "address": f"52:54:00:00:10:{i:02x}"} for i, n in enumerate(nodes)]
    bodies.append({"node_uuid": "m3", "address": "52:54:00:00:10:ff"})  # by name
    bodies.append({"node_uuid": "no-such-node", "address": "52:54:00:00:11:01"})
    bodies.append({"node_uuid": nodes[0]["uuid"], "address": "52:54:00:00:10:00"})  # duplicate MAC
    replies = await asyncio.gather(*(bf.client.post("/v1/ports", json=b) for b in bodies))
    codes = [r.status_code for r in replies]
    assert codes[:21] == [201] * 21
    assert codes[21] == 400 and fault(replies[21].json()) == "Node no-such-node could not be found."
    assert codes[22] == 409 and "52:54:00:00:10:00 already exists" in fault(replies[22].json())
    assert replies[20].json()["node_uuid"] == nodes[3]["uuid"]
    ports = (await bf.client.get("/v1/ports?detail=true")).json()["ports"]
    assert len(ports) == 21
    assert {p["node_uuid"] for p in ports} == {n["uuid"] for n in nodes}
