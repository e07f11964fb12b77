"""Disk images with an EFI System Partition for tests, laid out by sfdisk, mkfs.vfat and mtools."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

TOOLS = ("sfdisk", "mkfs.vfat", "mmd", "mcopy")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
NEEDS = f"missing {', '.join(MISSING)} (packages fdisk, dosfstools, mtools)"

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SYSTEMD_BOOT_X64 = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
MiB = 1 << 20


def pe(machine: int, size: int = 1024) -> bytes:
    """A PE image's headers: MZ, e_lfanew at 0x3C, the PE signature and the COFF machine type."""
    head = bytearray(size)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x80)
    head[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", head, 0x84, machine)
    return bytes(head)


X64, AA64, I386 = pe(0x8664), pe(0xAA64), pe(0x014C)


def run(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(
        argv,
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )


def disk(
    path: Path,
    files: dict[str, bytes],
    *,
    label: str = "gpt",
    part_type: str = ESP,
    fat: int = 16,
    mib: int = 8,
) -> Path:
    """A disk image: one partition from 1 MiB holding a FAT with `files` (paths like EFI/BOOT/X)."""
    with path.open("wb") as f:
        f.truncate(mib * MiB)
    sectors = (mib - 2) * MiB // 512
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", str(path)],
        f"label: {label}\nstart=2048, size={sectors}, type={part_type}\n",
    )
    # Sectors per cluster that put each FAT type's cluster count in its range on these small disks.
    per_cluster = "4" if fat == 12 else "1"
    run(["mkfs.vfat", "-F", str(fat), "-s", per_cluster, "--offset=2048", str(path), str(sectors // 2)])
    target = f"{path}@@{MiB}"
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                run(["mmd", "-i", target, f"::/{d}"])
                made.add(d)
        src = path.parent / "staged"
        src.write_bytes(data)
        run(["mcopy", "-o", "-i", target, str(src), f"::/{name}"])
        src.unlink()
    return path
