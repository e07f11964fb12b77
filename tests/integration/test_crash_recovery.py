"""SIGKILL a real `bootforge serve` amid work on fake nodes, start it again, check that nothing is stuck.

Each test reads the SQLite file the killed process left behind, so it knows exactly which node was in
which state (and which step) at the crash, then asserts that after the restart every such node was
resumed ("resuming ..." on its timeline) and settled: a stable state, or a failed one with last_error,
never a transitional state or a stale lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.lifecycle import (
    act,
    client,
    create_nodes,
    history,
    in_state,
    power,
    settled,
    snapshot,
    wait_until,
)
from support.service import Served, served

from bootforge.conductor import states

pytestmark = [
    pytest.mark.slow,
    # support.service.Served.start() leaves its log file object open after Popen (reported to the
    # lead); restarting a server makes that a ResourceWarning, which the suite turns into an error.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <_io.FileIO name='.*/serve-\d+\.log'"),
]

HOST = "crash-test-conductor"


@contextlib.contextmanager
def serving(tmp_path: Path, delays: dict[str, float]) -> Iterator[Served]:
    env = {f"BOOTFORGE_FAKE_DELAYS__{k.upper()}": str(v) for k, v in delays.items()}
    # Power sync would read power states on its own schedule; these tests look at recovery alone.
    env["BOOTFORGE_POWER_SYNC_INTERVAL"] = "0"
    yield from served(tmp_path, env=env, args=["--host", HOST])


def crash_and_restart(srv: Served) -> dict[str, dict[str, Any]]:
    srv.kill()
    at_crash = snapshot(srv.state_dir / "bootforge.sqlite")
    srv.start()
    return at_crash


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def assert_resumed(final: dict[str, Any], at_crash: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """The node was picked up again after the restart and ended settled, or failed with a reason."""
    was = at_crash["provision_state"]
    assert at_crash["reservation"] == HOST, "work in progress must hold the node's lock in the database"
    assert f"conductor {HOST} restarted: resuming {was}" in texts(events)
    state = final["provision_state"]
    if state in states.FAILED_STATES:
        assert final["last_error"], f"failed without a reason: {final}"
    else:
        assert state in states.STABLE_STATES, final


def test_sigkill_mid_deploy_resumes_every_node(tmp_path: Path) -> None:
    delays = {"deploy": 3, "boot": 1, "clean": 0.2}
    with serving(tmp_path, delays) as srv, client(srv.url) as c:
        uuids = create_nodes(c, [f"deploy-{i}" for i in range(10)])
        act(c, uuids, "manage")
        wait_until(c, uuids, in_state(states.MANAGEABLE))
        act(c, uuids, "provide")
        wait_until(c, uuids, in_state(states.AVAILABLE))

        finished, in_step, starting = uuids[:2], uuids[2:6], uuids[6:]
        act(c, finished, "active")
        wait_until(c, finished, in_state(states.ACTIVE))
        act(c, in_step, "active")
        wait_until(c, in_step, lambda n: n["deploy_step"].get("step") == "deploy", what="in the deploy step")
        # These are still preparing the ramdisk (before their first step) when the process dies.
        act(c, starting, "active")

        at_crash = crash_and_restart(srv)
        interrupted = {
            u for u, row in at_crash.items() if row["provision_state"] in states.ACTIVE_WORK_STATES
        }
        assert interrupted == {*in_step, *starting}, (
            f"the kill did not catch the deploys in flight: {at_crash}"
        )
        assert all(at_crash[u]["deploy_step"].get("step") == "deploy" for u in in_step)
        assert all(at_crash[u]["provision_state"] == states.ACTIVE for u in finished)

        final = wait_until(c, uuids, settled, what="settled after the restart")
        for u in uuids:
            events = history(c, u)
            node = final[u]
            assert node["deploy_step"] == {}
            if u not in interrupted:
                assert node["provision_state"] == states.ACTIVE
                assert not any("resuming" in t for t in texts(events))
                continue
            assert at_crash[u]["provision_state"] == states.DEPLOYING
            assert_resumed(node, at_crash[u], events)
            if at_crash[u]["deploy_step"].get("step") == "deploy":
                # Re-entered at the persisted step index: the interrupted step ran again, then finished.
                started = texts(events).count("deploy step deploy.deploy started")
                assert started == 2, texts(events)
                assert texts(events).count("deploy step deploy.deploy done") == 1
            elif "deploy_steps" not in at_crash[u]["driver_internal_info"]:
                # Died before the step list was saved: the deploy started over and ran its step once.
                assert texts(events).count("deploy step deploy.deploy started") == 1, texts(events)
        # Fake hardware never fails, so every interrupted deploy completes.
        assert {n["provision_state"] for n in final.values()} == {states.ACTIVE}
        assert all(n["power_state"] == "power on" for n in final.values())


def test_sigkill_mid_provide_undeploy_and_power_action(tmp_path: Path) -> None:
    delays = {"deploy": 3, "clean": 3, "power": 2}
    with serving(tmp_path, delays) as srv, client(srv.url) as c:
        providing = create_nodes(c, ["provide-0", "provide-1"])
        undeploying = create_nodes(c, ["undeploy-0", "undeploy-1"])
        (powering,) = create_nodes(c, ["power-0"])
        everyone = [*providing, *undeploying, powering]
        act(c, everyone, "manage")
        wait_until(c, everyone, in_state(states.MANAGEABLE))
        deployed = [*undeploying, powering]
        act(c, deployed, "provide")
        wait_until(c, deployed, in_state(states.AVAILABLE))
        act(c, deployed, "active")
        wait_until(c, deployed, in_state(states.ACTIVE))

        act(c, providing, "provide")
        act(c, undeploying, "undeploy")
        power(c, [powering], "power off")

        at_crash = crash_and_restart(srv)
        for u in providing:
            assert at_crash[u]["provision_state"] == states.CLEANING, at_crash[u]
        for u in undeploying:
            assert at_crash[u]["provision_state"] in (states.DELETING, states.CLEANING), at_crash[u]
        assert at_crash[powering]["target_power_state"] == "power off", at_crash[powering]
        assert at_crash[powering]["reservation"] == HOST

        final = wait_until(c, everyone, settled, what="settled after the restart")
        for u in [*providing, *undeploying]:
            assert_resumed(final[u], at_crash[u], history(c, u))
            assert final[u]["provision_state"] == states.AVAILABLE
            assert final[u]["clean_step"] == {}
        for u in undeploying:
            assert final[u]["instance_uuid"] is None
            assert final[u]["power_state"] == "power off"

        # The interrupted power action is not half-remembered: no target, no lock, and a warning says so.
        node = final[powering]
        assert node["provision_state"] == states.ACTIVE
        assert node["target_power_state"] is None
        assert node["reservation"] is None
        warnings = [
            e for e in history(c, powering) if e["event_type"] == "power" and e["severity"] == "warning"
        ]
        assert len(warnings) == 1, warnings
        assert f"conductor {HOST} restarted during 'power off'" in warnings[0]["event"]
        # ... and the node accepts a new power action at once.
        power(c, [powering], "power off")
        wait_until(c, [powering], lambda n: n["power_state"] == "power off" and settled(n))


def test_sigkill_mid_verify_inspect_and_rescue(tmp_path: Path) -> None:
    delays = {"power": 2, "inspect": 3, "rescue": 3, "deploy": 0.2, "clean": 0.2}
    with serving(tmp_path, delays) as srv, client(srv.url) as c:
        verifying, inspecting, rescuing = create_nodes(c, ["verify-0", "inspect-0", "rescue-0"])
        act(c, [inspecting, rescuing], "manage")
        wait_until(c, [inspecting, rescuing], in_state(states.MANAGEABLE))
        act(c, [rescuing], "provide")
        wait_until(c, [rescuing], in_state(states.AVAILABLE))
        act(c, [rescuing], "active")
        wait_until(c, [rescuing], in_state(states.ACTIVE))

        act(c, [verifying], "manage")
        act(c, [inspecting], "inspect")
        r = c.put(f"/v1/nodes/{rescuing}/states/provision", json={"target": "rescue", "rescue_password": "x"})
        assert r.status_code == 202, r.text

        at_crash = crash_and_restart(srv)
        expected = {
            verifying: (states.VERIFYING, states.MANAGEABLE),
            inspecting: (states.INSPECTING, states.MANAGEABLE),
            rescuing: (states.RESCUING, states.RESCUE),
        }
        for u, (was, _) in expected.items():
            assert at_crash[u]["provision_state"] == was, at_crash[u]

        final = wait_until(c, list(expected), settled, what="settled after the restart")
        for u, (_, now) in expected.items():
            assert_resumed(final[u], at_crash[u], history(c, u))
            assert final[u]["provision_state"] == now, final[u]
        assert final[inspecting]["inspection_finished_at"] is not None
