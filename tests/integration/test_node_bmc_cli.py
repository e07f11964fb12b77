"""`bootforge node bmc NODE`, run as a user runs it, against a live `bootforge serve`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from support.service import BOOTFORGE, LATEST, Served, served

PASSWORD = "n0t-for-printing"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served(tmp_path_factory.mktemp("bootforge-bmc-cli"))


def bootforge(server: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "BOOTFORGE_URL")}
    env["BOOTFORGE_URL"] = server.url
    return subprocess.run([BOOTFORGE, *args], env=env, capture_output=True, text=True, timeout=120)


def create(server: Served, name: str, driver: str, driver_info: dict[str, str]) -> None:
    body = {"driver": driver, "name": name, "driver_info": driver_info}
    r = httpx.post(f"{server.url}/v1/nodes", json=body, headers=LATEST)
    assert r.status_code == 201, r.text


def test_a_bmc_that_answers(server: Served) -> None:
    create(server, "answers", "fake-hardware", {"ipmi_password": PASSWORD})
    p = bootforge(server, "node", "bmc", "answers")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "BMC answers: fake answers" in p.stdout
    assert "Power state" in p.stdout and "power off" in p.stdout
    assert "pxe, disk, cdrom, bios" in p.stdout
    assert PASSWORD not in p.stdout + p.stderr

    p = bootforge(server, "node", "bmc", "answers", "--json")
    assert p.returncode == 0
    report = json.loads(p.stdout)
    assert (report["reachable"], report["power_state"]) == (True, "power off")


def test_a_node_whose_bmc_cannot_be_used_exits_non_zero(server: Served) -> None:
    create(server, "unusable", "qemu", {"qemu_password": PASSWORD})  # no qemu_qmp_socket
    p = bootforge(server, "node", "bmc", "unusable")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "BMC not usable: not contacted, driver_info does not validate" in p.stderr
    assert "qemu_qmp_socket" in p.stderr
    assert PASSWORD not in p.stdout + p.stderr


def test_unknown_node(server: Served) -> None:
    p = bootforge(server, "node", "bmc", "nobody")
    assert p.returncode == 1
    assert "404" in p.stderr
