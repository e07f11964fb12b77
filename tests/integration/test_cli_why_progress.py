"""`bootforge node why` and `--wait`'s progress, as an operator runs them: the real `bootforge` command
(piped, so line-based) against a real `bootforge serve` on loopback with fake-hardware switched on in its
settings (with fake delays, so the deploy's steps can be seen), and a redfish node whose BMC address is
a closed port on loopback (the connection is refused, so verification fails for real)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.service import BOOTFORGE, LATEST, Served, free_port, served


@pytest.fixture
def bf(tmp_path: Path) -> Iterator[Served]:
    env = {
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": json.dumps(["fake-hardware", "redfish"]),
        "BOOTFORGE_FAKE_DELAYS__DEPLOY": "1",
        "BOOTFORGE_FAKE_DELAYS__CLEAN": "0.5",
    }
    yield from served(tmp_path, env=env)


def cli(bf: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"BOOTFORGE_URL": bf.url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [BOOTFORGE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_deploy_wait_shows_the_steps_and_why_finds_nothing_wrong(bf: Served) -> None:
    assert cli(bf, "node", "create", "--driver", "fake-hardware", "--name", "n1").returncode == 0
    assert cli(bf, "node", "manage", "n1", "--wait", "60").returncode == 0
    provide = cli(bf, "node", "provide", "n1", "--wait", "60")
    assert provide.returncode == 0, provide.stderr
    deploy = cli(bf, "node", "deploy", "n1", "--wait", "60")
    assert deploy.returncode == 0, deploy.stderr
    lines = deploy.stdout.splitlines()
    # Piped: plain lines, one per change, no control sequences.
    assert "\x1b" not in deploy.stdout
    assert any(line.startswith("n1: deploying -> active  deploy step 1/") for line in lines), lines
    assert lines[-1] == "n1 is active"
    why = cli(bf, "node", "why", "n1")
    assert why.returncode == 0, why.stderr
    assert "ok: nothing wrong: the node is active, power on" in why.stdout


def test_a_failed_verification_is_explained_by_wait_and_by_why(bf: Served) -> None:
    bmc = f"https://127.0.0.1:{free_port()}"
    info = {"redfish_address": bmc, "redfish_username": "admin", "redfish_password": "pw-not-shown"}
    r = httpx.post(
        bf.url + "/v1/nodes", json={"driver": "redfish", "name": "vm1", "driver_info": info}, headers=LATEST
    )
    assert r.status_code == 201, r.text
    manage = cli(bf, "node", "manage", "vm1", "--wait", "60")
    assert manage.returncode == 1
    assert "vm1 failed: it is enroll, not manageable" in manage.stderr
    assert (
        "where it stopped: bootforge could not read the machine's power state through its BMC"
        in manage.stderr
    )
    assert "127.0.0.1" in manage.stderr and "pw-not-shown" not in manage.stderr + manage.stdout

    why = cli(bf, "node", "why", "vm1")
    assert why.returncode == 1
    assert "failed: bootforge could not read the machine's power state through its BMC" in why.stdout
    assert "`bootforge node bmc vm1`" in why.stdout
    # The evidence: the verification's failure is the marked row.
    marked = [line for line in why.stdout.splitlines() if line.lstrip("│ ").startswith(">")]
    assert len(marked) == 1 and "verifying -> enroll (fail)" in marked[0], why.stdout

    as_json = json.loads(cli(bf, "node", "why", "vm1", "--json").stdout)
    assert as_json["stage"] == "before-power-on" and as_json["wrong"] is True
    assert as_json["failing_event"]["event"].startswith("verifying -> enroll (fail)")
