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
    def __init__(self, settings: Settings | None = None, others: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.node = SimpleNamespace(
            id=1, uuid="11111111-1111-4111-8111-111111111111", name="b", provision_state="cleaning",
            driver_internal_info={}, power_state=base.POWER_OFF,
        )  # fmt: skip
        # The database as the step reads it: other nodes by name or UUID, and this agent's address.
        self.others: dict[str, Any] = {"b": self.node, self.node.uuid: self.node, **(others or {})}
        self.address: str | None = None
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

    async def agent_address(self) -> str | None:
        return self.address

    async def other_node(self, ident: str) -> Any:
        return self.others.get(ident)

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
        (
            "network",
            {"server": "10.0.0.5", "partner": "a"},
            "clean_steps burnin_network.args.partner",
            "not both",
        ),
        (
            "network",
            {"server": "10.0.0.5", "partner_wait": 5},
            "clean_steps burnin_network.args.partner_wait",
            "only for partner",
        ),
        ("network", {"partner": "a b"}, "clean_steps burnin_network.args.partner", "not a valid node"),
        (
            "network",
            {"partner": "a", "partner_wait": 0},
            "clean_steps burnin_network.args.partner_wait",
            "integer from 1",
        ),
        ("network_serve", {"port": 80}, "clean_steps burnin_network_serve.args.port", "integer from 1024"),
        ("network_serve", {"server": "x"}, "clean_steps burnin_network_serve.args", "has no argument server"),
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
    # server or partner: neither alone is required.
    assert steps["burnin_network"].argsinfo["server"]["required"] is False
    assert set(steps["burnin_network_serve"].argsinfo) == {"seconds", "port"}

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


# --- two nodes' agents: serve and partner ------------------------------------------------------------

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
A_UUID = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"


class Clock:
    """The conductor's clock in these tests: each pause moves it on, and may change the world."""

    def __init__(self) -> None:
        self.at = T0
        self.sleeps = 0
        self.on_sleep: list[Any] = []

    def now(self) -> dt.datetime:
        return self.at

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.at += dt.timedelta(seconds=seconds)
        for hook in self.on_sleep:
            hook(self)


def partner_node(state: str = "clean wait", serving: dict[str, Any] | None = None) -> Any:
    info: dict[str, Any] = {"agent_boot": "boot-a", agent.AGENT_COMMAND: {"id": "serve-1", "name": "burnin"}}
    if serving is not None:
        info["burnin_serving"] = serving
    return SimpleNamespace(id=2, uuid=A_UUID, name="a", provision_state=state, driver_internal_info=info)


def serving(until: dt.datetime, address: str = "192.0.2.10", port: int = 5301) -> dict[str, Any]:
    return {
        "address": address,
        "port": port,
        "until": until.isoformat(),
        "boot": "boot-a",
        "command": "serve-1",
    }


def pair(clock: Clock, a: Any) -> tuple[FakeTask, burnin.BurninAgentDeploy]:
    task = FakeTask(others={"a": a, A_UUID: a})
    return task, burnin.BurninAgentDeploy(task.settings, now=clock.now, sleep=clock.sleep)


async def test_serve_records_the_agents_address_before_the_command_and_the_result_clears_it() -> None:
    clock = Clock()
    task = FakeTask()
    deploy = burnin.BurninAgentDeploy(task.settings, now=clock.now, sleep=clock.sleep)
    # The agent of the new ramdisk boot looks up after two polls.
    clock.on_sleep.append(lambda c: setattr(task, "address", "192.0.2.20") if c.sleeps == 2 else None)
    result = await deploy.execute_step(task, "burnin_network_serve", {"seconds": 120, "port": 5301})  # type: ignore[arg-type]
    assert result == base.WAIT and task.calls == ["prepare_ramdisk", "power power on"]
    info = task.node.driver_internal_info
    assert info["burnin_serving"] == {
        "address": "192.0.2.20",
        "port": 5301,
        "until": (T0 + dt.timedelta(seconds=4 + 120)).isoformat(timespec="seconds"),
        "boot": info["agent_boot"],
        "command": info[agent.AGENT_COMMAND]["id"],
    }
    assert info[agent.AGENT_COMMAND]["args"] == {
        "kind": "network_serve",
        "seconds": 120,
        "port": 5301,
        "bind": "192.0.2.20",
        "thresholds": {},
    }
    # The agent's result: the server side's numbers on the node and its timeline, and the record gone.
    text = (DATA / "iperf3-3.12-server-loopback.json").read_text()
    report = {**agent_burnin.parse_iperf3(text), "client": agent_burnin.iperf3_client(text)}
    served = {"kind": "network_serve", "network_serve": {**report, "bind": "192.0.2.20", "port": 5301}}
    await burnin.take_result(task, info[agent.AGENT_COMMAND]["args"], served)  # type: ignore[arg-type]
    kept = task.node.driver_internal_info["burnin"]["network_serve"]
    assert kept["passed"] and kept["client"] == "127.0.0.1" and kept["received_mbps"] == 22534.4
    assert "burnin_serving" not in task.node.driver_internal_info
    assert task.events[-1][1] == (
        "burn-in network_serve: iperf 3.12 on 192.0.2.20:5301 served 127.0.0.1: 22534.4 Mbit/s received; "
        "passed"
    )


async def test_serve_fails_when_the_agent_never_looks_up() -> None:
    clock = Clock()
    task = FakeTask(Settings(clean_callback_timeout=10))
    deploy = burnin.BurninAgentDeploy(task.settings, now=clock.now, sleep=clock.sleep)
    with pytest.raises(DriverError, match="the node's agent did not look up within 10 s"):
        await deploy.execute_step(task, "burnin_network_serve", {})  # type: ignore[arg-type]
    assert "burnin_serving" not in task.node.driver_internal_info
    assert (
        agent.AGENT_COMMAND not in task.node.driver_internal_info
        or not task.node.driver_internal_info[agent.AGENT_COMMAND]
    )


async def test_partner_that_serves_after_a_while_becomes_the_server() -> None:
    clock = Clock()
    a = partner_node("cleaning")
    task, deploy = pair(clock, a)

    def a_serves(c: Clock) -> None:
        if c.sleeps == 3:
            a.provision_state = "clean wait"
            a.driver_internal_info = {
                **a.driver_internal_info,
                "burnin_serving": serving(c.at + dt.timedelta(seconds=600)),
            }

    clock.on_sleep.append(a_serves)
    args = {"partner": A_UUID, "seconds": 5, "min_bandwidth_mbps": 100}
    assert await deploy.execute_step(task, "burnin_network", args) == base.WAIT  # type: ignore[arg-type]
    assert clock.sleeps == 3 and task.calls == ["prepare_ramdisk", "power power on"]
    command = task.node.driver_internal_info[agent.AGENT_COMMAND]["args"]
    assert command == {
        "kind": "network",
        "partner": "a",
        "seconds": 5,
        "server": "192.0.2.10",
        "port": 5301,
        "thresholds": {"min_bandwidth_mbps": 100.0},
    }
    assert any("node a serves on 192.0.2.10:5301" in e[1] for e in task.events)


async def test_a_partner_step_overrides_the_settings_default_server() -> None:
    clock = Clock()
    a = partner_node(serving=serving(T0 + dt.timedelta(seconds=600), address="2001:db8::a"))
    task = FakeTask(Settings(burnin={"network": {"server": "10.9.9.9", "seconds": 7}}), others={"a": a})
    deploy = burnin.BurninAgentDeploy(task.settings, now=clock.now, sleep=clock.sleep)
    await deploy.execute_step(task, "burnin_network", {"partner": "a"})  # type: ignore[arg-type]
    command = task.node.driver_internal_info[agent.AGENT_COMMAND]["args"]
    assert (command["server"], command["seconds"]) == ("2001:db8::a", 7)


@pytest.mark.parametrize(
    ("partner", "text"),
    [("nosuch", "there is no node nosuch"), ("b", "b is this node itself")],
)
async def test_unknown_partner_and_the_node_itself_are_refused_before_the_machine_is_touched(
    partner: str, text: str
) -> None:
    task, deploy = pair(Clock(), partner_node())
    with pytest.raises(InvalidInput, match=text) as err:
        await deploy.execute_step(task, "burnin_network", {"partner": partner})  # type: ignore[arg-type]
    assert err.value.field == "clean_steps burnin_network.args.partner"
    assert task.calls == []


async def test_a_partner_that_never_serves_fails_the_node_after_partner_wait() -> None:
    clock = Clock()
    # A record left by an earlier clean that failed is not a live server.
    stale = partner_node("clean failed", serving=serving(T0 + dt.timedelta(seconds=3600)))
    task, deploy = pair(clock, stale)
    with pytest.raises(DriverError) as err:
        await deploy.execute_step(task, "burnin_network", {"partner": "a", "partner_wait": 30})  # type: ignore[arg-type]
    assert err.value.message.startswith(
        "clean_steps burnin_network.args.partner: node a did not serve iperf3 within partner_wait 30 s"
    )
    assert clock.at - T0 == dt.timedelta(seconds=30) and clock.sleeps == 15
    assert not task.node.driver_internal_info.get(agent.AGENT_COMMAND)


@pytest.mark.parametrize("stale", [{"boot": "boot-before"}, {"command": "serve-0"}])
async def test_a_record_of_another_boot_or_command_is_not_the_partners(stale: dict[str, str]) -> None:
    clock = Clock()
    old = partner_node(serving={**serving(T0 + dt.timedelta(seconds=600)), **stale})
    task, deploy = pair(clock, old)
    with pytest.raises(DriverError, match="did not serve iperf3 within partner_wait 4 s"):
        await deploy.execute_step(task, "burnin_network", {"partner": "a", "partner_wait": 4})  # type: ignore[arg-type]


async def test_a_partner_record_too_close_to_its_end_is_expired() -> None:
    clock = Clock()
    a = partner_node(serving=serving(T0 + dt.timedelta(seconds=12)))
    task, deploy = pair(clock, a)
    with pytest.raises(DriverError, match=r"node a's iperf3 serve record expired .*too late for a 10 s test"):
        await deploy.execute_step(task, "burnin_network", {"partner": "a", "seconds": 10})  # type: ignore[arg-type]
    assert clock.sleeps == 0
