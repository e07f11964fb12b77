"""`bootforge fleet ...` against a served bootforge: the rollout lives in the server, not in the CLI.

A `bootforge serve` process (fake-hardware enabled in its config file, deploys slowed by fake_delays)
with a drain/undrain hook script; the real `bootforge` CLI starts the rollout and returns, the server
is SIGKILLed while a node's undrain hook is held, started again, and finishes the rollout from its
record without rebuilding any node twice.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.service import BOOTFORGE, LATEST, Served, served

OLD = "http://127.0.0.1:9/old.img"
NEW = "http://127.0.0.1:9/new.img"
SCRIPT = """#!/bin/sh
echo "$1 $BOOTFORGE_NODE_NAME" >> {dir}/hooks.log
while [ -e {dir}/hold-$1-$BOOTFORGE_NODE_NAME ]; do sleep 0.02; done
exit 0
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    script = tmp_path / "hook.sh"
    script.write_text(SCRIPT.format(dir=tmp_path))
    script.chmod(0o755)
    config = tmp_path / "bootforge.toml"
    config.write_text(
        f"""
power_sync_interval = 0
[fake_delays]
deploy = 0.3
[rollouts]
poll_interval = 0.05
[[rollouts.hooks]]
name = "drain"
command = ["{script}", "drain"]
[[rollouts.hooks]]
name = "undrain"
command = ["{script}", "undrain"]
"""
    )
    yield from served(tmp_path, args=["--config", str(config)])


def until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def cli(s: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BOOTFORGE, *args, "--url", s.url], capture_output=True, text=True, timeout=60, env=s.env
    )


def active_nodes(c: httpx.Client, count: int) -> list[str]:
    uuids = []
    for i in range(1, count + 1):
        body = {"driver": "fake-hardware", "name": f"node-{i}", "resource_class": "web"}
        r = c.post("/v1/nodes", json={**body, "instance_info": {"image_source": OLD}})
        assert r.status_code == 201, r.text
        uuids.append(r.json()["uuid"])
    for verb, state in (("manage", "manageable"), ("provide", "available"), ("active", "active")):
        for uuid in uuids:
            r = c.put(f"/v1/nodes/{uuid}/states/provision", json={"target": verb})
            assert r.status_code == 202, r.text
        for uuid in uuids:
            until(
                f"{uuid} {state}",
                lambda u=uuid, st=state: (
                    (n := c.get(f"/v1/nodes/{u}").json())["provision_state"] == st
                    and n["reservation"] is None
                ),
            )
    return uuids


def test_the_cli_starts_a_rollout_the_server_finishes_across_a_kill(server: Served, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, headers=LATEST, timeout=10) as c:
        uuids = active_nodes(c, 4)
        (tmp_path / "hold-undrain-node-1").touch()
        out = cli(
            server,
            "fleet",
            "redeploy",
            "--selector",
            "resource_class=web,name_prefix=node-",
            "--image",
            NEW,
            "--batch",
            "50%",
            "--drain-hook",
            "drain",
            "--undrain-hook",
            "undrain",
        )
        assert out.returncode == 0, out.stderr
        assert "4 nodes in batches of 2" in out.stdout
        rollout = out.stdout.split()[1]
        log = tmp_path / "hooks.log"
        until("node-1's undrain hook", lambda: log.exists() and "undrain node-1" in log.read_text())

        server.kill()
        (tmp_path / "hold-undrain-node-1").unlink()
        server.start()

        def finished() -> dict[str, Any] | None:
            r = c.get(f"/v1/rollouts/{rollout}").json()
            return r if r["state"] != "running" else None

        done = until("the rollout to finish after the restart", finished)
        assert done["state"] == "done" and done["counts"] == {"done": 4}, done
        for uuid in uuids:
            node = c.get(f"/v1/nodes/{uuid}").json()
            assert node["instance_info"]["image_source"] == NEW
            history = c.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"}).json()["history"]
            assert sum("(rebuild)" in e["event"] for e in history) == 1, uuid

    lines = log.read_text().splitlines()
    assert lines[:2] == ["drain node-1", "drain node-2"] and lines.count("drain node-1") == 1, lines
    status = cli(server, "fleet", "status", rollout, "--json")
    assert status.returncode == 0, status.stderr
    assert [n["status"] for n in json.loads(status.stdout)["nodes"]] == ["done"] * 4
    table = cli(server, "fleet", "status", rollout)
    assert "node-4" in table.stdout and "is done" in table.stdout
    again = cli(server, "fleet", "pause", rollout)
    assert again.returncode == 1 and "done" in again.stderr
    bad = cli(server, "fleet", "redeploy", "--image", NEW, "--selector", "provision_state=available")
    assert bad.returncode == 2 and "always those in state active" in bad.stderr
