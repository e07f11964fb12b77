"""An image's architecture from its ESP's removable-media loader (bootforge.images.arch).

The disks are laid out by tools bootforge did not write (sfdisk for GPT and MBR, mkfs.vfat for FAT12,
FAT16 and FAT32, mtools to put files in), so the reader is checked against real layouts, not against
its own idea of them. The loaders are crafted PE headers (a few hundred bytes each) and, where the host
has it, systemd-boot's real BOOTX64 binary.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from esp_util import AA64, I386, LINUX, MISSING, NEEDS, SYSTEMD_BOOT_X64, X64, MiB, disk, pe

from bootforge.images.arch import detect_cpu_arch

pytestmark = pytest.mark.skipif(bool(MISSING), reason=NEEDS)


@pytest.mark.parametrize("fat", [12, 16, 32])
def test_gpt_esp_loaders_on_every_fat(tmp_path: Path, fat: int) -> None:
    mib = 40 if fat == 32 else 8  # mkfs.vfat makes FAT32 only from ~32 MiB (65525 clusters)
    found = detect_cpu_arch(disk(tmp_path / "a.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64}, fat=fat, mib=mib))
    assert found is not None and found.cpu_arch == "aarch64"
    assert "EFI/BOOT/BOOTAA64.EFI" in found.evidence and "0xaa64" in found.evidence
    found = detect_cpu_arch(disk(tmp_path / "x.raw", {"EFI/BOOT/BOOTX64.EFI": X64}, fat=fat, mib=mib))
    assert found is not None and found.cpu_arch == "x86_64"


def test_lower_case_names_and_a_loader_spanning_clusters(tmp_path: Path) -> None:
    # vfat stores "bootaa64.efi" with the 8.3 name BOOTAA64.EFI (and case flags); the file is larger
    # than a cluster, and other files (a long name among them) come first in the directory.
    files = {
        "EFI/BOOT/a-long-file-name-first.txt": b"x" * 5000,
        "EFI/BOOT/bootaa64.efi": pe(0xAA64, 70_000),
        "EFI/debian/grubaa64.efi": AA64,
    }
    found = detect_cpu_arch(disk(tmp_path / "d.raw", files))
    assert found is not None and found.cpu_arch == "aarch64"


def test_mbr_esp_partition(tmp_path: Path) -> None:
    found = detect_cpu_arch(
        disk(tmp_path / "d.raw", {"EFI/BOOT/BOOTX64.EFI": X64}, label="dos", part_type="ef")
    )
    assert found is not None and found.cpu_arch == "x86_64"


@pytest.mark.skipif(not SYSTEMD_BOOT_X64.is_file(), reason=f"{SYSTEMD_BOOT_X64} absent (systemd-boot-efi)")
def test_a_real_loader(tmp_path: Path) -> None:
    found = detect_cpu_arch(disk(tmp_path / "d.raw", {"EFI/BOOT/BOOTX64.EFI": SYSTEMD_BOOT_X64.read_bytes()}))
    assert found is not None and found.cpu_arch == "x86_64"


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"EFI/BOOT/BOOTX64.EFI": X64, "EFI/BOOT/BOOTAA64.EFI": AA64}, "loaders for both: any"),
        ({"EFI/BOOT/BOOTX64.EFI": AA64}, "the name and the PE machine disagree"),
        ({"EFI/BOOT/BOOTX64.EFI": I386}, "an i386 binary under the x64 name"),
        ({"EFI/BOOT/BOOTX64.EFI": b"not a PE file at all" * 10}, "no MZ header"),
        ({"EFI/BOOT/BOOTIA32.EFI": I386}, "an architecture bootforge has no images for"),
        ({"EFI/debian/grubx64.efi": X64}, "no removable-media loader"),
        ({"BOOTX64.EFI": X64}, "not under EFI/BOOT"),
    ],
)
def test_no_guess(tmp_path: Path, files: dict[str, bytes], why: str) -> None:
    assert detect_cpu_arch(disk(tmp_path / "d.raw", files)) is None, why


def test_a_loader_outside_an_esp_is_not_read(tmp_path: Path) -> None:
    # A Linux data partition that happens to hold a FAT: firmware would not boot it as the ESP.
    path = disk(tmp_path / "d.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64}, part_type=LINUX)
    assert detect_cpu_arch(path) is None
    path = disk(tmp_path / "m.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64}, label="dos", part_type="c")
    assert detect_cpu_arch(path) is None


def test_bad_layouts_give_none_not_errors(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.raw"
    tiny.write_bytes(b"\0" * 512)
    assert detect_cpu_arch(tiny) is None
    noise = tmp_path / "noise.raw"
    noise.write_bytes(os.urandom(MiB))
    assert detect_cpu_arch(noise) is None
    # A GPT whose partition table points past the end of the disk.
    path = disk(tmp_path / "d.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64})
    with path.open("r+b") as f:
        f.seek(512 + 72)
        f.write(struct.pack("<Q", 1 << 40))
    assert detect_cpu_arch(path) is None


def test_a_looping_cluster_chain_is_refused(tmp_path: Path) -> None:
    path = disk(tmp_path / "d.raw", {"EFI/BOOT/BOOTAA64.EFI": pe(0xAA64, 20_000)})
    found = detect_cpu_arch(path)
    assert found is not None
    # Point every FAT16 entry at cluster 2: any chain followed loops for ever unless bounded.
    with path.open("r+b") as f:
        f.seek(MiB)
        bpb = f.read(512)
        reserved, fat_sectors = struct.unpack_from("<H", bpb, 14)[0], struct.unpack_from("<H", bpb, 22)[0]
        f.seek(MiB + reserved * 512 + 4)
        f.write(struct.pack("<H", 2) * ((fat_sectors * 512 - 4) // 2))
    assert detect_cpu_arch(path) is None
