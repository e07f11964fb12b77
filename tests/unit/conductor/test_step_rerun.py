"""Steps declare whether they may run again; a node resumed in the middle of one is re-run or failed.

A conductor is stopped with its work cut short in the middle of a step (the node stays locked by it,
as after a SIGKILL), and a conductor of the same name is started on the same database: its recovery
resumes the node at the step marked "started". A step that may run again is run again with a warning
on the timeline; one that may not (fake-hardware's flash_once) fails the node with the reason and is
never started a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from support.service import LATEST, TEST_HARDWARE_TYPES

from bootforge.api.app import create_app
from bootforge.cli.serve import build
from bootforge.conductor import states, work
from bootforge.config import Settings
from bootforge.db.models import Node, NodeEvent
from bootforge.drivers import agent, base, fake

HOST = "rerun-conductor"


def settings(tmp_path: Path, **delays: float) -> Settings:
    return Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "host": HOST,
            "power_sync_interval": 0,
            "timeout_check_interval": 0,
            "conductor_heartbeat_interval": 0,
            "enabled_hardware_types": TEST_HARDWARE_TYPES,
            "fake_delays": delays,
        }
    )


@asynccontextmanager
async def conductor(s: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A conductor and its API; on exit it stops with grace 0: work under way is cut short and keeps
    its node locked, as a killed process leaves it."""
    db, cond, services = await build(s)
    transport = httpx.ASGITransport(app=create_app(services))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
            yield cond, c
    finally:
        await cond.stop(grace=0)
        await db.close()


async def node_row(cond: Any, name: str) -> Node:
    async with cond.db.read() as s:
        node: Node | None = await s.scalar(select(Node).where(Node.name == name))
    assert node is not None
    return node


async def timeline(cond: Any, node_id: int) -> list[str]:
    async with cond.db.read() as s:
        rows = await s.scalars(
            select(NodeEvent.event).where(NodeEvent.node_id == node_id).order_by(NodeEvent.id)
        )
        return list(rows.all())


async def until(cond: Any, name: str, check: Any, what: str, timeout: float = 20.0) -> Node:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        node = await node_row(cond, name)
        if check(node):
            return node
        assert asyncio.get_running_loop().time() < deadline, f"{name} never {what}: {node.provision_state}"
        await asyncio.sleep(0.05)


async def available_node(c: httpx.AsyncClient, cond: Any, name: str) -> None:
    r = await c.post("/v1/nodes", json={"driver": "fake-hardware", "name": name})
    assert r.status_code == 201, r.text
    for verb, state in (("manage", states.MANAGEABLE), ("provide", states.AVAILABLE)):
        r = await c.put(f"/v1/nodes/{name}/states/provision", json={"target": verb})
        assert r.status_code == 202, r.text
        await until(cond, name, lambda n, st=state: n.provision_state == st and n.reservation is None, state)


async def deploy_and_cut(tmp_path: Path, name: str, step: str, **delays: float) -> None:
    """Deploy `name` with flash_once after the deploy step; stop the conductor in the middle of `step`."""
    async with conductor(settings(tmp_path, **delays)) as (cond, c):
        await available_node(c, cond, name)
        body = {
            "target": "active",
            "deploy_steps": [{"interface": "deploy", "step": "flash_once", "priority": 90}],
        }
        r = await c.put(f"/v1/nodes/{name}/states/provision", json=body)
        assert r.status_code == 202, r.text
        node = await until(cond, name, lambda n: n.deploy_step.get("step") == step, f"in step {step}")
        recorded = {s["step"]: s for s in node.driver_internal_info["deploy_steps"]}
        assert recorded["deploy"]["may_rerun"] is True
        assert recorded["flash_once"]["may_rerun"] is False
        assert recorded[step]["started"]["conductor"] == HOST
        # The node as a killed conductor leaves it: in its step, locked, the step marked started.
        assert node.reservation == HOST and node.provision_state == states.DEPLOYING


async def test_a_step_that_may_not_run_twice_fails_the_node_instead(tmp_path: Path) -> None:
    await deploy_and_cut(tmp_path, "once", "flash_once", management=30)
    async with conductor(settings(tmp_path)) as (cond, _c):
        await cond.wait_idle()
        node = await node_row(cond, "once")
        events = await timeline(cond, node.id)
    assert node.provision_state == states.DEPLOYFAIL, node.provision_state
    assert node.reservation is None
    assert node.last_error == (
        "deploy failed: deploy step deploy.flash_once was interrupted on conductor rerun-conductor and may "
        "not run twice; check the machine before starting the operation again"
    )
    assert events.count("deploy step deploy.flash_once started") == 1
    # The steps before it ran once; the restart resumed at the interrupted step, not from the start.
    assert events.count("deploy step deploy.deploy started") == 1
    assert f"conductor {HOST} restarted: resuming deploying" in events


async def test_a_step_that_may_run_again_is_run_again_with_a_warning(tmp_path: Path) -> None:
    await deploy_and_cut(tmp_path, "again", "deploy", deploy=30)
    async with conductor(settings(tmp_path)) as (cond, _c):
        await cond.wait_idle()
        node = await node_row(cond, "again")
        events = await timeline(cond, node.id)
    assert node.provision_state == states.ACTIVE, (node.provision_state, node.last_error)
    assert events.count("deploy step deploy.deploy started") == 2
    assert events.count("deploy step deploy.flash_once started") == 1
    warning = [e for e in events if "was interrupted" in e]
    assert len(warning) == 1
    assert warning[0].startswith("deploy step deploy.deploy was interrupted on conductor rerun-conductor")
    assert warning[0].endswith("it may run again: running it again")


async def test_the_next_deploy_after_the_refusal_starts_over(tmp_path: Path) -> None:
    """The refusal leaves nothing behind that would refuse the operator's next deploy."""
    await deploy_and_cut(tmp_path, "retry", "flash_once", management=30)
    async with conductor(settings(tmp_path)) as (cond, c):
        await cond.wait_idle()
        r = await c.put("/v1/nodes/retry/states/provision", json={"target": "active"})
        assert r.status_code == 202, r.text
        await cond.wait_idle()
        node = await node_row(cond, "retry")
    assert node.provision_state == states.ACTIVE, (node.provision_state, node.last_error)


def test_every_step_declares_whether_it_may_run_again() -> None:
    for iface in (agent.AgentDeploy, fake.FakeDeploy):
        for kind in ("deploy", "clean"):
            for info in iface._steps.values():
                assert isinstance(info.may_rerun, bool), (iface, kind, info)
    declared = {(s.kind, s.name): s.may_rerun for s in agent.AgentDeploy._steps.values()}
    assert declared == {
        ("deploy", "deploy"): True,
        ("deploy", "boot_instance"): True,
        ("clean", "erase_devices_metadata"): True,
        ("clean", "erase_devices"): True,
    }
    with pytest.raises(TypeError):
        base.deploy_step(priority=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="may_rerun must be True or False"):
        base.clean_step(priority=1, may_rerun="yes")  # type: ignore[arg-type]


def test_a_record_without_the_declaration_asks_the_interface() -> None:
    """Step lists persisted before steps declared may_rerun (an upgrade mid-deploy)."""

    class Task:
        class driver:
            interfaces = {"deploy": fake.FakeDeploy(fake.FakeDelays())}

    task: Any = Task()
    assert work.may_rerun(task, "deploy", {"interface": "deploy", "step": "deploy"}) is True
    assert work.may_rerun(task, "deploy", {"interface": "deploy", "step": "flash_once"}) is False
    assert work.may_rerun(task, "deploy", {"interface": "deploy", "step": "gone"}) is False
    assert (
        work.may_rerun(task, "deploy", {"interface": "deploy", "step": "flash_once", "may_rerun": True})
        is True
    )
