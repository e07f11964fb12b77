"""The unmodified `baremetal` CLI (python-ironicclient) against a live `bootforge serve` on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.service import LATEST, Served, served

BAREMETAL = Path(sys.executable).parent / "baremetal"
MAC = "52:54:00:12:34:56"

pytestmark = pytest.mark.skipif(
    not BAREMETAL.exists(), reason="needs the baremetal CLI (python-ironicclient)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One service for the module: each test uses its own node names."""
    yield from served(tmp_path_factory.mktemp("baremetal"))


def api(server: Served, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", json=body, headers=LATEST)


def baremetal(server: Served, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": server.url}
    env.pop("OS_CLOUD", None)
    # No retries: ironicclient retries every 409 five times, two seconds apart.
    cmd = [str(BAREMETAL), "--max-retries", "0", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def show(server: Served, ident: str) -> dict[str, Any]:
    node: dict[str, Any] = json.loads(baremetal(server, "node", "show", ident, "-f", "json").stdout)
    return node


def wait_for(server: Served, ident: str, **expected: str) -> None:
    """Poll the API (cheaply, without a CLI process) until the node shows `expected` and is idle.

    `baremetal ... --wait` polls every 10 s for long actions (provide, deploy, undeploy), so the tests
    use it once, for deploy, and poll themselves elsewhere.
    """
    deadline = time.monotonic() + 30
    node: dict[str, Any] = {}
    while time.monotonic() < deadline:
        node = api(server, "GET", f"/v1/nodes/{ident}").json()
        idle = node["reservation"] is None and node["target_power_state"] is None
        if idle and all(node[k] == v for k, v in expected.items()):
            return
        time.sleep(0.05)
    raise AssertionError(f"node {ident} did not reach {expected}: {node}")


def test_node_lifecycle(server: Served) -> None:
    created = json.loads(
        baremetal(
            server,
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "bm-1",
            "--driver-info",
            "ipmi_password=hunter2",
            "-f",
            "json",
        ).stdout
    )
    uuid = created["uuid"]
    assert created["provision_state"] == "enroll"
    assert created["driver_info"] == {"ipmi_password": "******"}
    port = json.loads(baremetal(server, "port", "create", MAC, "--node", uuid, "-f", "json").stdout)
    assert port["node_uuid"] == uuid

    baremetal(server, "node", "manage", "bm-1", "--wait", "60")
    assert api(server, "GET", f"/v1/nodes/{uuid}").json()["provision_state"] == "manageable"
    baremetal(server, "node", "provide", "bm-1")
    wait_for(server, uuid, provision_state="available")
    p = baremetal(server, "node", "deploy", "bm-1", "--wait", "60")
    assert "Waiting for provision state active" in p.stdout
    node = show(server, "bm-1")
    assert node["provision_state"] == "active" and node["power_state"] == "power on"

    baremetal(server, "node", "power", "off", "bm-1")
    wait_for(server, uuid, power_state="power off")
    baremetal(server, "node", "power", "on", "bm-1")
    wait_for(server, uuid, power_state="power on")

    baremetal(server, "node", "boot", "device", "set", "bm-1", "pxe", "--persistent")
    boot = json.loads(baremetal(server, "node", "boot", "device", "show", "bm-1", "-f", "json").stdout)
    assert boot == {"boot_device": "pxe", "persistent": True}

    baremetal(server, "node", "undeploy", "bm-1")
    wait_for(server, uuid, provision_state="available", power_state="power off")

    baremetal(server, "node", "delete", "bm-1")
    listed = json.loads(baremetal(server, "node", "list", "-f", "json").stdout)
    assert uuid not in {n["UUID"] for n in listed}
    assert api(server, "GET", f"/v1/ports/{port['uuid']}").status_code == 404


def test_error_messages(server: Served) -> None:
    uuid = json.loads(
        baremetal(
            server, "node", "create", "--driver", "fake-hardware", "--name", "bm-err", "-f", "json"
        ).stdout
    )["uuid"]

    p = baremetal(server, "node", "unset", "bm-err", "--property", "no_such_key", check=False)
    assert p.returncode != 0
    assert "no_such_key" in p.stderr and "HTTP 400" in p.stderr

    p = baremetal(server, "node", "deploy", "bm-err", check=False)
    assert p.returncode != 0
    assert '"active"' in p.stderr and '"enroll"' in p.stderr and "manage" in p.stderr

    # Getting there is not what this test is about: drive the API directly, it is faster.
    for verb, state in (("manage", "manageable"), ("provide", "available"), ("active", "active")):
        assert api(server, "PUT", f"/v1/nodes/{uuid}/states/provision", {"target": verb}).status_code == 202
        wait_for(server, uuid, provision_state=state)
    p = baremetal(server, "node", "delete", "bm-err", check=False)
    assert p.returncode != 0
    assert 'provision state "active"' in p.stderr and uuid in p.stderr

    p = baremetal(server, "--os-baremetal-api-version", "1.99", "node", "list", check=False)
    assert p.returncode != 0
    assert "1.99" in p.stderr and "1.1 to 1.78" in p.stderr
