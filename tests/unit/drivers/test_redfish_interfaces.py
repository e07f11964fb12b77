"""RedfishPower and RedfishManagement over recorded services: what a node's task sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from test_redfish_client import ADDRESS, PASSWORD, USER, FakeBmc, error, fresh_auth_memory

from bootforge.config import Settings
from bootforge.drivers import base
from bootforge.drivers.base import updated_internal
from bootforge.drivers.hardware import Drivers
from bootforge.drivers.redfish import RedfishClient, RedfishManagement, RedfishPower
from bootforge.drivers.redfish.info import RedfishInfo
from bootforge.errors import InvalidInput

__all__ = ["fresh_auth_memory"]  # the autouse fixture, imported to apply here too

DRIVER_INFO = {"redfish_address": ADDRESS, "redfish_username": USER, "redfish_password": PASSWORD}


@dataclass
class Task:
    driver_info: dict[str, Any] = field(default_factory=lambda: dict(DRIVER_INFO))
    driver_internal_info: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    @property
    def node(self) -> Any:
        return self

    def set_internal(self, **values: Any) -> None:
        self.driver_internal_info = updated_internal(self.driver_internal_info, values)

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append(message)


def interfaces(bmc: FakeBmc) -> tuple[RedfishPower, RedfishManagement]:
    def factory(info: RedfishInfo) -> RedfishClient:
        return RedfishClient(info, transport=bmc.transport(), poll_interval=0.01)

    return RedfishPower(5.0, factory), RedfishManagement(5.0, factory)


def test_the_redfish_hardware_type_names_power_and_management_only() -> None:
    drivers = Drivers(Settings(enabled_hardware_types=["redfish"]))
    ds = drivers.for_node("redfish", {})
    assert isinstance(ds.power, RedfishPower) and isinstance(ds.management, RedfishManagement)
    assert ds.boot.name == "pxe" and ds.deploy.name == "direct"
    assert "redfish_address" in ds.power.get_properties()
    with pytest.raises(InvalidInput, match="redfish_address is required"):
        ds.power.validate(Task(driver_info={}))  # type: ignore[arg-type]


async def test_power_states_and_the_timeline_line() -> None:
    bmc = FakeBmc("lenovo-xcc")
    power, _ = interfaces(bmc)
    task: Any = Task()
    assert await power.get_power_state(task) == base.POWER_OFF
    await power.set_power_state(task, base.POWER_ON)
    assert await power.get_power_state(task) == base.POWER_ON
    await power.reboot(task)
    await power.set_power_state(task, base.SOFT_POWER_OFF)
    assert bmc.system()["PowerState"] == "Off"
    assert [e.split(" at ")[0] for e in task.events] == [
        "Redfish On",
        "Redfish ForceRestart",
        "Redfish GracefulShutdown",
    ]
    bmc.system()["PowerState"] = "PoweringOn"
    assert await power.get_power_state(task) == base.POWER_ON
    del bmc.system()["PowerState"]
    assert await power.get_power_state(task) == base.POWER_ERROR
    with pytest.raises(InvalidInput, match="does not support 'hibernate'"):
        await power.set_power_state(task, "hibernate")


async def test_boot_device_and_mode_through_management() -> None:
    bmc = FakeBmc("supermicro-x12")
    _, management = interfaces(bmc)
    task: Any = Task()
    assert await management.get_boot_device(task) == {"boot_device": None, "persistent": None}
    await management.set_boot_device(task, "cdrom", persistent=False)
    assert await management.get_boot_device(task) == {"boot_device": "cdrom", "persistent": False}  # UsbCd
    await management.set_boot_device(task, "pxe", persistent=True)
    assert await management.get_boot_device(task) == {"boot_device": "pxe", "persistent": True}
    assert await management.get_boot_mode(task) == "bios"
    await management.set_boot_mode(task, "uefi")
    assert await management.get_boot_mode(task) == "uefi"
    with pytest.raises(InvalidInput, match="does not support boot device 'safe'"):
        await management.set_boot_device(task, "safe")
    with pytest.raises(InvalidInput, match="boot mode must be one of uefi, bios"):
        await management.set_boot_mode(task, "efi")


async def test_secure_boot_and_virtual_media_through_management() -> None:
    bmc = FakeBmc("dell-idrac9")
    _, management = interfaces(bmc)
    task: Any = Task()
    assert await management.get_secure_boot_state(task) is False
    await management.set_secure_boot_state(task, True)
    assert await management.get_secure_boot_state(task) is True
    media = management.virtual_media_client(task)
    await media.insert_media("http://192.0.2.1/a.iso", kind="cd")
    assert bmc.docs["/redfish/v1/Systems/System.Embedded.1/VirtualMedia/1"]["Inserted"] is True
    await media.eject_media(kind="cd")
    assert bmc.docs["/redfish/v1/Systems/System.Embedded.1/VirtualMedia/1"]["Inserted"] is False
    assert bmc.tokens == {}  # every operation closed its session


async def test_bmc_report() -> None:
    _, management = interfaces(FakeBmc("hpe-ilo5"))
    report = await management.bmc_report(Task())  # type: ignore[arg-type]
    assert report.reachable and "quirks hpe-ilo" in report.detail and "session auth" in report.detail
    assert (report.vendor, report.model, report.firmware) == ("HPE", "ProLiant DL360 Gen10", "iLO 5 v2.78")
    assert report.boot_modes == ["uefi"]  # read-only on iLO: only the mode it is in
    assert report.virtual_media == ["usb", "floppy", "cd"] and report.secure_boot is False
    assert report.boot_devices == ["pxe", "disk", "cdrom", "bios"]
    bad = await management.bmc_report(Task(driver_info={**DRIVER_INFO, "redfish_password": "nope"}))  # type: ignore[arg-type]
    assert not bad.reachable and "HTTP 401" in bad.detail and "nope" not in bad.detail
    invalid = await management.bmc_report(Task(driver_info={}))  # type: ignore[arg-type]
    assert not invalid.reachable and "redfish_address is required" in invalid.detail


async def test_a_bmc_refusing_continuous_gets_once_again_before_each_power_on() -> None:
    def no_continuous(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if (
            request.method == "PATCH"
            and (body or {}).get("Boot", {}).get("BootSourceOverrideEnabled") == "Continuous"
        ):
            return error(
                400,
                "The value Continuous for BootSourceOverrideEnabled is not supported",
                "Base.1.8.PropertyValueNotInList",
            )
        return None

    bmc = FakeBmc("openbmc", rules=[no_continuous])
    power, management = interfaces(bmc)
    task: Any = Task()
    await management.set_boot_device(task, "disk", persistent=True)
    assert task.driver_internal_info == {"redfish_boot_device": "disk"}
    assert await management.get_boot_device(task) == {"boot_device": "disk", "persistent": True}
    assert "refused a persistent boot device" in task.events[0]
    bmc.system()["Boot"].update(
        BootSourceOverrideEnabled="Disabled", BootSourceOverrideTarget="None"
    )  # booted once
    await power.set_power_state(task, base.POWER_ON)
    boot = bmc.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Hdd", "Once")
    await management.set_boot_device(task, "pxe", persistent=False)  # a new choice replaces it
    assert task.driver_internal_info == {}
