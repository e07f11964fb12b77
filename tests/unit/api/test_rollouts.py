"""Rolling re-provisioning (conductor/rollouts.py, /v1/rollouts) on fake-hardware nodes.

The drain and undrain hooks are a shell script the test writes: it appends "<phase> <node name>" to a
log, exits 3 when a file fail-<phase>-<name> exists, and holds (polling for its removal) while a file
hold-<phase>-<name> exists, which is the fence tests use to pause, abort or restart mid-rollout.
Deploys take fake_delays.deploy seconds so that a rollout is under way while the test acts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from apihelp import Api, fault
from support.service import LATEST

from bootforge.api.app import create_app
from bootforge.api.deps import Services
from bootforge.cli.serve import build
from bootforge.conductor.conductor import Conductor
from bootforge.config import Settings

OLD = "http://127.0.0.1:9/old.img"
NEW = "http://127.0.0.1:9/new.img"

SCRIPT = """#!/bin/sh
echo "$1 $BOOTFORGE_NODE_NAME" >> {dir}/hooks.log
while [ -e {dir}/hold-$1-$BOOTFORGE_NODE_NAME ]; do sleep 0.02; done
[ -e {dir}/fail-$1-$BOOTFORGE_NODE_NAME ] && {{ echo "refused by the balancer" >&2; exit 3; }}
exit 0
"""


@dataclass
class Lab:
    dir: Path
    settings: Settings
    services: Services
    client: httpx.AsyncClient

    @property
    def api(self) -> Api:
        return Api(self)  # type: ignore[arg-type]  # Api needs .client and .conductor only

    @property
    def conductor(self) -> Conductor:
        return self.services.conductor

    def log(self) -> list[str]:
        path = self.dir / "hooks.log"
        return path.read_text().splitlines() if path.exists() else []

    async def restart(self, host: str | None = None) -> None:
        """Stop the conductor and start a new one on the same database (what a service restart does);
        with `host`, another conductor of the same fleet takes over."""
        await self.conductor.stop(grace=5)
        if host:
            self.settings = self.settings.model_copy(update={"host": host})
        conductor = Conductor(self.settings, self.conductor.db)
        await conductor.start()
        self.services = Services.build(self.settings, conductor)
        self.client = _client(self.services)


def _client(services: Services) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(services))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    script = tmp_path / "hook.sh"
    script.write_text(SCRIPT.format(dir=tmp_path))
    script.chmod(0o755)
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "host": "test-conductor",
            "power_sync_interval": 0,
            "timeout_check_interval": 0,
            "conductor_heartbeat_interval": 0,
            "enabled_hardware_types": ["fake-hardware"],
            "fake_delays": {"deploy": 0.2},
            "rollouts": {
                "poll_interval": 0.02,
                "hooks": [
                    {"name": "drain", "command": [str(script), "drain"], "timeout": 20},
                    {"name": "undrain", "command": [str(script), "undrain"], "timeout": 20},
                ],
            },
        }
    )
    db, _conductor, services = await build(settings)
    lab = Lab(tmp_path, settings, services, _client(services))
    try:
        yield lab
    finally:
        for phase in ("drain", "undrain"):
            for i in range(1, 5):
                (tmp_path / f"hold-{phase}-node-{i}").unlink(missing_ok=True)
        await lab.conductor.stop(grace=5)
        await db.close()


async def active_nodes(lab: Lab, count: int = 4) -> list[dict[str, Any]]:
    api = lab.api
    nodes = []
    for i in range(1, count + 1):
        node = await api.available(
            name=f"node-{i}", resource_class="web", instance_info={"image_source": OLD}
        )
        r = await api.verb(node["uuid"], "active")
        assert r.status_code == 202, r.text
        nodes.append(node)
    await lab.conductor.wait_idle()
    for node in nodes:
        assert (await api.get(node["uuid"]))["provision_state"] == "active"
    return nodes


async def start(lab: Lab, **body: Any) -> dict[str, Any]:
    body = {
        "selector": {"resource_class": "web"},
        "image": NEW,
        "batch": 2,
        "drain_hook": "drain",
        "undrain_hook": "undrain",
        **body,
    }
    r = await lab.client.post("/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    rollout: dict[str, Any] = r.json()
    return rollout


async def until(what: str, check: Any, timeout: float = 20.0) -> None:
    """Wait for a condition the rollout reaches on its own (a hook called, a node status)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def logged(lab: Lab, line: str) -> None:
    async def check() -> bool:
        return line in lab.log()

    await until(f"hook log line {line!r}", check)


async def statuses(lab: Lab, uuid: str) -> dict[str, str]:
    r = await lab.client.get(f"/v1/rollouts/{uuid}")
    assert r.status_code == 200, r.text
    return {n["name"]: n["status"] for n in r.json()["nodes"]}


async def history(lab: Lab, uuid: str) -> list[str]:
    r = await lab.client.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})
    assert r.status_code == 200, r.text
    return [e["event"] for e in r.json()["history"]]


async def rebuilds(lab: Lab, uuid: str) -> int:
    return sum("(rebuild)" in e for e in await history(lab, uuid))


async def test_four_nodes_in_batches_of_two_with_hooks_in_order(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    rollout = await start(lab)
    assert rollout["batch_size"] == 2 and rollout["state"] == "running"
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done", done
    assert done["counts"] == {"done": 4} and done["failures"] == 0

    log = lab.log()
    assert len(log) == 8, log
    # Batch by batch: both drains, then both undrains (in the order the rebuilds finished).
    assert log[:2] == ["drain node-1", "drain node-2"]
    assert set(log[2:4]) == {"undrain node-1", "undrain node-2"}
    assert log[4:6] == ["drain node-3", "drain node-4"]
    assert set(log[6:8]) == {"undrain node-3", "undrain node-4"}
    for node in nodes:
        after = await lab.api.get(node["uuid"])
        assert after["provision_state"] == "active"
        assert after["instance_info"]["image_source"] == NEW
        events = await history(lab, node["uuid"])
        assert await rebuilds(lab, node["uuid"]) == 1
        assert any("drain hook drain done" in e for e in events), events
        assert any("undrain hook undrain done" in e for e in events), events
    table = (await lab.client.get("/v1/rollouts")).json()["rollouts"]
    assert [r["uuid"] for r in table] == [rollout["uuid"]]


async def test_a_failing_hook_on_the_third_node_stops_there(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    (lab.dir / "fail-drain-node-3").touch()
    rollout = await start(lab)
    done = await lab.conductor.rollouts.wait(rollout["uuid"])

    assert done["state"] == "failed"
    assert "node-3" in done["last_error"] and "exited with status 3" in done["last_error"]
    assert "refused by the balancer" in done["last_error"]
    assert {n["name"]: n["status"] for n in done["nodes"]} == {
        "node-1": "done",
        "node-2": "done",
        "node-3": "failed",
        "node-4": "pending",
    }
    log = lab.log()
    assert log[-1] == "drain node-3" and not any("node-4" in line for line in log), log
    for node, image, rebuilt in zip(nodes, (NEW, NEW, OLD, OLD), (1, 1, 0, 0), strict=True):
        after = await lab.api.get(node["uuid"])
        assert after["provision_state"] == "active"
        assert after["instance_info"]["image_source"] == image, node["name"]
        assert await rebuilds(lab, node["uuid"]) == rebuilt, node["name"]

    # The operator fixes the balancer and resumes: node-3 is drained again, the rest go on.
    (lab.dir / "fail-drain-node-3").unlink()
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/resume")
    assert r.status_code == 200, r.text
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done" and done["counts"] == {"done": 4}, done


async def test_pause_then_resume(lab: Lab) -> None:
    await active_nodes(lab)
    (lab.dir / "hold-drain-node-1").touch()
    rollout = await start(lab)
    await logged(lab, "drain node-1")
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/pause")
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text
    (lab.dir / "hold-drain-node-1").unlink()
    paused = await lab.conductor.rollouts.wait(rollout["uuid"])
    # The node under way finished (rebuilt, undrained); nothing after it was touched.
    assert paused["state"] == "paused"
    assert await statuses(lab, rollout["uuid"]) == {
        "node-1": "done",
        "node-2": "pending",
        "node-3": "pending",
        "node-4": "pending",
    }
    assert lab.log() == ["drain node-1", "undrain node-1"]
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/pause")
    assert r.status_code == 409 and "paused" in fault(r)

    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/resume")
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done" and done["counts"] == {"done": 4}, done
    assert len(lab.log()) == 8


async def test_abort_undrains_drained_nodes_untouched(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    (lab.dir / "hold-drain-node-2").touch()
    rollout = await start(lab)
    await logged(lab, "drain node-2")  # node-1 drained, node-2's drain under way: no rebuild yet
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/abort")
    assert r.status_code == 200 and r.json()["state"] == "aborting", r.text
    (lab.dir / "hold-drain-node-2").unlink()
    aborted = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert aborted["state"] == "aborted" and aborted["finished_at"] and not aborted["last_error"]
    assert [n["status"] for n in aborted["nodes"]] == ["pending"] * 4
    assert lab.log() == ["drain node-1", "drain node-2", "undrain node-1", "undrain node-2"]
    for node in nodes:
        assert await rebuilds(lab, node["uuid"]) == 0
    for node in nodes[:2]:
        assert any("aborted before its rebuild" in e for e in await history(lab, node["uuid"]))
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/resume")
    assert r.status_code == 409 and "aborted" in fault(r)
    # Its nodes are free again for a new rollout.
    again = await start(lab, selector={"name_prefix": "node-"})
    assert (await lab.conductor.rollouts.wait(again["uuid"]))["state"] == "done"


async def test_abort_lets_the_rebuilds_under_way_finish(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    (lab.dir / "hold-undrain-node-1").touch()
    rollout = await start(lab)
    await logged(lab, "undrain node-1")  # node-1 rebuilt, node-2 rebuilt or rebuilding
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/abort")
    assert r.status_code == 200 and r.json()["state"] == "aborting", r.text
    # While a node is under way, its nodes are not free: another rollout cannot take them.
    r = await lab.client.post("/v1/rollouts", json={"image": NEW, "selector": {"name_prefix": "node-1"}})
    assert r.status_code == 409 and "node-1" in fault(r), r.text
    (lab.dir / "hold-undrain-node-1").unlink()
    aborted = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert aborted["state"] == "aborted", aborted
    assert [n["status"] for n in aborted["nodes"]] == ["done", "done", "pending", "pending"]
    for node, rebuilt in zip(nodes, (1, 1, 0, 0), strict=True):
        assert await rebuilds(lab, node["uuid"]) == rebuilt, node["name"]
        assert (await lab.api.get(node["uuid"]))["provision_state"] == "active"
    assert sorted(lab.log()) == sorted(["drain node-1", "drain node-2", "undrain node-1", "undrain node-2"])


async def test_abort_of_a_paused_rollout_ends_it_at_once(lab: Lab) -> None:
    await active_nodes(lab)
    (lab.dir / "hold-drain-node-1").touch()
    rollout = await start(lab)
    await logged(lab, "drain node-1")
    assert (await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/pause")).status_code == 200
    (lab.dir / "hold-drain-node-1").unlink()
    paused = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert paused["state"] == "paused"
    r = await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/abort")
    assert r.status_code == 200 and r.json()["state"] == "aborted" and r.json()["finished_at"], r.text


async def test_an_aborting_rollout_is_wound_down_after_a_restart(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    (lab.dir / "hold-drain-node-2").touch()
    rollout = await start(lab)
    await logged(lab, "drain node-2")
    assert (await lab.client.post(f"/v1/rollouts/{rollout['uuid']}/abort")).status_code == 200
    await lab.restart()  # the runner is gone mid-drain; the new conductor takes the aborting rollout
    (lab.dir / "hold-drain-node-2").unlink()
    aborted = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert aborted["state"] == "aborted", aborted
    assert [n["status"] for n in aborted["nodes"]] == ["pending"] * 4
    assert {"undrain node-1", "undrain node-2"} <= set(lab.log())
    for node in nodes:
        assert await rebuilds(lab, node["uuid"]) == 0


async def test_a_conductor_restart_resumes_the_rollout(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    # Held in node-1's undrain: node-1 is rebuilt, its rollout step is not finished.
    (lab.dir / "hold-undrain-node-1").touch()
    rollout = await start(lab)
    await logged(lab, "undrain node-1")
    await lab.restart()
    assert (await statuses(lab, rollout["uuid"]))["node-1"] == "undraining"
    (lab.dir / "hold-undrain-node-1").unlink()
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done" and done["counts"] == {"done": 4}, done
    for node in nodes:
        # Resumed from the record: no node rebuilt twice; node-1's undrain was called again.
        assert await rebuilds(lab, node["uuid"]) == 1, node["name"]
    assert lab.log().count("undrain node-1") == 2
    assert lab.log().count("drain node-1") == 1


async def test_bad_requests_name_the_field_and_hooks_come_only_from_the_config(lab: Lab) -> None:
    await active_nodes(lab, 1)
    cases = [
        ({"drain_hook": "rm -rf /"}, "drain_hook"),
        ({"command": ["/bin/true"]}, "command"),
        ({"batch": "0%"}, "batch"),
        ({"batch": "x"}, "batch"),
        ({"max_failures": -1}, "max_failures"),
        ({"selector": {"provision_state": "available"}}, "provision_state"),
        ({"selector": {"resource_class": "nothing-here"}}, "selector"),
        ({"image": "no-such-image"}, "image"),
    ]
    for body, word in cases:
        r = await lab.client.post("/v1/rollouts", json={"image": NEW, **body})
        assert r.status_code == 400, (body, r.text)
        assert word in fault(r), (body, fault(r))
    first = await start(lab, drain_hook=None, undrain_hook=None)
    assert first["state"] == "running"
    r = await lab.client.post("/v1/rollouts", json={"image": NEW, "selector": {"name_prefix": "node-"}})
    assert r.status_code == 409 and "node-1" in fault(r) and first["uuid"] in fault(r), r.text
    r = await lab.client.get("/v1/rollouts/no-such")
    assert r.status_code == 404


async def test_a_restart_while_a_node_rebuilds_does_not_rebuild_it_again(lab: Lab) -> None:
    nodes = await active_nodes(lab)

    async def rebuilding() -> bool:
        return (await statuses(lab, rollout["uuid"]))["node-1"] == "rebuilding"

    (lab.dir / "hold-undrain-node-1").touch()
    rollout = await start(lab, undrain_hook=None)
    await until("node-1 rebuilding", rebuilding)
    # The rebuild was asked for; the restart lets the node's own work finish (grace) and comes back
    # to a rollout record that still says "rebuilding".
    await lab.restart()
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done", done
    for node in nodes:
        assert await rebuilds(lab, node["uuid"]) == 1, node["name"]


async def test_failed_rebuilds_count_against_max_failures(lab: Lab) -> None:
    nodes = await active_nodes(lab)
    r = await lab.client.patch(
        f"/v1/nodes/{nodes[1]['uuid']}",
        json=[{"op": "add", "path": "/driver_info/fake_boot_error", "value": "ramdisk refused"}],
    )
    assert r.status_code == 200, r.text
    rollout = await start(lab, max_failures=0)
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "failed" and "more than max_failures 0" in done["last_error"], done
    by_name = {n["name"]: n for n in done["nodes"]}
    assert [by_name[f"node-{i}"]["status"] for i in range(1, 5)] == ["done", "failed", "pending", "pending"]
    assert "ramdisk refused" in by_name["node-2"]["error"]
    # The failed node is left drained, in its failed state, for the operator.
    assert "undrain node-2" not in lab.log()
    assert (await lab.api.get(nodes[1]["uuid"]))["provision_state"] == "deploy failed"

    await active_nodes_again(lab, nodes[1]["uuid"])
    second = await start(lab, max_failures=1, selector={"name_prefix": "node-3"})
    assert (await lab.conductor.rollouts.wait(second["uuid"]))["state"] == "done"


async def active_nodes_again(lab: Lab, uuid: str) -> None:
    """Put a node failed by the rollout back to active (what the operator does after fixing it)."""
    r = await lab.client.patch(
        f"/v1/nodes/{uuid}", json=[{"op": "remove", "path": "/driver_info/fake_boot_error"}]
    )
    assert r.status_code == 200, r.text
    await lab.api.drive(uuid, "active")


async def test_a_hook_that_hangs_is_killed_at_its_timeout(tmp_path: Path) -> None:
    from bootforge.conductor.rollout_settings import RolloutHook
    from bootforge.conductor.rollouts import run_hook

    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 30\n")
    script.chmod(0o755)
    hook = RolloutHook(name="slow", command=[str(script)], timeout=0.5)
    started = time.monotonic()
    error = await run_hook(hook, "drain", "r1", "u1", "node-1")
    assert error == "hook slow timed out after 0.5 s and was killed"
    assert time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)

    missing = RolloutHook(name="gone", command=[str(tmp_path / "nope")])
    assert "cannot run" in (await run_hook(missing, "drain", "r1", "u1", "node-1") or "")


async def test_a_webhook_hook_is_signed_and_its_refusal_fails(tmp_path: Path) -> None:
    import hashlib
    import hmac
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bootforge.conductor.rollout_settings import RolloutHook
    from bootforge.conductor.rollouts import run_hook

    secret = "s3cret-s3cret-s3cret"
    seen: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((dict(self.headers), body))
            self.send_response(204 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        ok = RolloutHook(name="lb", url=f"{base}/ok", secret=secret, timeout=5)
        assert await run_hook(ok, "drain", "r1", "u1", "node-1") is None
        headers, body = seen[0]
        stamp = headers["X-Bootforge-Timestamp"]
        expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Bootforge-Signature"] == "sha256=" + expected
        assert json.loads(body) == {
            "rollout": "r1",
            "phase": "drain",
            "node": {"uuid": "u1", "name": "node-1"},
        }
        refused = RolloutHook(name="lb", url=f"{base}/no", secret=secret, timeout=5)
        error = await run_hook(refused, "undrain", "r1", "u1", "node-1")
        assert error == "hook lb: answered HTTP 503"  # the hook's name, never its URL
    finally:
        server.shutdown()
        server.server_close()


async def test_another_conductor_takes_over_the_rollout_of_a_stopped_one(lab: Lab) -> None:
    await active_nodes(lab)
    (lab.dir / "hold-drain-node-1").touch()
    rollout = await start(lab)
    await logged(lab, "drain node-1")
    # Stopped while the drain hook is held (the hook is killed with the runner).
    await lab.restart(host="other-conductor")
    (lab.dir / "hold-drain-node-1").unlink()
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done" and done["conductor"] == "other-conductor", done
    assert done["counts"] == {"done": 4}
    assert lab.log().count("drain node-1") == 2, lab.log()


async def test_nodes_changed_mid_way_are_skipped_not_drained(lab: Lab) -> None:
    """A fleet changes while a rollout runs: a node put into maintenance, one undeployed and deleted,
    one protected are not drained or rebuilt when their turn comes, and do not count as failures."""
    nodes = await active_nodes(lab)
    (lab.dir / "hold-drain-node-1").touch()
    rollout = await start(lab, batch=1)
    await logged(lab, "drain node-1")
    api = lab.api
    r = await lab.client.put(f"/v1/nodes/{nodes[1]['uuid']}/maintenance", json={"reason": "bad DIMM"})
    assert r.status_code == 202, r.text
    await api.drive(nodes[2]["uuid"], "deleted")
    await lab.conductor.wait_idle()
    assert (await lab.client.delete(f"/v1/nodes/{nodes[2]['uuid']}")).status_code == 204
    r = await lab.client.patch(
        f"/v1/nodes/{nodes[3]['uuid']}", json=[{"op": "replace", "path": "/protected", "value": True}]
    )
    assert r.status_code == 200, r.text
    (lab.dir / "hold-drain-node-1").unlink()
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done" and done["failures"] == 0, done
    by_name = {n["name"]: n for n in done["nodes"]}
    assert [by_name[f"node-{i}"]["status"] for i in range(1, 5)] == ["done", "skipped", "skipped", "skipped"]
    assert "maintenance (bad DIMM)" in by_name["node-2"]["error"]
    assert "deleted" in by_name["node-3"]["error"]
    assert "protected" in by_name["node-4"]["error"]
    assert lab.log() == ["drain node-1", "undrain node-1"]
    for node in (nodes[1], nodes[3]):
        assert await rebuilds(lab, node["uuid"]) == 0
        assert any("skipped" in e for e in await history(lab, node["uuid"]))


async def test_two_rollouts_never_drive_the_same_node(lab: Lab) -> None:
    nodes = await active_nodes(lab, 2)
    # Two requests at once for overlapping nodes: one wins, the other is told which node and rollout.
    first, second = await asyncio.gather(
        lab.client.post("/v1/rollouts", json={"image": NEW, "selector": {"name_prefix": "node-"}}),
        lab.client.post("/v1/rollouts", json={"image": NEW, "selector": {"name_prefix": "node-1"}}),
    )
    assert sorted([first.status_code, second.status_code]) == [201, 409], (first.text, second.text)
    winner = first if first.status_code == 201 else second
    await lab.conductor.rollouts.wait(winner.json()["uuid"])

    # Another conductor raced past that check (two API processes): the runner checks again at the
    # node's turn and skips a node that the other rollout has under way.
    (lab.dir / "hold-drain-node-1").touch()
    a = await start(lab, selector={"name_prefix": "node-1"})
    await logged(lab, "drain node-1")
    service = lab.conductor.rollouts

    async def nothing_busy(*_args: Any, **_kwargs: Any) -> None:
        return None

    service._busy = nothing_busy  # type: ignore[method-assign]
    try:
        b = await start(lab, selector={"name_prefix": "node-"})
    finally:
        del service._busy
    b_done = await lab.conductor.rollouts.wait(b["uuid"])
    (lab.dir / "hold-drain-node-1").unlink()
    a_done = await lab.conductor.rollouts.wait(a["uuid"])
    assert a_done["state"] == "done" and b_done["state"] == "done", (a_done, b_done)
    by_name = {n["name"]: n for n in b_done["nodes"]}
    assert by_name["node-1"]["status"] == "skipped" and a["uuid"] in by_name["node-1"]["error"]
    assert by_name["node-2"]["status"] == "done"
    assert await rebuilds(lab, nodes[0]["uuid"]) == 2  # once per winning rollout, never at once


async def test_a_node_locked_for_a_moment_is_waited_for_not_failed(lab: Lab) -> None:
    from sqlalchemy import update

    from bootforge.db.models import Node

    nodes = await active_nodes(lab, 1)
    uuid = nodes[0]["uuid"]

    async def lock(holder: str | None) -> None:
        async with lab.conductor.db.write() as s:
            await s.execute(update(Node).where(Node.uuid == uuid).values(reservation=holder))
            await s.commit()

    await lock("another-conductor")  # a power sync, an operator's PATCH under way
    rollout = await start(lab, drain_hook=None, undrain_hook=None)

    async def rebuilding() -> bool:
        return (await statuses(lab, rollout["uuid"]))["node-1"] == "rebuilding"

    await until("node-1 rebuilding", rebuilding)
    await asyncio.sleep(0.2)  # a few refused attempts (poll_interval 0.02 s); the test fails fast otherwise
    assert (await statuses(lab, rollout["uuid"]))["node-1"] == "rebuilding"
    await lock(None)
    done = await lab.conductor.rollouts.wait(rollout["uuid"])
    assert done["state"] == "done" and done["failures"] == 0, done
    assert await rebuilds(lab, uuid) == 1
