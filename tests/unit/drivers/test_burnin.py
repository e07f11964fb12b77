"""Burn-in clean steps, the conductor's side: arguments and settings, automated priorities, the command the
agent gets, and how a result is kept on the node and judged against the thresholds (results built by the
agent's own parsers from the real outputs in tests/data/burnin/)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bootforge.agent import burnin as agent_burnin
from bootforge.config import Settings
from bootforge.drivers import agent, base, burnin
from bootforge.drivers.burnin_settings import BurninSettings, check_args
from bootforge.errors import DriverError, InvalidInput

DATA = Path(__file__).resolve().parents[2] / "data" / "burnin"


class FakeTask:
    def __init__(self, settings: Settings | None = None) -> None:
        self.calls: list[str] = []
        self.node = SimpleNamespace(driver_internal_info={}, power_state=base.POWER_OFF)
        calls = self.calls

        class Power:
            async def get_power_state(self, task: Any) -> str:
                return base.POWER_OFF

            async def set_power_state(self, task: Any, state: str, timeout: float | None = None) -> None:
                calls.append(f"power {state}")

        class Boot:
            name = "recording"
            netboot = True

            async def prepare_ramdisk(self, task: Any) -> None:
                calls.append("prepare_ramdisk")

        self.driver = SimpleNamespace(power=Power(), boot=Boot())
        self.settings = settings or Settings()
        self.events: list[tuple[str, str, str]] = []

    def set_internal(self, **values: Any) -> None:
        self.node.driver_internal_info = base.updated_internal(self.node.driver_internal_info, values)

    async def agent_last_seen(self) -> dt.datetime | None:
        return None

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append((event_type, message, severity))

    async def save(self) -> None:
        return None


def test_arguments_split_into_what_the_agent_measures_and_the_thresholds() -> None:
    measure, thresholds = check_args("disk", {"seconds": 5, "min_iops": 5000, "max_p99_latency_ms": 2.5}, "x")
    assert measure == {"seconds": 5}
    assert thresholds == {"min_iops": 5000.0, "max_p99_latency_ms": 2.5}


@pytest.mark.parametrize(
    ("kind", "args", "field", "text"),
    [
        ("cpu", {"secs": 5}, "clean_steps burnin_cpu.args", "burn-in cpu has no argument secs"),
        ("cpu", {"seconds": 0}, "clean_steps burnin_cpu.args.seconds", "must be an integer from 1"),
        ("cpu", {"seconds": True}, "clean_steps burnin_cpu.args.seconds", "must be an integer"),
        ("disk", {"min_iops": "many"}, "clean_steps burnin_disk.args.min_iops", "must be a number"),
        ("disk", {"jobs": ["seqread_1m", "trim"]}, "clean_steps burnin_disk.args.jobs", "non-empty list"),
        ("cpu", {"method": "rm -rf"}, "clean_steps burnin_cpu.args.method", "is not a valid name"),
        ("network", {"seconds": 3}, "clean_steps burnin_network.args", "server is required"),
    ],
)
def test_bad_arguments_name_their_field(kind: str, args: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_args(kind, args, f"clean_steps burnin_{kind}.args")
    assert err.value.field == field
    assert text in err.value.message


def test_settings_defaults_are_checked_when_loaded() -> None:
    s = BurninSettings(automated_clean=["cpu", "disk"], disk={"seconds": 10, "min_iops": 100})
    assert s.defaults("disk") == {"seconds": 10, "min_iops": 100}
    with pytest.raises(ValueError, match=r"burnin.disk.seconds must be an integer"):
        BurninSettings(disk={"seconds": "long"})
    with pytest.raises(ValueError, match=r"burnin.network.server must name the server"):
        BurninSettings(automated_clean=["network"])
    with pytest.raises(ValueError):
        BurninSettings(automated_clean=["gpu"])  # type: ignore[list-item]


def test_burn_in_steps_are_manual_unless_the_settings_make_them_automated() -> None:
    manual = burnin.BurninAgentDeploy(Settings())
    steps = {s.name: s for s in manual.steps("clean")}
    assert {n: steps[n].priority for n in burnin.STEP_KIND} == dict.fromkeys(burnin.STEP_KIND, 0)
    assert steps["erase_devices_metadata"].priority == 99
    assert all(steps[n].may_rerun and steps[n].abortable for n in burnin.STEP_KIND)
    assert steps["burnin_disk"].argsinfo["min_iops"]["required"] is False
    assert steps["burnin_network"].argsinfo["server"]["required"] is True

    auto = burnin.BurninAgentDeploy(Settings(burnin={"automated_clean": ["cpu", "disk"]}))
    prio = {s.name: s.priority for s in auto.steps("clean")}
    # Before the metadata erase, which wipes what the disk burn-in wrote.
    assert prio["burnin_cpu"] > prio["burnin_disk"] > prio["erase_devices_metadata"]
    assert prio["burnin_memory"] == 0 and prio["burnin_network"] == 0
    # The class's own step table is untouched by one instance's settings.
    assert {s.name: s.priority for s in manual.steps("clean")}["burnin_cpu"] == 0


async def test_the_step_boots_the_ramdisk_and_queues_the_measurement_with_its_thresholds() -> None:
    task = FakeTask(Settings(burnin={"disk": {"seconds": 20, "min_iops": 100}}))
    deploy = burnin.BurninAgentDeploy(task.settings)
    result = await deploy.execute_step(task, "burnin_disk", {"size_mib": 64, "min_iops": 5000})  # type: ignore[arg-type]
    assert result == base.WAIT
    assert task.calls == ["prepare_ramdisk", "power power on"]
    command = task.node.driver_internal_info[agent.AGENT_COMMAND]
    assert command["name"] == "burnin"
    # The step's own arguments override the settings' defaults.
    assert command["args"] == {
        "kind": "disk",
        "seconds": 20,
        "size_mib": 64,
        "thresholds": {"min_iops": 5000.0},
    }
    assert any("burn in the disks (fio, 20 s per job)" in e[1] for e in task.events)


async def test_a_bad_argument_fails_before_the_machine_is_touched() -> None:
    task = FakeTask()
    deploy = burnin.BurninAgentDeploy(task.settings)
    with pytest.raises(InvalidInput, match="must be an integer"):
        await deploy.execute_step(task, "burnin_cpu", {"seconds": "forever"})  # type: ignore[arg-type]
    assert task.calls == []


def fio_result() -> dict[str, Any]:
    parsed = agent_burnin.parse_fio((DATA / "fio-3.33-host-file.json").read_text())
    return {"kind": "disk", "seconds": 12.0, "disks": [{"name": "/dev/vda", "size_mib": 256, **parsed}]}


async def test_a_passing_disk_burn_in_is_kept_on_the_node_and_its_timeline() -> None:
    task = FakeTask()
    args = {"kind": "disk", "thresholds": {"min_iops": 5000, "max_p99_latency_ms": 50}}
    await burnin.take_result(task, args, fio_result())  # type: ignore[arg-type]
    kept = task.node.driver_internal_info["burnin"]["disk"]
    assert kept["passed"] is True and kept["failures"] == []
    assert kept["thresholds"] == {"min_iops": 5000.0, "max_p99_latency_ms": 50.0}
    jobs = {j["job"]: j for j in kept["disks"][0]["jobs"]}
    assert jobs["randread_4k"]["iops"] == 114047.3 and jobs["randread_4k"]["lat_p99_ms"] == 0.659
    json.dumps(task.node.driver_internal_info)  # stays JSON for the node's column
    ((kind, text, severity),) = task.events
    assert (kind, severity) == ("burnin", "info")
    assert "/dev/vda randread_4k 114047 IOPS 445.5 MiB/s, p50 0.247 / p99 0.659 ms" in text
    assert text.endswith("; passed")


async def test_a_missed_threshold_fails_the_node_with_the_numbers() -> None:
    task = FakeTask()
    args = {"kind": "disk", "thresholds": {"min_iops": 500000, "min_bandwidth_mib_s": 1}}
    with pytest.raises(DriverError) as err:
        await burnin.take_result(task, args, fio_result())  # type: ignore[arg-type]
    assert err.value.message == (
        "burn-in disk failed: fio randread_4k on /dev/vda: 114047 IOPS < min_iops 500000; "
        "fio randwrite_4k on /dev/vda: 55966 IOPS < min_iops 500000"
    )
    kept = task.node.driver_internal_info["burnin"]["disk"]
    assert kept["passed"] is False and len(kept["failures"]) == 2
    assert task.events[-1][2] == "error"


async def test_cpu_and_memory_verdicts() -> None:
    task = FakeTask()
    cpu = agent_burnin.parse_stress_ng((DATA / "stress-ng-0.15.06-cpu.yaml").read_text())
    result = {
        "kind": "cpu",
        "seconds": 3.1,
        "cpu": {**cpu, "cpus": 1, "method": "matrixprod", "duration_s": 3},
    }
    await burnin.take_result(task, {"kind": "cpu", "thresholds": {"min_bogo_ops_per_s": 1000}}, result)  # type: ignore[arg-type]
    with pytest.raises(DriverError, match=r"stress-ng cpu: 2640.7 bogo-ops/s < min_bogo_ops_per_s 5000$"):
        await burnin.take_result(task, {"kind": "cpu", "thresholds": {"min_bogo_ops_per_s": 5000}}, result)  # type: ignore[arg-type]

    text = (DATA / "memtester-4.6.0-ok.txt").read_text()
    mem = agent_burnin.parse_memtester(text)
    ok = {"kind": "memory", "seconds": 1.1, "memory": {**mem, "loops": 1}}
    await burnin.take_result(task, {"kind": "memory", "thresholds": {}}, ok)  # type: ignore[arg-type]
    assert task.node.driver_internal_info["burnin"]["memory"]["tests"] == 18
    bad = agent_burnin.parse_memtester(
        text.replace("  Bit Flip            :", "  Bit Flip            : FAILURE: x\n#", 1)
    )
    with pytest.raises(DriverError, match="memtester: 1 of 18 tests failed over 8 MiB: Bit Flip"):
        await burnin.take_result(task, {"kind": "memory"}, {"kind": "memory", "memory": {**bad, "loops": 1}})  # type: ignore[arg-type]
    reduced = agent_burnin.parse_memtester((DATA / "memtester-4.6.0-reduced.txt").read_text())
    with pytest.raises(DriverError, match="memtester could lock 192 MiB < min_tested_mib 400"):
        await burnin.take_result(  # type: ignore[arg-type]
            task,
            {"kind": "memory", "thresholds": {"min_tested_mib": 400}},
            {"kind": "memory", "memory": reduced},
        )
    # Both kinds stay on the node, each with its last run.
    assert set(task.node.driver_internal_info["burnin"]) == {"cpu", "memory"}


async def test_network_verdict_from_iperf3() -> None:
    task = FakeTask()
    net = agent_burnin.parse_iperf3((DATA / "iperf3-3.12-loopback.json").read_text())
    result = {"kind": "network", "network": {**net, "server": "10.0.0.1", "port": 5201}}
    with pytest.raises(DriverError, match=r"iperf3 to 10.0.0.1: 21811.4 Mbit/s < min_bandwidth_mbps 100000"):
        await burnin.take_result(task, {"kind": "network", "thresholds": {"min_bandwidth_mbps": 1e5}}, result)  # type: ignore[arg-type]


async def test_what_the_agent_sends_is_checked_and_bounded() -> None:
    task = FakeTask()
    with pytest.raises(InvalidInput, match="not for disk"):
        await burnin.take_result(task, {"kind": "disk"}, {"kind": "cpu"})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"result.disks\[0\].jobs\[0\].iops"):
        bad = {"kind": "disk", "disks": [{"name": "vda", "jobs": [{"job": "x", "iops": "lots"}]}]}
        await burnin.take_result(task, {"kind": "disk"}, bad)  # type: ignore[arg-type]
    job = {
        "job": "randread_4k\x1b[2J",
        "rw": "read",
        "iops": 1.0,
        "bandwidth_mib_s": 1.0,
        "extra": "x" * 10**5,
    }
    many = {"kind": "disk", "disks": [{"name": "d" * 1000, "jobs": [job] * 50}] * 100}
    await burnin.take_result(task, {"kind": "disk"}, many)  # type: ignore[arg-type]
    kept = task.node.driver_internal_info["burnin"]["disk"]
    assert len(kept["disks"]) == burnin.MAX_DISKS and len(kept["disks"][0]["jobs"]) == burnin.MAX_JOBS
    assert "\x1b" not in json.dumps(kept) and len(json.dumps(kept)) < 200_000
