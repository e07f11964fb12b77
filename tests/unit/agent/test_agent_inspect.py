"""inspect: the inventory read from a fake /proc + /sys tree, and the parts that ask the live kernel."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bootforge.agent import __version__, inspect
from bootforge.agent.common import CommandError, Context

MIB = 1024 * 1024

CPUINFO_X86 = "".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n"
    f"cpu MHz\t\t: 2399.998\nflags\t\t: fpu vme sse2 lm\n\n"
    for i in range(3)
)
CPUINFO_ARM = (
    "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\nprocessor\t: 1\nFeatures\t: fp\n"
)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_machine(root: Path, efi: bool = True) -> Path:
    """A small virtual machine as /proc and /sys show it: 3 CPUs, 1 GiB, 2 NICs, one virtio disk."""
    write(root, "proc/cpuinfo", CPUINFO_X86)
    write(root, "proc/meminfo", "MemTotal:         985212 kB\nMemFree:          500000 kB\n")
    write(root, "proc/sys/kernel/hostname", "ramdisk\n")
    write(root, "proc/cmdline", "console=ttyS0 BOOTIF=01-52-54-00-12-34-56\n")
    nics = {
        "eth0": ("52:54:00:12:34:56", "1000", "1", "0x1003"),
        "eth1": ("52:54:00:AB:CD:EF", "-1", "0", "0x1002"),
    }
    for name, (mac, speed, carrier, flags) in nics.items():
        for attr, value in (("address", mac), ("speed", speed), ("carrier", carrier), ("flags", flags)):
            write(root, f"sys/class/net/{name}/{attr}", value + "\n")
    write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n")
    (root / "sys/bus/virtio/drivers/virtio_net").mkdir(parents=True)
    (root / "sys/class/net/eth0/device").mkdir()
    os.symlink("../../../../bus/virtio/drivers/virtio_net", root / "sys/class/net/eth0/device/driver")
    for attr, value in (("sys_vendor", "QEMU"), ("product_name", "Standard PC (Q35 + ICH9, 2009)")):
        write(root, f"sys/class/dmi/id/{attr}", value + "\n")
    write(root, "sys/class/dmi/id/product_serial", "\n")
    if efi:
        (root / "sys/firmware/efi").mkdir(parents=True)
    write(root, "sys/block/vda/size", str(8 * 1024 * 1024 * 2) + "\n")  # 8 GiB in 512-byte sectors
    write(root, "sys/block/vda/queue/rotational", "0\n")
    write(root, "sys/block/vda/serial", "disk-serial-1\n")
    write(root, "sys/block/loop0/size", "0\n")
    return root


def ctx_for(root: Path) -> Context:
    return Context(sys_root=root, dev_dir=root / "dev", cmdline={"BOOTIF": "01-52-54-00-12-34-56"})


def test_inventory_of_a_fake_machine(tmp_path: Path) -> None:
    inv = inspect.collect(ctx_for(make_machine(tmp_path)))
    assert inv["cpu"] == {
        "count": 3,
        "architecture": os.uname().machine,
        "model_name": "QEMU Virtual CPU version 2.5+",
        "frequency": "2399.998",
        "flags": ["fpu", "vme", "sse2", "lm"],
    }
    # No DMI memory devices or memory blocks in this tree: MemTotal rounded up to 128 MiB.
    assert inv["memory"] == {"total": 985212 * 1024, "physical_mb": 1024}
    assert inv["interfaces"] == [
        {
            "name": "eth0",
            "mac_address": "52:54:00:12:34:56",
            "ipv4_address": None,
            "speed_mbps": 1000,
            "has_carrier": True,
            "driver": "virtio_net",
            "lldp": None,
        },
        {
            "name": "eth1",
            "mac_address": "52:54:00:ab:cd:ef",
            "ipv4_address": None,
            "speed_mbps": None,
            "has_carrier": False,
            "driver": None,
            "lldp": None,
        },
    ]
    assert inv["system_vendor"] == {
        "manufacturer": "QEMU",
        "product_name": "Standard PC (Q35 + ICH9, 2009)",
        "serial_number": None,
    }
    assert inv["boot"] == {"current_boot_mode": "uefi", "pxe_interface": "52:54:00:12:34:56"}
    assert inv["hostname"] == "ramdisk"


def test_disks_come_from_sys_block(tmp_path: Path) -> None:
    pytest.importorskip("bootforge.agent.disks", reason="needs bootforge/agent/disks.py")
    disks = inspect.collect(ctx_for(make_machine(tmp_path)))["disks"]
    assert [(d["name"], d["size"], d["serial"], d["rotational"]) for d in disks] == [
        ("/dev/vda", 8 * 1024**3, "disk-serial-1", False)
    ]


def test_bios_machine_without_bootif_or_dmi(tmp_path: Path) -> None:
    root = make_machine(tmp_path, efi=False)
    for name in ("sys_vendor", "product_name"):
        (root / "sys/class/dmi/id" / name).unlink()
    inv = inspect.collect(Context(sys_root=root, dev_dir=root / "dev"))
    assert inv["boot"] == {"current_boot_mode": "bios", "pxe_interface": None}
    assert inv["system_vendor"] == {"manufacturer": None, "product_name": None, "serial_number": None}


def test_arm_cpuinfo_and_cpufreq(tmp_path: Path) -> None:
    write(tmp_path, "proc/cpuinfo", CPUINFO_ARM)
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "2100000\n")
    cpu = inspect.cpu(str(tmp_path))
    assert (cpu["count"], cpu["model_name"], cpu["frequency"]) == (2, "", "2100")
    assert cpu["flags"] == ["fp", "asimd", "evtstrm"]


def test_cpu_count_falls_back_to_the_online_mask(tmp_path: Path) -> None:
    write(tmp_path, "sys/devices/system/cpu/online", "0-3,6,8-9\n")
    assert inspect.cpu(str(tmp_path))["count"] == 7


def type17(size: int, extended: int | None = None) -> bytes:
    """An SMBIOS type 17 structure's formatted area (what /sys/firmware/dmi/entries/17-N/raw starts with)."""
    length = 0x28 if extended is not None else 0x15
    raw = bytearray(length)
    raw[0], raw[1] = 17, length
    struct.pack_into("<H", raw, 0x0C, size)
    if extended is not None:
        struct.pack_into("<I", raw, 0x1C, extended)
    return bytes(raw) + b"DIMM 0\x00\x00"


def test_physical_memory_from_dmi_memory_devices(tmp_path: Path) -> None:
    write(tmp_path, "proc/meminfo", "MemTotal: 3900000 kB\n")
    entries = {
        "17-0": type17(1024),  # MiB
        "17-1": type17(0x8000 | 4096),  # 4096 KiB: granularity bit set
        "17-2": type17(0x7FFF, extended=32768),  # 32 GiB in the extended field
        "17-3": type17(0),  # empty slot
        "17-4": type17(0xFFFF),  # unknown
        "17-5": b"\x11",  # truncated
        "16-0": b"\x10\x17" + bytes(0x15),  # another type: ignored
    }
    for name, raw in entries.items():
        (tmp_path / "sys/firmware/dmi/entries" / name).mkdir(parents=True)
        (tmp_path / "sys/firmware/dmi/entries" / name / "raw").write_bytes(raw)
    assert inspect.memory(str(tmp_path)) == {"total": 3900000 * 1024, "physical_mb": 1024 + 4 + 32768}


def test_physical_memory_from_online_memory_blocks(tmp_path: Path) -> None:
    write(tmp_path, "proc/meminfo", "MemTotal: 3900000 kB\n")
    write(tmp_path, "sys/devices/system/memory/block_size_bytes", "8000000\n")  # 128 MiB, hex
    for i in range(40):
        write(tmp_path, f"sys/devices/system/memory/memory{i}/online", "1\n" if i < 32 else "0\n")
    assert inspect.memory(str(tmp_path))["physical_mb"] == 4096


def test_ipv4_address_of_loopback_from_the_kernel() -> None:
    assert inspect.ipv4_address("lo") == "127.0.0.1"
    assert inspect.ipv4_address("bf-no-such-if") is None


def test_live_root_reads_addresses_from_the_kernel() -> None:
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` command (iproute2) to compare addresses with")
    inv = inspect.collect(Context())
    assert "lo" not in {i["name"] for i in inv["interfaces"]}
    for iface in inv["interfaces"]:
        shown = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "dev", iface["name"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert iface["ipv4_address"] == (shown[3].split("/")[0] if shown else None)
    assert inv["hostname"] == socket.gethostname()
    assert inv["memory"]["total"] > 0 and inv["cpu"]["count"] >= 1


def test_run_returns_inventory_and_plugin_data(tmp_path: Path) -> None:
    steps: list[tuple[int, int, str]] = []
    out = inspect.run(
        {"lldp_wait": 0}, ctx_for(make_machine(tmp_path)), lambda d, t, m: steps.append((d, t, m))
    )
    assert out["plugin_data"] == {"agent_version": __version__, "lldp_raw": {}}
    assert out["inventory"]["cpu"]["count"] == 3
    assert steps[-1][0] == steps[-1][1]


def test_lldp_is_not_listened_for_on_a_fake_tree(tmp_path: Path) -> None:
    # eth0 is up in the tree, but a fake tree's interfaces are not this kernel's: nothing to open.
    out = inspect.run({"lldp_wait": 5.0}, ctx_for(make_machine(tmp_path)), lambda d, t, m: None)
    assert out["plugin_data"]["lldp_raw"] == {}


@pytest.mark.parametrize("wait", [-1, "3", True, None, [1]])
def test_run_rejects_a_bad_lldp_wait(tmp_path: Path, wait: Any) -> None:
    with pytest.raises(CommandError, match="lldp_wait"):
        inspect.run({"lldp_wait": wait}, ctx_for(tmp_path), lambda d, t, m: None)
