"""The pxe boot interface checks the ramdisk of the node's CPU architecture (#12): an aarch64 node
needs bootforge/arm64/{vmlinuz,initrd} and is told to build it with --arch arm64; a node whose
architecture is not known yet (before its first DHCP or inspection) passes with either build."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bootforge.config import Settings
from bootforge.drivers.agent import PxeBoot
from bootforge.errors import InvalidInput


def task(properties: dict[str, Any], driver_info: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(node=SimpleNamespace(properties=properties, driver_info=driver_info or {}))


def build(root: Path, sub: str) -> None:
    (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initrd"):
        (root / sub / name).write_bytes(b"x")


def test_the_nodes_architecture_picks_the_ramdisk_checked(tmp_path: Path) -> None:
    boot = PxeBoot(Settings.model_validate({"state_dir": tmp_path}))
    root = tmp_path / "boot"
    build(root, "bootforge")  # the x86_64 build only
    boot.validate(task({"cpu_arch": "x86_64"}))
    boot.validate(task({}))  # unknown yet: the x86_64 build will do
    with pytest.raises(InvalidInput) as e:
        boot.validate(task({"cpu_arch": "aarch64"}))
    assert "bootforge/arm64/vmlinuz does not exist" in str(e.value)
    assert (
        "bootforge ramdisk build --arch arm64" in str(e.value)
        and e.value.field == "driver_info.deploy_kernel"
    )
    build(root, "bootforge/arm64")
    boot.validate(task({"cpu_arch": "aarch64"}))
    # The node's own files (driver_info) are checked as they are, whatever its architecture.
    with pytest.raises(InvalidInput, match="mine/k does not exist"):
        boot.validate(task({"cpu_arch": "aarch64"}, {"deploy_kernel": "mine/k"}))


def test_an_arm64_only_conductor_accepts_nodes_of_unknown_architecture(tmp_path: Path) -> None:
    boot = PxeBoot(Settings.model_validate({"state_dir": tmp_path}))
    build(tmp_path / "boot", "bootforge/arm64")
    boot.validate(task({}))
    with pytest.raises(InvalidInput, match=r"build it with `bootforge ramdisk build`$"):
        boot.validate(task({"cpu_arch": "x86_64"}))
