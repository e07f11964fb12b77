"""The agent's flows boot through the node's boot interface, never by picking a boot device themselves."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from bootforge.config import Settings
from bootforge.drivers import agent, base
from bootforge.drivers.base import updated_internal
from bootforge.errors import DriverError


class Calls(list[str]):
    pass


class RecordingBoot(base.BootInterface):
    """A boot interface like virtual media: it boots the ramdisk its own way."""

    name = "recording"

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def validate(self, task: base.Task) -> None:
        return None

    async def prepare_ramdisk(self, task: base.Task) -> None:
        self.calls.append("boot.prepare_ramdisk")

    async def clean_up_ramdisk(self, task: base.Task) -> None:
        self.calls.append("boot.clean_up_ramdisk")

    async def prepare_instance(self, task: base.Task) -> None:
        self.calls.append("boot.prepare_instance")


class RecordingPower:
    def __init__(self, calls: Calls, state: str) -> None:
        self.calls = calls
        self.state = state

    async def get_power_state(self, task: Any) -> str:
        return self.state

    async def set_power_state(self, task: Any, state: str, timeout: float | None = None) -> None:
        self.calls.append(f"power {state}")
        self.state = state

    async def reboot(self, task: Any, timeout: float | None = None) -> None:
        self.calls.append("power reboot")


class RecordingManagement:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def set_boot_device(self, task: Any, device: str, persistent: bool = False) -> None:
        self.calls.append(f"management {device} persistent={persistent}")


class FakeTask:
    def __init__(
        self, boot: base.BootInterface | None, power_state: str, boots: list[base.NetworkBoot]
    ) -> None:
        self.calls = Calls()
        self.node = SimpleNamespace(driver_internal_info={}, power_state=power_state)
        self.driver = SimpleNamespace(
            boot=boot or RecordingBoot(self.calls),
            power=RecordingPower(self.calls, power_state),
            management=RecordingManagement(self.calls),
            storage=base.NoopStorage(),
        )
        if boot is None:
            self.driver.boot.calls = self.calls
        self.settings = Settings(agent={"handoff_window": 0, "fast_track": False})
        self.boots = boots
        self.events: list[str] = []

    def set_internal(self, **values: Any) -> None:
        self.node.driver_internal_info = updated_internal(self.node.driver_internal_info, values)

    async def agent_last_seen(self) -> dt.datetime | None:
        return None

    async def network_boots_since(self, since: dt.datetime) -> list[base.NetworkBoot]:
        return [b for b in self.boots if b.at >= since]

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append(message)

    async def save(self) -> None:
        return None


async def test_the_ramdisk_boots_through_the_boot_interface() -> None:
    task = FakeTask(None, base.POWER_OFF, [])
    await agent.boot_ramdisk(task, "deployment")  # type: ignore[arg-type]
    # No boot device chosen by the flow: the boot interface decides (here: none at all).
    assert task.calls == ["boot.prepare_ramdisk", "power power on"]
    assert task.node.driver_internal_info[agent.AGENT_BOOT]
    assert "deployment: booting (recording) the bootforge ramdisk" in task.events

    task = FakeTask(None, base.POWER_ON, [])
    await agent.boot_ramdisk(task, "cleaning")  # type: ignore[arg-type]
    assert task.calls == ["boot.prepare_ramdisk", "power reboot"]


async def test_pxe_boot_sets_the_network_once_and_the_disk_for_good() -> None:
    settings = Settings()
    task = FakeTask(agent.PxeBoot(settings), base.POWER_OFF, [])
    await agent.boot_ramdisk(task, "inspection")  # type: ignore[arg-type]
    assert task.calls == ["management pxe persistent=False", "power power on"]
    assert "inspection: network-booting the bootforge ramdisk" in task.events


async def test_leaving_the_ramdisk_cleans_it_up_after_power_off() -> None:
    task = FakeTask(None, base.POWER_ON, [])
    await agent.leave_ramdisk(task, "inspection done")  # type: ignore[arg-type]
    assert task.calls == ["power power off", "boot.clean_up_ramdisk"]


async def test_boot_instance_ejects_the_ramdisk_then_hands_over_to_the_disk() -> None:
    task = FakeTask(None, base.POWER_ON, [])
    deploy = agent.AgentDeploy(task.settings)
    assert await deploy.boot_instance(task) is None  # type: ignore[arg-type]
    assert task.calls == [
        "boot.clean_up_ramdisk",
        "boot.prepare_instance",
        "power power off",
        "power power on",
    ]
    assert any(e.startswith("handoff seen") for e in task.events)


async def test_a_network_boot_after_the_hand_over_fails_the_deploy() -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    boot = base.NetworkBoot(future, "dhcp", "dhcp.ack 52:54:00:00:00:01: pxe BIOS boot=undionly.kpxe")
    task = FakeTask(None, base.POWER_ON, [boot])
    with pytest.raises(DriverError, match=r"network-booted again .*boot=undionly\.kpxe"):
        await agent.AgentDeploy(task.settings).boot_instance(task)  # type: ignore[arg-type]


async def test_tear_down_ejects_what_a_failed_deploy_left_inserted() -> None:
    task = FakeTask(None, base.POWER_ON, [])
    task.set_internal(**{agent.AGENT_BOOT: "b", agent.DEPLOY_IMAGE: {"url": "x"}})
    await agent.AgentDeploy(task.settings).tear_down(task)  # type: ignore[arg-type]
    assert task.calls == ["boot.clean_up_ramdisk"]
    assert task.node.driver_internal_info == {}
