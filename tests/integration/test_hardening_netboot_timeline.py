"""Issue #11 finding 11: anyone who can reach HTTP boot could flood a node's timeline (600 GETs with
?mac=<the node's MAC> made 600 warning events) and, with the trim keeping the newest 500 events,
push its real history out. Netboot events are rate-limited per node and source, and the trim keeps
state changes and the rest of the history apart from netboot noise.

The HTTP boot server runs on 127.0.0.1 and feeds the product's own composition (cli.netboot.Netboot).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import httpx
from sqlalchemy import insert, select
from support.service import InProcess

from bootforge.cli.netboot import Netboot
from bootforge.conductor.netboot import EventSink, NetbootView
from bootforge.conductor.task import event_row
from bootforge.db.models import NODE_EVENTS, Node, NodeEvent
from bootforge.servers.http_boot import HttpBootServer

MAC = "52:54:00:aa:bb:01"


async def enrol(bf: InProcess) -> str:
    node = (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "n1"})).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": MAC})
    assert r.status_code == 201, r.text
    return str(node["uuid"])


async def history(bf: InProcess, uuid: str) -> list[dict[str, str]]:
    async with bf.conductor.db.read() as s:
        node_id = await s.scalar(select(Node.id).where(Node.uuid == uuid))
        rows = await s.execute(
            select(NodeEvent.event_type, NodeEvent.event, NodeEvent.severity, NodeEvent.network_boot)
            .where(NodeEvent.node_id == node_id)
            .order_by(NodeEvent.id)
        )
    return [{"type": t, "event": e, "severity": s, "boot": str(b)} for t, e, s, b in rows]


async def http_history(bf: InProcess, uuid: str) -> list[dict[str, str]]:
    return [e for e in await history(bf, uuid) if e["type"] == "http"]


async def flood(netboot: Netboot, root: Path, count: int) -> None:
    async with HttpBootServer(root, port=0, on_event=netboot.on_http) as srv:
        host, port = srv.local_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            for _ in range(count):
                assert (await client.get(f"/nothing-here?mac={MAC}")).status_code == 404


async def test_a_flood_of_http_fetches_is_rate_limited_per_node(bf: InProcess, tmp_path: Path) -> None:
    uuid = await enrol(bf)
    view = NetbootView(bf.conductor.db)
    await view.refresh()
    sink = EventSink(bf.conductor.db, "test")
    netboot = Netboot(view, sink)
    sink.emit(uuid, "dhcp", f"dhcp.ack {MAC} 10.0.0.5 on eth0")  # another source: its own budget
    await flood(netboot, tmp_path, 600)
    await sink.flush()
    events = await history(bf, uuid)
    http = [e for e in events if e["type"] == "http"]
    assert len(http) <= 20, len(http)
    assert len(http) == sink.burst
    assert sink.suppressed == 600 - sink.burst
    assert [e["type"] for e in events].count("dhcp") == 1


async def test_one_summary_per_window_keeps_the_network_boot_sign(bf: InProcess) -> None:
    uuid = await enrol(bf)
    now = [1000.0]
    sink = EventSink(bf.conductor.db, "test", burst=3, window=10.0, clock=lambda: now[0])
    before = dt.datetime.now(dt.UTC)
    for i in range(10):
        sink.emit(uuid, "http", f"http GET /nothing {i} 404", "warning")
    booted = dt.datetime.now(dt.UTC)
    sink.emit(uuid, "http", "http GET /boot/ipxe 200", network_boot=True)  # suppressed, but a boot
    await sink.flush()
    assert [e["event"] for e in await http_history(bf, uuid)] == [
        f"http GET /nothing {i} 404" for i in range(3)
    ]
    now[0] += 10.0  # the window ends: its summary is written at the next flush, once
    await sink.flush()
    await sink.flush()
    events = await http_history(bf, uuid)
    assert len(events) == 4
    summary = events[-1]
    assert summary["type"] == "http" and summary["severity"] == "warning"
    assert summary["event"].startswith("8 more http events of this node were not recorded")
    assert summary["boot"] == "True"  # the hand-off watch still sees that the machine netbooted
    async with bf.conductor.db.read() as s:
        when = await s.scalar(select(NodeEvent.created_at).where(NodeEvent.event == summary["event"]))
    assert when is not None and when.replace(tzinfo=dt.UTC) >= booted >= before  # the boot's time
    # A new window has its own budget.
    sink.emit(uuid, "http", "http GET /again 404", "warning")
    await sink.flush()
    assert (await http_history(bf, uuid))[-1]["event"] == "http GET /again 404"
    assert sink.suppressed == 8


async def wait_state(bf: InProcess, uuid: str, state: str) -> None:
    for _ in range(500):
        node = (await bf.client.get(f"/v1/nodes/{uuid}")).json()
        if node["provision_state"] == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"node never reached {state}")


async def test_the_trim_never_drops_state_changes_for_netboot_noise(bf: InProcess) -> None:
    uuid = await enrol(bf)
    r = await bf.client.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "manage"})
    assert r.status_code == 202, r.text
    await wait_state(bf, uuid, "manageable")
    await bf.client.put(f"/v1/nodes/{uuid}/maintenance", json={"reason": "rack 4 rewiring"})
    states_before = [e for e in await history(bf, uuid) if e["type"] == "provisioning"]
    assert states_before
    async with bf.conductor.db.write() as s:
        node_id = await s.scalar(select(Node.id).where(Node.uuid == uuid))
        rows = [event_row(node_id, "http", f"http GET /x {i} 404", "warning", "t") for i in range(600)]
        await s.execute(insert(NODE_EVENTS), rows)
        await s.commit()
    assert bf.conductor.settings.node_events_keep == 500
    await bf.conductor.trim_events()
    events = await history(bf, uuid)
    assert [e for e in events if e["type"] == "provisioning"] == states_before
    assert any(e["event"] == "maintenance set: rack 4 rewiring" for e in events)
    http = [e["event"] for e in events if e["type"] == "http"]
    assert http == [f"http GET /x {i} 404" for i in range(100, 600)]  # the newest 500 stay
