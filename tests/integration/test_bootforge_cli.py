"""The `bootforge node ...` commands, run as a user runs them, against a live `bootforge serve`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.service import BOOTFORGE, Served, served

MACS = ("52:54:00:00:bf:01", "52:54:00:00:bf:02")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One service for the module: each test uses its own node names."""
    yield from served(tmp_path_factory.mktemp("bootforge-cli"))


def bootforge(
    server: Served, *args: str, check: bool = True, columns: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "BOOTFORGE_URL")}
    env["BOOTFORGE_URL"] = server.url
    if columns:
        env["COLUMNS"] = str(columns)
    p = subprocess.run([BOOTFORGE, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"bootforge {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def api_node(server: Served, ident: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/nodes/{ident}", headers={"X-OpenStack-Ironic-API-Version": "1.78"})
    node: dict[str, Any] = r.json()
    return node


def one_line(text: str) -> str:
    """Table cells wrap; compare words, not layout."""
    return " ".join(re.sub(r"[│┃|]", " ", text).split())


def test_node_commands(server: Served) -> None:
    out = bootforge(
        server,
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "cli-1",
        "--mac",
        MACS[0],
        "--mac",
        MACS[1],
        "--driver-info",
        '{"ipmi_password": "hunter2"}',
    ).stdout
    m = re.search(r"created node ([0-9a-f-]{36}) \(enroll\)", out)
    assert m, out
    uuid = m.group(1)
    ports = httpx.get(f"{server.url}/v1/nodes/{uuid}/ports").json()["ports"]
    assert sorted(p["address"] for p in ports) == list(MACS)

    # Piped output is not cut, so scripts can grep it; a narrow terminal still shows the UUID whole.
    listed = bootforge(server, "node", "list").stdout
    row = next(line for line in listed.splitlines() if uuid in line)
    assert one_line(row) == f"{uuid} cli-1 enroll fake-hardware"
    assert uuid in bootforge(server, "node", "list", columns=80).stdout

    shown = bootforge(server, "node", "show", "cli-1").stdout
    assert "hunter2" not in shown and "******" in shown

    for verb, state in (("manage", "manageable"), ("provide", "available"), ("deploy", "active")):
        out = bootforge(server, "node", verb, "cli-1", "--wait", "60").stdout
        assert f"cli-1 is {state}" in out, out
    assert api_node(server, uuid)["provision_state"] == "active"
    listed = bootforge(server, "node", "list", "--state", "active").stdout
    assert uuid in listed and "power on" in listed
    assert uuid not in bootforge(server, "node", "list", "--state", "enroll").stdout

    out = bootforge(server, "node", "power", "cli-1", "off").stdout
    assert "power off requested for cli-1" in out

    p = bootforge(server, "node", "delete", "cli-1", check=False)
    assert p.returncode == 1
    err = one_line(p.stderr)
    assert "409" in err and 'provision state "active"' in err

    events = one_line(bootforge(server, "node", "events", "cli-1").stdout)
    for expected in (
        "created in enroll",
        f"port {MACS[0]} added",
        "enroll -> verifying (manage)",
        "available -> deploying (active)",
        "deploying -> active (done)",
        "power off requested",
    ):
        assert expected in events, expected
    assert "hunter2" not in events

    out = bootforge(server, "node", "undeploy", "cli-1", "--wait", "60").stdout
    assert "cli-1 is available" in out
    assert "deleted cli-1" in bootforge(server, "node", "delete", "cli-1").stdout
    assert httpx.get(f"{server.url}/v1/nodes/{uuid}").status_code == 404


def test_node_command_errors(server: Served) -> None:
    bootforge(server, "node", "create", "--driver", "fake-hardware", "--name", "cli-err")
    p = bootforge(server, "node", "deploy", "cli-err", check=False)
    assert p.returncode == 1
    err = one_line(p.stderr)
    assert '"active"' in err and '"enroll"' in err and "manage" in err

    p = bootforge(server, "node", "manage", "ghost", check=False)
    assert p.returncode == 1 and "ghost could not be found" in one_line(p.stderr)

    p = bootforge(server, "node", "power", "cli-err", "sideways", check=False)
    assert p.returncode == 2 and "sideways" in p.stderr

    p = bootforge(
        server,
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "cli-nic",
        "--mac",
        "not-a-mac",
        check=False,
    )
    assert p.returncode == 1 and "not-a-mac" in one_line(p.stderr) and "not kept" in p.stderr
    assert httpx.get(f"{server.url}/v1/nodes/cli-nic").status_code == 404

    p = bootforge(server, "node", "list", "--url", "http://127.0.0.1:1", check=False)
    assert p.returncode == 1 and "cannot reach bootforge" in p.stderr
