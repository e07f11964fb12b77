"""qemu driver_info parsing, validate() errors, power-state mapping and the hardware-type registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bootforge.config import Settings
from bootforge.drivers import base, qemu
from bootforge.drivers.hardware import Drivers
from bootforge.errors import InvalidInput


class FakeNode:
    def __init__(self, driver_info: dict[str, Any]) -> None:
        self.driver_info = driver_info
        self.driver_internal_info: dict[str, Any] = {}


class FakeTask:
    def __init__(self, driver_info: dict[str, Any]) -> None:
        self.node = FakeNode(driver_info)
        self.ports: list[Any] = []

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        return None

    async def save(self) -> None:
        return None


SOCK = "/run/vms/n1.qmp"


@pytest.mark.parametrize(
    ("info", "key"),
    [
        ({}, "qemu_qmp_socket"),
        ({"qemu_qmp_socket": ""}, "qemu_qmp_socket"),
        ({"qemu_qmp_socket": 5}, "qemu_qmp_socket"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": "[not json"}, "qemu_command"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": []}, "qemu_command"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": ["qemu", 3]}, "qemu_command"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": ["qemu", "-nographic"]}, "qemu_command"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": '["qemu", "-qmp", "stdio"]'}, "qemu_command"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": "/vm.json", "qemu_boot_mode": "efi"}, "qemu_boot_mode"),
        ({"qemu_qmp_socket": SOCK, "qemu_boot_mode": "uefi"}, "qemu_boot_mode"),
        ({"qemu_qmp_socket": SOCK, "qemu_command": ["qemu"], "qemu_boot_mode": "uefi"}, "qemu_boot_mode"),
        ({"qemu_qmp_socket": SOCK, "qemu_pid_file": ""}, "qemu_pid_file"),
    ],
)
def test_validate_names_the_bad_driver_info_key(info: dict[str, Any], key: str) -> None:
    for iface in (qemu.QemuPower(), qemu.QemuManagement()):
        with pytest.raises(InvalidInput) as e:
            iface.validate(FakeTask(info))
        assert key in e.value.message
        assert e.value.field == "driver_info"


def test_external_vm_has_no_pid_file_and_is_not_owned() -> None:
    info = qemu.parse_driver_info({"qemu_qmp_socket": SOCK})
    assert info == qemu.QemuInfo(Path(SOCK))
    assert not info.owned


def test_command_as_json_text_or_list_or_definition_path() -> None:
    argv = ["qemu-system-x86_64", "-m", "256"]
    for command in (argv, json.dumps(argv)):
        info = qemu.parse_driver_info({"qemu_qmp_socket": SOCK, "qemu_command": command})
        assert info.argv == argv and info.definition is None and info.owned
        assert info.pid_file == Path(SOCK + ".pid")  # bootforge starts it, so it needs the pid
    info = qemu.parse_driver_info(
        {"qemu_qmp_socket": SOCK, "qemu_command": "/vms/n1.json", "qemu_boot_mode": "uefi"}
    )
    assert info.definition == Path("/vms/n1.json") and info.argv is None
    assert info.boot_mode == "uefi"


def test_explicit_pid_file_wins() -> None:
    info = qemu.parse_driver_info({"qemu_qmp_socket": SOCK, "qemu_command": "/v.json", "qemu_pid_file": "/p"})
    assert info.pid_file == Path("/p")


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("running", base.POWER_ON),
        ("suspended", base.POWER_ON),
        ("paused", base.POWER_OFF),
        ("shutdown", base.POWER_OFF),
        ("prelaunch", base.POWER_OFF),
        ("internal-error", base.POWER_OFF),
        ("guest-panicked", base.POWER_OFF),
        (None, base.POWER_OFF),
    ],
)
def test_power_state_from_query_status(status: str | None, state: str) -> None:
    assert qemu.power_state_from_status(status) == state


def test_properties_document_every_key() -> None:
    props = qemu.QemuPower().get_properties()
    assert set(props) == {"qemu_qmp_socket", "qemu_command", "qemu_pid_file", "qemu_boot_mode"}
    assert "Required" in props["qemu_qmp_socket"]
    assert qemu.QemuManagement().get_properties() == props


def test_qemu_hardware_type_is_registered_with_real_power_and_management() -> None:
    settings = Settings(enabled_hardware_types=["qemu"], power_state_change_timeout=42)
    ds = Drivers(settings).for_node("qemu", {})
    assert isinstance(ds.power, qemu.QemuPower) and ds.power.soft_timeout == 42
    assert isinstance(ds.management, qemu.QemuManagement)
    assert ds.boot.name == "pxe" and ds.deploy.name == "direct"
