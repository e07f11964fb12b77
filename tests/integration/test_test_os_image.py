"""The deploy tests' test OS image and disk checks, on their own.

The QEMU tests do by hand what a deploy does (image at the start of a bigger disk, config drive
partition appended at its end with sfdisk --append) and boot the disk with SeaBIOS, or the UEFI
variant with OVMF: the serial console must show the boot marker and the user data (or that there is
no config drive). The other
tests check support.disk_check against sfdisk's own reading of the same files, and show what it
reports before and after a disk is cleaned. Run with `pytest tests/integration/test_test_os_image.py`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.disk_check import (
    MIB,
    config_drive_files,
    find_config_drive,
    is_blank_metadata,
    partition_table,
    partitions,
)

from bootforge.drivers.qemu_machine import DEFAULT_BINARY, QemuError, detect_accel, find_ovmf
from bootforge.lab import ramdisk
from bootforge.lab.sample_os import (
    BOOTED_MARKER,
    IMAGE_MIB,
    NO_CONFIG_DRIVE_MARKER,
    USER_DATA_MARKER,
    append_config_drive,
    build_test_os,
    config_drive_iso,
    missing_tools,
)

DISK_MIB = 256
BOOT_TIMEOUT = 180.0  # power on to the last marker; about 15 s under TCG on an idle 2-core host
UEFI_BOOT_TIMEOUT = 300.0  # OVMF adds its own start (tens of seconds under TCG) to the above
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
USER_DATA = b"hello from config drive"
META_DATA = b'{"uuid": "4f0c7a52-51c4-4c1e-9a53-0d7d1e0a0b11", "name": "test-node"}'


@pytest.fixture(scope="module")
def os_image() -> Path:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    try:
        return build_test_os()
    except ramdisk.RamdiskError as e:
        pytest.skip(f"needs Debian's kernel and busybox-static packages: {e}")


@pytest.fixture(scope="module")
def uefi_image() -> Path:
    missing = missing_tools("uefi")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    try:
        return build_test_os(firmware="uefi")
    except ramdisk.RamdiskError as e:
        pytest.skip(f"needs Debian's kernel and busybox-static packages: {e}")


def needs_sfdisk() -> None:
    if shutil.which("sfdisk") is None:
        pytest.skip("needs sfdisk (Debian fdisk)")


def target_disk(image: Path, work: Path, with_config_drive: bool) -> Path:
    """`image` at the start of a sparse DISK_MIB disk, optionally with a config drive at its end."""
    disk = work / "disk.raw"
    with image.open("rb") as src, disk.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(DISK_MIB * MIB)
    if with_config_drive:
        files = {"openstack/latest/user_data": USER_DATA, "openstack/latest/meta_data.json": META_DATA}
        append_config_drive(disk, config_drive_iso(files))
    return disk


def sfdisk_view(disk: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition, as sfdisk reads them."""
    out = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True)
    return [
        (p["start"] * 512, p["size"] * 512) for p in json.loads(out.stdout)["partitiontable"]["partitions"]
    ]


def zero(disk: Path, offset: int, length: int) -> None:
    with disk.open("r+b") as f:
        f.seek(offset)
        f.write(bytes(length))


def firmware_args(firmware: str, work: Path) -> list[str]:
    if firmware == "bios":
        return []
    try:
        ovmf = find_ovmf()
    except QemuError:
        pytest.skip("needs OVMF (Debian package ovmf)")
    assert ovmf.code is not None and ovmf.vars_template is not None
    nvram = work / "OVMF_VARS.fd"  # OVMF writes boot entries to its variable store: never the template
    shutil.copyfile(ovmf.vars_template, nvram)
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf.code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={nvram}",
    ]  # fmt: skip


def boot(
    disk: Path, work: Path, pattern: re.Pattern[str], firmware: str = "bios"
) -> tuple[str, dict[str, float]]:
    """Boot `disk` under QEMU (SeaBIOS or OVMF, no network) until `pattern` is on the serial console.

    Returns the console text and when each marker line first appeared (seconds from start).
    """
    if shutil.which(DEFAULT_BINARY) is None:
        pytest.skip(f"needs {DEFAULT_BINARY} (Debian qemu-system-x86)")
    timeout = BOOT_TIMEOUT if firmware == "bios" else UEFI_BOOT_TIMEOUT
    log = work / "serial.log"
    argv = [
        DEFAULT_BINARY, "-machine", "q35", "-accel", detect_accel(), "-m", "256",
        *firmware_args(firmware, work),
        "-display", "none", "-nic", "none", "-no-reboot",
        "-drive", f"file={disk},format=raw,if=virtio",
        "-serial", f"file:{log}",
    ]  # fmt: skip
    start = time.monotonic()
    seen: dict[str, float] = {}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        text = ""
        while time.monotonic() - start < timeout:
            text = log.read_text(errors="replace") if log.exists() else ""
            for marker in (BOOTED_MARKER, USER_DATA_MARKER, NO_CONFIG_DRIVE_MARKER):
                if marker in text:
                    seen.setdefault(marker, time.monotonic() - start)
            if pattern.search(text):
                return text, seen
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"QEMU exited with {proc.returncode}: {err.strip()}\nconsole:\n{text}")
            time.sleep(0.25)
        pytest.fail(f"no {pattern.pattern!r} on the console within {timeout:.0f} s:\n{text}")
    finally:
        proc.kill()  # by the Popen's own pid, never by name
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def console_lines(text: str) -> list[str]:
    return [line.strip("\r") for line in text.splitlines()]


def test_image_layout(os_image: Path) -> None:
    needs_sfdisk()
    table = partition_table(os_image)
    assert table["size"] == IMAGE_MIB * MIB
    assert table["gpt"] is None
    assert table["mbr"] is not None
    [part] = table["mbr"]["partitions"]
    assert part["bootable"] and part["type"] == 0x0E and part["start"] == 2048
    assert (part["start"] + part["sectors"]) * 512 <= IMAGE_MIB * MIB
    assert sfdisk_view(os_image) == [(p.start, p.size) for p in partitions(os_image)]
    assert find_config_drive(os_image) is None
    assert os_image.stat().st_blocks * 512 < IMAGE_MIB * MIB  # sparse: only what the FAT holds


def test_config_drive_appended_at_the_end(os_image: Path, tmp_path: Path) -> None:
    needs_sfdisk()
    disk = target_disk(os_image, tmp_path, with_config_drive=True)
    view = sfdisk_view(disk)
    assert [(p.start, p.size) for p in partitions(disk)] == view
    assert len(view) == 2
    start, size = view[1]
    assert start + size > (DISK_MIB - 2) * MIB
    assert find_config_drive(disk) == USER_DATA
    files = config_drive_files(disk)
    assert files is not None
    assert files["openstack/latest/meta_data.json"] == META_DATA


def test_blank_metadata_before_and_after_cleaning(os_image: Path, tmp_path: Path) -> None:
    needs_sfdisk()
    disk = target_disk(os_image, tmp_path, with_config_drive=True)
    before = partition_table(disk)
    [fat, cd] = partitions(disk)

    found = is_blank_metadata(disk, before)
    assert not found
    assert any("MBR signature" in x for x in found.found), found
    assert any(f"vfat signature at byte {fat.start}" in x for x in found.found), found
    assert any(f"iso9660 signature at byte {cd.start}" in x for x in found.found), found

    # Wiping only the partition table leaves the filesystems findable at the former partitions.
    zero(disk, 0, MIB)
    found = is_blank_metadata(disk, before)
    assert not any("MBR" in x for x in found.found), found
    assert len(found.found) == 2, found
    assert partitions(disk) == [] and find_config_drive(disk) is None

    for p in (fat, cd):
        zero(disk, p.start, 64 * 1024)
    assert (check := is_blank_metadata(disk, before)), check.found
    assert partition_table(disk)["head_sha256"] != before["head_sha256"]
    assert partition_table(disk)["tail_sha256"] == before["tail_sha256"]  # the ISO ends before the last MiB


def test_gpt_disk(tmp_path: Path) -> None:
    needs_sfdisk()
    disk = tmp_path / "gpt.raw"
    with disk.open("wb") as f:
        f.truncate(64 * MIB)
    script = "label: gpt\nstart=2048, size=20480, type=L, name=root\nstart=22528, size=8192, type=S\n"
    subprocess.run(
        ["sfdisk", "--no-reread", str(disk)], input=script, text=True, check=True, capture_output=True
    )
    table = partition_table(disk)
    gpt = table["gpt"]
    assert gpt is not None and table["mbr"] is not None
    assert [p["type"] for p in table["mbr"]["partitions"]] == [0xEE]
    for header in (gpt["primary"], gpt["backup"]):
        assert header["header_crc_ok"] and header["entries_crc_ok"], header
        assert [p["name"] for p in header["partitions"]] == ["root", ""]
    assert gpt["primary"]["backup_lba"] == gpt["backup"]["lba"] == 64 * MIB // 512 - 1
    assert [(p.start, p.size) for p in partitions(disk)] == sfdisk_view(disk)

    iso = config_drive_iso({"openstack/latest/user_data": USER_DATA})
    append_config_drive(disk, iso)
    assert len(sfdisk_view(disk)) == 3
    assert find_config_drive(disk) == USER_DATA

    found = is_blank_metadata(disk)
    assert any("GPT primary" in x for x in found.found) and any("GPT backup" in x for x in found.found)
    zero(disk, 0, MIB)
    zero(disk, 63 * MIB, MIB)
    found = is_blank_metadata(disk)
    # Only the config drive's ISO is left, found at its MiB boundary without a `before` table.
    assert len(found.found) == 1 and "iso9660" in found.found[0], found


@pytest.mark.qemu
@pytest.mark.slow
def test_boots_and_prints_user_data(os_image: Path, tmp_path: Path) -> None:
    needs_sfdisk()
    disk = target_disk(os_image, tmp_path, with_config_drive=True)
    before = partition_table(disk)
    text, seen = boot(
        disk, tmp_path, re.compile(f"{re.escape(USER_DATA_MARKER)}.*\n|{NO_CONFIG_DRIVE_MARKER}")
    )
    print(f"\nTCG={detect_accel() == 'tcg'} markers after: {seen}")
    lines = console_lines(text)
    assert BOOTED_MARKER in lines
    assert f"{USER_DATA_MARKER}{USER_DATA.decode()}" in lines
    assert partition_table(disk) == before  # the OS reads its config drive without writing the disk


@pytest.mark.qemu
@pytest.mark.slow
def test_boots_without_config_drive(os_image: Path, tmp_path: Path) -> None:
    disk = target_disk(os_image, tmp_path, with_config_drive=False)
    done = re.compile(f"{re.escape(USER_DATA_MARKER)}|{NO_CONFIG_DRIVE_MARKER}")
    text, seen = boot(disk, tmp_path, done)
    print(f"\nmarkers after: {seen}")
    lines = console_lines(text)
    assert BOOTED_MARKER in lines
    assert NO_CONFIG_DRIVE_MARKER in lines
    assert not any(line.startswith(USER_DATA_MARKER) for line in lines)


def test_uefi_image_layout(uefi_image: Path) -> None:
    needs_sfdisk()
    table = partition_table(uefi_image)
    assert table["size"] == IMAGE_MIB * MIB
    gpt = table["gpt"]
    assert gpt is not None and table["mbr"] is not None
    assert [p["type"] for p in table["mbr"]["partitions"]] == [0xEE]
    for header in (gpt["primary"], gpt["backup"]):
        assert header["header_crc_ok"] and header["entries_crc_ok"], header
        [esp] = header["partitions"]
        assert esp["type"] == ESP_TYPE and esp["first_lba"] == 2048
    assert gpt["backup"]["lba"] == IMAGE_MIB * MIB // 512 - 1
    assert sfdisk_view(uefi_image) == [(p.start, p.size) for p in partitions(uefi_image)]
    assert "vfat signature at byte 1048576 (MiB boundary)" in is_blank_metadata(uefi_image).found
    assert uefi_image.stat().st_blocks * 512 < IMAGE_MIB * MIB


@pytest.mark.qemu
@pytest.mark.slow
def test_uefi_boots_and_prints_user_data(uefi_image: Path, tmp_path: Path) -> None:
    """The deploy's disk by hand: the GPT's backup header moved to the disk's end, then the config drive."""
    needs_sfdisk()
    disk = tmp_path / "disk.raw"
    with uefi_image.open("rb") as src, disk.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(DISK_MIB * MIB)
    subprocess.run(["sfdisk", "--relocate", "gpt-bak-std", str(disk)], check=True, capture_output=True)
    files = {"openstack/latest/user_data": USER_DATA, "openstack/latest/meta_data.json": META_DATA}
    append_config_drive(disk, config_drive_iso(files))
    assert find_config_drive(disk) == USER_DATA
    before = partition_table(disk)
    done = re.compile(f"{re.escape(USER_DATA_MARKER)}.*\n|{NO_CONFIG_DRIVE_MARKER}")
    text, seen = boot(disk, tmp_path, done, firmware="uefi")
    print(f"\nUEFI TCG={detect_accel() == 'tcg'} markers after: {seen}")
    lines = console_lines(text)
    assert BOOTED_MARKER in lines
    assert f"{USER_DATA_MARKER}{USER_DATA.decode()}" in lines
    assert partition_table(disk) == before
