"""`bootforge node bmc NODE`, run as a user runs it, against a live `bootforge serve`.

The ipmi cases ask pyghmi's BMC server (bootforge.lab.ipmi_bmc, a machine in memory) on loopback,
and a UDP port that swallows every packet (a BMC that never answers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from support.processes import start_ipmi_bmc, stop_process
from support.service import BOOTFORGE, LATEST, Served, served

from bootforge.drivers import hardware

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


@pytest.fixture(scope="module")
def ipmi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if "ipmi" not in hardware.HARDWARE_TYPES:
        pytest.skip("the ipmi hardware type is not in this tree")
    env = {
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": '["ipmi", "fake-hardware"]',
        "BOOTFORGE_BMC_REPORT_TIMEOUT": "3",
    }
    yield from served(tmp_path_factory.mktemp("bootforge-bmc-ipmi"), env=env)


@pytest.fixture(scope="module")
def ipmi_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """pyghmi's BMC server on a free loopback port; its port."""
    log = tmp_path_factory.mktemp("ipmi-bmc") / "bmc.log"
    proc, ports = start_ipmi_bmc("admin", PASSWORD, "--machine", "memory", "--port", "0", log=log)
    try:
        yield ports[0]
    finally:
        stop_process(proc)


def test_an_ipmi_bmc_that_answers(ipmi_server: Served, ipmi_bmc: int) -> None:
    info = {"ipmi_address": "127.0.0.1", "ipmi_port": str(ipmi_bmc), "ipmi_username": "admin"}
    create(ipmi_server, "ipmi-ok", "ipmi", {**info, "ipmi_password": PASSWORD})
    p = bootforge(ipmi_server, "node", "bmc", "ipmi-ok")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"BMC answers: IPMI 2.0 at 127.0.0.1:{ipmi_bmc}" in p.stdout
    assert "power off" in p.stdout
    assert PASSWORD not in p.stdout + p.stderr


def test_wrong_ipmi_password_exits_non_zero(ipmi_server: Served, ipmi_bmc: int) -> None:
    info = {"ipmi_address": "127.0.0.1", "ipmi_port": str(ipmi_bmc), "ipmi_username": "admin"}
    create(ipmi_server, "ipmi-badpw", "ipmi", {**info, "ipmi_password": "wrong-" + PASSWORD})
    p = bootforge(ipmi_server, "node", "bmc", "ipmi-badpw")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "BMC not usable" in p.stderr
    assert PASSWORD not in p.stdout + p.stderr


def test_an_ipmi_bmc_that_never_answers_is_bounded(ipmi_server: Served) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:  # takes packets, answers none
        hole.bind(("127.0.0.1", 0))
        info = {"ipmi_address": "127.0.0.1", "ipmi_port": str(hole.getsockname()[1])}
        create(ipmi_server, "ipmi-silent", "ipmi", {**info, "ipmi_password": PASSWORD})
        started = time.monotonic()
        p = bootforge(ipmi_server, "node", "bmc", "ipmi-silent")
        took = time.monotonic() - started
    assert p.returncode == 1, p.stdout + p.stderr
    assert "BMC not usable" in p.stderr
    assert took < 3 + 10  # bmc_report_timeout, plus the command's own start-up
    assert PASSWORD not in p.stdout + p.stderr
