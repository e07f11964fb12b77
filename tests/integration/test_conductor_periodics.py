"""The conductor's periodic watch, in-process on SQLite and on a real PostgreSQL.

fake-hardware never waits for an agent and remembers its power state on the node record itself, so it
can neither reach a wait state nor drift. These tests register a test-only hardware type whose steps go
asynchronous (return WAIT, as the ramdisk agent's would) and whose "BMC" keeps the machine's power in
driver_internal_info, where a test can change it behind bootforge's back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from support.service import InProcess, in_process

from bootforge.conductor import states
from bootforge.db.models import Conductor, Node, NodeEvent
from bootforge.drivers import base, fake, hardware
from bootforge.drivers.base import Task

TEST_TYPE = "waiting-hardware"
BMC_KEY = "test_bmc_power"


class AgentDeploy(fake.FakeDeploy):
    """Deploy and clean steps hand the work to an agent that never calls back."""

    @base.deploy_step(priority=100, may_rerun=True)
    async def deploy(self, task: Task) -> base.StepResult:
        return base.WAIT

    @base.clean_step(priority=99, may_rerun=True)
    async def erase_devices_metadata(self, task: Task) -> base.StepResult:
        return base.WAIT


class AgentInspect(fake.FakeInspect):
    async def inspect_hardware(self, task: Task) -> base.StepResult:
        return base.WAIT


class BmcPower(fake.FakePower):
    """A BMC whose answer lives apart from node.power_state; "unreachable" makes it fail."""

    async def get_power_state(self, task: Task) -> str:
        actual = task.node.driver_internal_info.get(BMC_KEY, task.node.power_state or base.POWER_OFF)
        if actual == "unreachable":
            raise ConnectionError("BMC did not answer")
        return str(actual)

    async def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None:
        await super().set_power_state(task, state, timeout)
        info = dict(task.node.driver_internal_info)
        info[BMC_KEY] = base.POWER_OFF if state in (base.POWER_OFF, base.SOFT_POWER_OFF) else base.POWER_ON
        task.node.driver_internal_info = info


def _waiting_hardware() -> hardware.HardwareType:
    hw = hardware.HARDWARE_TYPES["fake-hardware"]()
    interfaces = dict(hw.interfaces)
    interfaces["deploy"] = [("fake", lambda s: AgentDeploy(s.fake_delays))]
    interfaces["inspect"] = [("fake", lambda s: AgentInspect(s.fake_delays))]
    interfaces["power"] = [("fake", lambda s: BmcPower(s.fake_delays))]
    return hardware.HardwareType(TEST_TYPE, "test only: agent steps that wait", interfaces)


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


async def _in_process(
    request: pytest.FixtureRequest,
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **overrides: Any,
) -> AsyncIterator[InProcess]:
    monkeypatch.setitem(hardware.HARDWARE_TYPES, TEST_TYPE, _waiting_hardware)
    overrides.setdefault("enabled_hardware_types", ["fake-hardware", TEST_TYPE])
    if database == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_fresh_url")
    async for x in in_process(tmp_path, **overrides):
        yield x


@pytest.fixture(params=DATABASES)
async def bfw(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcess]:
    """The timeout check runs for real, often; power sync is called by the tests themselves."""
    async for x in _in_process(request, request.param, tmp_path, monkeypatch, timeout_check_interval=0.2):
        yield x


@pytest.fixture(params=DATABASES)
async def bf_quiet(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcess]:
    """No periodic task runs unless the test calls it."""
    async for x in _in_process(request, request.param, tmp_path, monkeypatch):
        yield x


async def node_get(c: httpx.AsyncClient, ident: str) -> dict[str, Any]:
    r = await c.get(f"/v1/nodes/{ident}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def act(bf: InProcess, ident: str, verb: str, expect: str) -> None:
    r = await bf.client.put(f"/v1/nodes/{ident}/states/provision", json={"target": verb})
    assert r.status_code == 202, r.text
    await bf.conductor.wait_idle()
    node = await node_get(bf.client, ident)
    assert node["provision_state"] == expect, node
    assert node["reservation"] is None


async def new_node(bf: InProcess, name: str, **fields: Any) -> str:
    r = await bf.client.post("/v1/nodes", json={"driver": TEST_TYPE, "name": name, **fields})
    assert r.status_code == 201, r.text
    await act(bf, name, "manage", states.MANAGEABLE)
    return name


async def backdate(bf: InProcess, name: str, seconds: float) -> None:
    """Pretend the node entered its current state `seconds` ago."""
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.name == name).values(provision_updated_at=when))
        await s.commit()


async def wait_state(bf: InProcess, name: str, wanted: str, timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        node = await node_get(bf.client, name)
        if node["provision_state"] == wanted or asyncio.get_running_loop().time() > deadline:
            return node
        await asyncio.sleep(0.1)


async def events(bf: InProcess, name: str) -> list[NodeEvent]:
    async with bf.conductor.db.read() as s:
        node_id = await s.scalar(select(Node.id).where(Node.name == name))
        return list((await s.scalars(select(NodeEvent).where(NodeEvent.node_id == node_id))).all())


async def test_wait_states_time_out_into_failed_states_with_reason(bfw: InProcess) -> None:
    # Reach each wait state through the API, as an agent-driven driver would.
    await new_node(bfw, "cleaner")
    await act(bfw, "cleaner", "provide", states.CLEANWAIT)
    await new_node(bfw, "deployer", automated_clean=False)
    await act(bfw, "deployer", "provide", states.AVAILABLE)
    await act(bfw, "deployer", "active", states.DEPLOYWAIT)
    await new_node(bfw, "inspector")
    await act(bfw, "inspector", "inspect", states.INSPECTWAIT)
    await new_node(bfw, "patient", automated_clean=False)
    await act(bfw, "patient", "provide", states.AVAILABLE)
    await act(bfw, "patient", "active", states.DEPLOYWAIT)

    settings = bfw.settings
    await backdate(bfw, "cleaner", settings.clean_callback_timeout + 5)
    await backdate(bfw, "deployer", settings.deploy_callback_timeout + 5)
    await backdate(bfw, "inspector", settings.inspect_wait_timeout + 5)
    await backdate(bfw, "patient", settings.deploy_callback_timeout - 600)

    expected = {
        "cleaner": (states.CLEANWAIT, states.CLEANFAIL),
        "deployer": (states.DEPLOYWAIT, states.DEPLOYFAIL),
        "inspector": (states.INSPECTWAIT, states.INSPECTFAIL),
    }
    for name, (waited_in, failed) in expected.items():
        node = await wait_state(bfw, name, failed)
        assert node["provision_state"] == failed, node
        assert node["target_provision_state"] is None
        assert node["reservation"] is None
        assert "Timeout reached while waiting for callback" in node["last_error"]
        assert f"'{waited_in}'" in node["last_error"]
        errors = [e for e in await events(bfw, name) if e.severity == "error"]
        assert any(f"{waited_in} -> {failed}" in e.event for e in errors), [e.event for e in errors]

    # Ten minutes short of its limit, "patient" keeps waiting however often the check runs.
    await bfw.conductor.check_wait_timeouts()
    patient = await node_get(bfw.client, "patient")
    assert patient["provision_state"] == states.DEPLOYWAIT
    assert patient["last_error"] is None

    # A timed-out node can be retried: the failure is a normal failed state, not a dead end.
    await act(bfw, "deployer", "undeploy", states.AVAILABLE)


async def test_power_changed_behind_our_back_is_noticed_and_recorded(bfw: InProcess) -> None:
    await new_node(bfw, "drifter", automated_clean=False)
    await act(bfw, "drifter", "provide", states.AVAILABLE)
    r = await bfw.client.put("/v1/nodes/drifter/states/power", json={"target": base.POWER_ON})
    assert r.status_code == 202, r.text
    await bfw.conductor.wait_idle()
    assert (await node_get(bfw.client, "drifter"))["power_state"] == base.POWER_ON

    # Nothing changed: a sync records nothing.
    before = len(await events(bfw, "drifter"))
    await bfw.conductor.sync_power_states()
    assert len(await events(bfw, "drifter")) == before

    # Someone pressed the power button.
    async with bfw.conductor.db.write() as s:
        node = await s.scalar(select(Node).where(Node.name == "drifter"))
        assert node is not None
        node.driver_internal_info = {**node.driver_internal_info, BMC_KEY: base.POWER_OFF}
        await s.commit()
    await bfw.conductor.sync_power_states()

    node_now = await node_get(bfw.client, "drifter")
    assert node_now["power_state"] == base.POWER_OFF
    assert node_now["provision_state"] == states.AVAILABLE
    drift = [e for e in await events(bfw, "drifter") if e.event_type == "power"][-1]
    assert drift.event == "power state changed outside bootforge: power on -> power off"
    assert drift.severity == "warning"
    r = await bfw.client.get("/v1/nodes/drifter/history")
    assert drift.uuid in [e["uuid"] for e in r.json()["history"]]


async def test_unreadable_power_state_puts_node_in_maintenance(bfw: InProcess) -> None:
    await new_node(bfw, "silent", automated_clean=False)
    await act(bfw, "silent", "provide", states.AVAILABLE)
    async with bfw.conductor.db.write() as s:
        await s.execute(
            update(Node).where(Node.name == "silent").values(driver_internal_info={BMC_KEY: "unreachable"})
        )
        await s.commit()
    for _ in range(2):
        await bfw.conductor.sync_power_states()
        assert (await node_get(bfw.client, "silent"))["maintenance"] is False
    await bfw.conductor.sync_power_states()
    node = await node_get(bfw.client, "silent")
    assert node["maintenance"] is True
    assert node["fault"] == "power failure"
    assert "BMC did not answer" in node["maintenance_reason"]
    # Maintenance nodes are left alone: no further failures are counted or recorded.
    count = len(await events(bfw, "silent"))
    await bfw.conductor.sync_power_states()
    assert len(await events(bfw, "silent")) == count


async def _peer(bf: InProcess, hostname: str, heartbeat_age: float, group: str = "") -> None:
    now = dt.datetime.now(dt.UTC)
    async with bf.conductor.db.write() as s:
        s.add(
            Conductor(
                hostname=hostname,
                online=True,
                hardware_types=["fake-hardware"],
                conductor_group=group,
                heartbeat_at=now - dt.timedelta(seconds=heartbeat_age),
                created_at=now,
            )
        )
        await s.commit()


async def _held_mid_deploy(bf: InProcess, name: str, holder: str) -> Node:
    """A node `holder` locked and was deploying when it went silent (as a SIGKILL leaves it)."""
    await new_node(bf, name, automated_clean=False)
    await act(bf, name, "provide", states.AVAILABLE)
    async with bf.conductor.db.write() as s:
        await s.execute(
            update(Node)
            .where(Node.name == name)
            .values(
                provision_state=states.DEPLOYING,
                target_provision_state=states.ACTIVE,
                reservation=holder,
                updated_at=dt.datetime.now(dt.UTC),
            )
        )
        await s.commit()
    async with bf.conductor.db.read() as s:
        node = await s.scalar(select(Node).where(Node.name == name))
    assert node is not None
    return node


async def test_orphans_are_taken_over_once_and_live_peers_keep_their_nodes(bf_quiet: InProcess) -> None:
    offline_after = bf_quiet.settings.conductor_offline_after
    await _peer(bf_quiet, "dead-peer", heartbeat_age=offline_after + 60)
    # In another conductor group: on the same ring it would own about half of the orphans (the
    # ring's own tests are tests/unit/conductor/test_ring.py).
    await _peer(bf_quiet, "live-peer", heartbeat_age=0, group="other-site")
    orphan = await _held_mid_deploy(bf_quiet, "orphan", "dead-peer")
    await _held_mid_deploy(bf_quiet, "busy", "live-peer")

    # Someone else touched the orphan after we read it (a restarted dead-peer claiming its own node,
    # or another conductor taking it over): a claim based on what we read must not win.
    async with bf_quiet.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.name == "orphan").values(updated_at=dt.datetime.now(dt.UTC)))
        await s.commit()
    assert await bf_quiet.conductor._claim(orphan, "dead-peer") is False

    await bf_quiet.conductor.take_over_orphans()
    await bf_quiet.conductor.wait_idle()
    node = await node_get(bf_quiet.client, "orphan")
    assert node["provision_state"] == states.DEPLOYWAIT, node  # the test deploy step waits for an agent
    assert node["reservation"] is None
    texts = [e.event for e in await events(bf_quiet, "orphan")]
    resumed = "conductor dead-peer stopped heartbeating; taken over by test-conductor: resuming deploying"
    assert texts.count(resumed) == 1

    busy = await node_get(bf_quiet.client, "busy")
    assert (busy["provision_state"], busy["reservation"]) == (states.DEPLOYING, "live-peer")
    # Once the live peer goes silent too, its node is taken over like any other.
    async with bf_quiet.conductor.db.write() as s:
        await s.execute(
            update(Conductor)
            .where(Conductor.hostname == "live-peer")
            .values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=offline_after + 1))
        )
        await s.commit()
    await bf_quiet.conductor.take_over_orphans()
    await bf_quiet.conductor.wait_idle()
    assert (await node_get(bf_quiet.client, "busy"))["reservation"] is None


@pytest.mark.parametrize("database", DATABASES)
async def test_restart_without_a_nodes_hardware_type_fails_its_work_with_reason(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    host = "test-conductor"
    async for bf in _in_process(request, database, tmp_path, monkeypatch):
        await new_node(bf, "stranded", automated_clean=False)
        await act(bf, "stranded", "provide", states.AVAILABLE)
        r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "plain"})
        assert r.status_code == 201, r.text
        await act(bf, "plain", "manage", states.MANAGEABLE)
        await act(bf, "plain", "provide", states.AVAILABLE)
        # Both were mid-deploy, locked by this conductor, when it died.
        async with bf.conductor.db.write() as s:
            await s.execute(
                update(Node).values(
                    provision_state=states.DEPLOYING, target_provision_state=states.ACTIVE, reservation=host
                )
            )
            await s.commit()

    # The operator restarts it with the test hardware type no longer enabled: it must still start.
    fake_only = {"enabled_hardware_types": ["fake-hardware"]}
    async for bf in _in_process(request, database, tmp_path, monkeypatch, **fake_only):
        await bf.conductor.wait_idle()
        async with bf.conductor.db.read() as s:
            stranded = await s.scalar(select(Node).where(Node.name == "stranded"))
            plain = await s.scalar(select(Node).where(Node.name == "plain"))
        assert stranded is not None and plain is not None
        assert (stranded.provision_state, stranded.reservation) == (states.DEPLOYFAIL, None)
        assert stranded.last_error == f"hardware type {TEST_TYPE} is not enabled on conductor {host}"
        assert (plain.provision_state, plain.reservation) == (states.ACTIVE, None)
        errors = [e.event for e in await events(bf, "stranded") if e.severity == "error"]
        assert errors == [f"deploying -> deploy failed (fail): {stranded.last_error}"]
