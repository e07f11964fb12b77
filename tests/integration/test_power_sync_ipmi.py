"""Power sync through the real `ipmi` driver, against pyghmi's BMC server on loopback.

A BMC that stops answering (its process gone, its UDP port taken by a socket that swallows every
packet) costs its node three failed reads and maintenance, while the other node keeps being read;
once a BMC answers on that port again, the next round lifts the maintenance. ipmitool, a client
bootforge did not write, changes a machine's power behind bootforge's back.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.processes import start_ipmi_bmc, stop_process
from support.service import InProcess, in_process

from bootforge.conductor import states
from bootforge.conductor.conductor import POWER_FAILURE, PowerSyncRound
from bootforge.drivers import hardware

pytestmark = pytest.mark.slow  # 20-40 s: silent reads wait out their timeouts

PASSWORD = "sync-secret"
TIMEOUT = 2.0


class Bmc:
    """One `bootforge.lab.ipmi_bmc --machine memory` process on 127.0.0.1."""

    def __init__(self, log: Path, port: int = 0) -> None:
        args = ("--machine", "memory", "--port", str(port))
        self.proc, (self.port,) = start_ipmi_bmc("admin", PASSWORD, *args, log=log)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def bmcs(tmp_path: Path) -> Iterator[list[Bmc]]:
    started: list[Bmc] = []
    yield started
    for b in started:
        b.stop()


@pytest.fixture
async def bf(tmp_path: Path) -> AsyncIterator[InProcess]:
    if "ipmi" not in hardware.HARDWARE_TYPES:
        pytest.skip("the ipmi hardware type is not in this tree")
    async for x in in_process(
        tmp_path, enabled_hardware_types=["ipmi"], power_sync_timeout=TIMEOUT, power_sync_workers=4
    ):
        yield x


async def enrol(bf: InProcess, name: str, port: int) -> None:
    info = {
        "ipmi_address": "127.0.0.1",
        "ipmi_port": port,
        "ipmi_username": "admin",
        "ipmi_password": PASSWORD,
    }
    r = await bf.client.post("/v1/nodes", json={"driver": "ipmi", "name": name, "driver_info": info})
    assert r.status_code == 201, r.text
    r = await bf.client.put(f"/v1/nodes/{name}/states/provision", json={"target": "manage"})
    assert r.status_code == 202, r.text
    await bf.conductor.wait_idle()
    assert (await node(bf, name))["provision_state"] == states.MANAGEABLE


async def node(bf: InProcess, name: str) -> dict[str, Any]:
    r = await bf.client.get(f"/v1/nodes/{name}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def sync(bf: InProcess) -> PowerSyncRound:
    async with asyncio.timeout(60):
        result: PowerSyncRound = await bf.conductor.sync_power_states()
    return result


async def test_a_silent_bmc_goes_to_maintenance_and_comes_back(
    bf: InProcess, bmcs: list[Bmc], tmp_path: Path
) -> None:
    steady = await asyncio.to_thread(Bmc, tmp_path / "steady.log")
    flaky = await asyncio.to_thread(Bmc, tmp_path / "flaky.log")
    bmcs += [steady, flaky]
    await enrol(bf, "steady", steady.port)
    await enrol(bf, "flaky", flaky.port)
    assert (await node(bf, "steady"))["power_state"] == "power off"

    if shutil.which("ipmitool"):
        argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(steady.port), "-U", "admin", "-E"]
        await asyncio.to_thread(
            subprocess.run,
            [*argv, "chassis", "power", "on"],
            env={"IPMI_PASSWORD": PASSWORD},
            check=True,
            timeout=30,
        )
        result = await sync(bf)
        assert result.changed == 1
        assert (await node(bf, "steady"))["power_state"] == "power on"

    # The flaky BMC stops answering: its process goes, its port swallows what is sent to it.
    await asyncio.to_thread(flaky.stop)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", flaky.port))
        for round_ in range(3):
            result = await sync(bf)
            assert result.failed == 1 and len(result.latencies) == 1, result.summary()
            # One silent BMC costs its own read, bounded by the timeout, and nothing else.
            assert result.seconds < TIMEOUT + 3, result.summary()
            assert (await node(bf, "flaky"))["maintenance"] is (round_ == 2)
    n = await node(bf, "flaky")
    assert n["fault"] == POWER_FAILURE
    assert n["maintenance_reason"].startswith("power state could not be read 3 times in a row: ")
    assert PASSWORD not in n["maintenance_reason"]
    assert (await node(bf, "steady"))["maintenance"] is False

    # A BMC answers on that port again: the next good read lifts the maintenance. (The driver finds
    # out within a second that the new BMC does not know the old session, and logs in again.)
    bmcs.append(await asyncio.to_thread(Bmc, tmp_path / "flaky-again.log", flaky.port))
    deadline = asyncio.get_running_loop().time() + 60
    while not (await sync(bf)).lifted:
        assert asyncio.get_running_loop().time() < deadline, "the BMC answering again was not noticed in 60 s"
    n = await node(bf, "flaky")
    assert (n["maintenance"], n["fault"], n["maintenance_reason"]) == (False, None, None)
    r = await bf.client.get("/v1/nodes/flaky/history")
    texts = [e["event"] for e in r.json()["history"]]
    assert any(t.startswith("maintenance set: power state could not be read 3 times") for t in texts)
    assert "maintenance unset: the BMC answers again (power off)" in texts
