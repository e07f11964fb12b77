"""/metrics: parsed by prometheus_client's own parser, and its series move as fake nodes are provisioned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.service import LATEST, InProcess, in_process

from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.observe.metrics import Metrics

FAKE = {"enabled_hardware_types": ["fake-hardware"]}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels), and every family's help text."""
    samples: Samples = {}
    helps = {}
    for family in text_string_to_metric_families(text):
        helps[family.name] = family.documentation
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, helps


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


async def scrape(c: httpx.AsyncClient) -> Samples:
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)[0]


async def wait_state(c: httpx.AsyncClient, uuid: str, state: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            node: dict[str, Any] = (await c.get(f"/v1/nodes/{uuid}")).json()
            if node["provision_state"] == state and node["reservation"] is None:
                return node
            await asyncio.sleep(0.02)


@pytest.fixture
async def bf_fake(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for x in in_process(tmp_path, **FAKE, metrics={"loop_lag_interval": 0.05}):
        yield x


async def test_metrics_parse_and_move_through_a_deploy(bf_fake: InProcess) -> None:
    c = bf_fake.client
    before = await scrape(c)
    assert value(before, "bootforge_nodes_by_provision_state", state="active") == 0
    r = await c.post("/v1/nodes", json={"driver": "fake-hardware", "name": "m1"})
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    for verb, state in (("manage", "manageable"), ("provide", "available"), ("active", "active")):
        r = await c.put(f"/v1/nodes/{uuid}/states/provision", json={"target": verb})
        assert r.status_code == 202, r.text
        await wait_state(c, uuid, state)
    # An agent call: a lookup nobody expects is refused (404), and counted as such.
    assert (await c.get("/v1/lookup", params={"addresses": "52:54:00:aa:bb:cc"})).status_code == 404
    after = await scrape(c)

    for old, new in (
        ("enroll", "verifying"),
        ("verifying", "manageable"),
        ("manageable", "cleaning"),
        ("cleaning", "available"),
        ("available", "deploying"),
        ("deploying", "active"),
    ):
        labels = {"from_state": old, "to_state": new}
        assert value(after, "bootforge_provision_transitions_total", **labels) == (
            value(before, "bootforge_provision_transitions_total", **labels) + 1
        ), (old, new)
    assert value(after, "bootforge_nodes_by_provision_state", state="active") == 1
    assert value(after, "bootforge_nodes_by_provision_state", state="enroll") == 0
    assert value(after, "bootforge_nodes_by_power_state", state="power on") == 1
    assert value(after, "bootforge_deploy_duration_seconds_count", outcome="active") == 1
    assert total(after, "bootforge_step_duration_seconds_count", kind="deploy", outcome="done") == 1
    assert total(after, "bootforge_step_duration_seconds_count", kind="clean", outcome="done") >= 1
    bmc = {"hardware_type": "fake-hardware", "call": "get_power_state"}
    assert value(after, "bootforge_bmc_call_duration_seconds_count", **bmc) >= 1
    assert value(after, "bootforge_agent_requests_total", call="lookup", status="4xx") == 1
    assert value(after, "bootforge_event_loop_lag_seconds_count") > 0


async def test_failures_and_maintenance_are_counted(bf_fake: InProcess) -> None:
    c = bf_fake.client
    uuid = (await c.post("/v1/nodes", json={"driver": "fake-hardware"})).json()["uuid"]
    r = await c.put(f"/v1/nodes/{uuid}/maintenance", json={"reason": "cable swap"})
    assert r.status_code == 202, r.text
    assert (await c.delete(f"/v1/nodes/{uuid}/maintenance")).status_code == 202
    after = await scrape(c)
    assert value(after, "bootforge_maintenance_changes_total", change="set") == 1
    assert value(after, "bootforge_maintenance_changes_total", change="unset") == 1
    assert value(after, "bootforge_nodes_in_maintenance") == 0


async def test_every_family_has_help_text(bf_fake: InProcess) -> None:
    r = await bf_fake.client.get("/metrics")
    _, helps = parse(r.text)
    ours = {name: text for name, text in helps.items() if name.startswith("bootforge_")}
    assert len(ours) >= 15
    assert all(text.strip() for text in ours.values()), [n for n, t in ours.items() if not t.strip()]


def test_netboot_counters_are_read_at_scrape_time() -> None:
    """The collector reads the servers' own counters when asked: nothing per packet, always current."""
    from bootforge.servers.http_boot import HttpBootCounters, HttpBootServer

    server = HttpBootServer.__new__(HttpBootServer)
    server.counters = HttpBootCounters()
    metrics = Metrics()
    metrics.watch_netboot([server])
    server.counters.requests = 7
    server.counters.bytes_sent = 4096
    server.counters.not_found = 2
    from prometheus_client import generate_latest

    samples, _ = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "bootforge_http_boot_requests_total", kind="all") == 7
    assert value(samples, "bootforge_http_boot_sent_bytes_total") == 4096
    assert value(samples, "bootforge_http_boot_drops_total", reason="not_found") == 2
    server.counters.requests = 9
    samples, _ = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "bootforge_http_boot_requests_total", kind="all") == 9


@pytest.mark.parametrize("public", [False, True])
async def test_metrics_auth(tmp_path: Path, public: bool) -> None:
    """Behind the API's basic auth by default (Prometheus sends basic_auth); public only when asked."""
    htpasswd = tmp_path / "htpasswd"
    digest = bcrypt.hashpw(b"scrape secret", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"prometheus:{digest}\n")
    async for bf in in_process(tmp_path, **FAKE, metrics={"public": public}):
        app = create_app(bf.services, Htpasswd(htpasswd))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
            anonymous = await c.get("/metrics")
            assert anonymous.status_code == (200 if public else 401)
            assert (await c.get("/metrics", auth=("prometheus", "scrape secret"))).status_code == 200
            # Public metrics open nothing else.
            assert (await c.get("/v1/nodes")).status_code == 401


async def test_a_failed_deploy_is_counted_and_published(
    bf_fake: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootforge.drivers.fake import FakeBoot
    from bootforge.errors import DriverError

    async def refuse(self: Any, task: Any) -> None:
        raise DriverError("BMC 192.0.2.9: virtual media insert refused")

    monkeypatch.setattr(FakeBoot, "prepare_ramdisk", refuse)
    c = bf_fake.client
    uuid = (await c.post("/v1/nodes", json={"driver": "fake-hardware", "name": "f1"})).json()["uuid"]
    for verb, state in (("manage", "manageable"), ("provide", "available")):
        assert (await c.put(f"/v1/nodes/{uuid}/states/provision", json={"target": verb})).status_code == 202
        await wait_state(c, uuid, state)
    hub = bf_fake.conductor.observer.hub
    with hub.subscribe(uuid, ["provision", "failure"]) as sub:
        assert (
            await c.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "active"})
        ).status_code == 202
        node = await wait_state(c, uuid, "deploy failed")
        events = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert "virtual media insert refused" in node["last_error"]
    assert [(e.kind, e.data.get("provision_state")) for e in events] == [
        ("provision", "deploying"),
        ("provision", "deploy failed"),
        ("failure", "deploy failed"),
    ]
    assert events[2].data["last_error"] == node["last_error"]
    after = await scrape(c)
    assert value(after, "bootforge_node_failures_total", state="deploy failed") == 1
    assert value(after, "bootforge_deploy_duration_seconds_count", outcome="failed") == 1
    assert total(after, "bootforge_step_duration_seconds_count", kind="deploy", outcome="failed") == 1
