"""Disk discovery from a fake /sys/block tree, explicit disks, and the agent modules' import rules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from bootforge.agent.common import CommandError, Context
from bootforge.agent.disks import Partition, find_disks, list_disks

AGENT = Path(__file__).resolve().parents[3] / "bootforge" / "agent"
MINE = ["disks.py", "hints.py", "erase.py", "write.py", "partitions.py"]


def attrs(directory: Path, **values: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        path = directory / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return directory


def fake_machine(root: Path) -> Context:
    """A VM with a virtio disk, a SCSI disk with one partition, and every kind of device to skip."""
    sys_root, dev = root / "root", root / "dev"
    block = sys_root / "sys" / "block"
    devices = sys_root / "sys" / "devices"
    virtio = attrs(devices / "pci0000:00" / "virtio1")
    scsi = attrs(devices / "host0" / "target0:0:0" / "0:0:0:0", model="QEMU HARDDISK   ", vendor="ATA     ")
    attrs(scsi, wwid="t10.ATA     QEMU HARDDISK                           QM00001", serial="QM00001")
    attrs(block / "vda", size="41943040", serial="bf-root-disk", queue__rotational="0")
    (block / "vda" / "device").symlink_to(virtio)
    attrs(block / "sda", size="2097152", queue__rotational="1")
    (block / "sda" / "device").symlink_to(scsi)
    attrs(block / "sda" / "sda1", partition="1", start="2048", size="4096")
    for skipped in ("loop0", "ram0", "zram0", "dm-0", "md127", "sr0", "fd0", "nbd0"):
        attrs(block / skipped, size="1024")
    attrs(block / "nvme0n1", size="0")  # an empty device: size 0 is no disk
    (dev / "disk" / "by-path").mkdir(parents=True)
    (dev / "disk" / "by-path" / "pci-0000:00:04.0").symlink_to("../../vda")
    return Context(sys_root=sys_root, dev_dir=dev)


def test_discovery_reads_sysfs_and_skips_virtual_devices(tmp_path: Path) -> None:
    ctx = fake_machine(tmp_path)
    disks = list_disks(ctx)
    assert [d.to_inventory() for d in disks] == [
        {
            "name": "/dev/sda",
            "size": 2097152 * 512,
            "model": "QEMU HARDDISK",
            "vendor": "ATA",
            "serial": "QM00001",
            "wwn": "t10.ATA     QEMU HARDDISK                           QM00001",
            "rotational": True,
            "hctl": "0:0:0:0",
            "by_path": None,
        },
        {
            "name": "/dev/vda",
            "size": 20 * (1 << 30),
            "model": None,
            "vendor": None,
            "serial": "bf-root-disk",
            "wwn": None,
            "rotational": False,
            "hctl": None,
            "by_path": "/dev/disk/by-path/pci-0000:00:04.0",
        },
    ]
    assert disks[0].path == ctx.dev_dir / "sda"
    assert disks[0].partitions == (Partition(ctx.dev_dir / "sda1", 2048 * 512, 4096 * 512),)


def test_find_disks_by_name(tmp_path: Path) -> None:
    ctx = fake_machine(tmp_path)
    assert [d.name for d in find_disks(ctx, ["/dev/vda"])] == ["/dev/vda"]
    assert [d.name for d in find_disks(ctx, None)] == ["/dev/sda", "/dev/vda"]
    with pytest.raises(
        CommandError, match=r"unknown disk /dev/vdz \(disks on this machine: /dev/sda, /dev/vda\)"
    ):
        find_disks(ctx, ["/dev/vdz"])


def test_no_sysfs_means_no_disks(tmp_path: Path) -> None:
    assert list_disks(Context(sys_root=tmp_path, dev_dir=tmp_path)) == []


def test_explicit_disks_are_files(tmp_path: Path) -> None:
    b, a = tmp_path / "b.img", tmp_path / "a.img"
    b.write_bytes(b"x" * 4096)
    with open(a, "wb") as f:
        f.truncate(1 << 30)
    disks = list_disks(Context(disks=[b, a]))
    assert [(d.name, d.size, d.model, d.path) for d in disks] == [
        (str(a), 1 << 30, "file", a),
        (str(b), 4096, "file", b),
    ]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_explicit_disk_that_cannot_be_used(tmp_path: Path, kind: str) -> None:
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    with pytest.raises(CommandError, match=str(path)):
        list_disks(Context(disks=[path]))


@pytest.mark.parametrize("module", MINE)
def test_disk_modules_use_the_standard_library_and_relative_imports(module: str) -> None:
    """The ramdisk ships the package as top-level `bootforge_agent` with no third-party packages."""
    tree = ast.parse((AGENT / module).read_text())
    absolute: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            absolute.add(node.module.split(".")[0])
    assert absolute - {"__future__"} <= sys.stdlib_module_names, absolute - sys.stdlib_module_names
