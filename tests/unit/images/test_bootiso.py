"""The virtual-media boot ISO, read back by pycdlib (and xorriso where installed): El Torito entries for
BIOS (isolinux) and UEFI (a FAT image with systemd-boot), the kernel, initrd and command line on both
paths, the same bytes for the same inputs, and clear errors for what cannot go in."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest

from bootforge.images import bootiso
from bootforge.images.bootiso import BootIsoError, build_boot_iso, check_cmdline

CMDLINE = (
    "bootforge.api=http://10.77.0.1:6385 bootforge.node=7e0c0f5e-0000-4000-8000-000000000001 "
    "BOOTIF=52:54:00:77:00:01 bootforge.net=mac=52:54:00:77:00:01,ip=10.77.0.11/24,gw=10.77.0.1 "
    "console=ttyS0,115200n8 quiet"
)


@pytest.fixture(scope="module")
def tools() -> None:
    missing = bootiso.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture
def ramdisk(tmp_path: Path, tools: None) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"MZ kernel " + os.urandom(3000))
    initrd.write_bytes(b"070701 initrd " + os.urandom(700_000))
    return kernel, initrd


def _build(ramdisk: tuple[Path, Path], output: Path, cmdline: str = CMDLINE) -> bootiso.IsoResult:
    return asyncio.run(build_boot_iso(*ramdisk, cmdline, output))


def _read(iso: pycdlib.PyCdlib, path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, iso_path=path)
    return out.getvalue()


def _fat_file(image: Path, name: str) -> bytes:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(
        ["mtype", "-i", str(image), f"::/{name}"], capture_output=True, check=True, env=env, timeout=30
    ).stdout


def test_the_iso_boots_bios_and_uefi_with_the_same_ramdisk(
    ramdisk: tuple[Path, Path], tmp_path: Path
) -> None:
    result = _build(ramdisk, tmp_path / "out" / "node.iso")
    kernel, initrd = (p.read_bytes() for p in ramdisk)
    assert result.size == result.path.stat().st_size
    assert not [p for p in result.path.parent.iterdir() if p != result.path], "work files left behind"

    iso = pycdlib.PyCdlib()
    iso.open(str(result.path))
    try:
        catalog = iso.eltorito_boot_catalog
        bios = catalog.initial_entry
        assert catalog.validation_entry.platform_id == 0  # x86 BIOS
        assert bios.boot_indicator == 0x88 and bios.boot_media_type == 0  # bootable, no emulation
        assert bios.load_rba == iso.get_record(iso_path="/ISOLINUX/ISOLINUX.BIN;1").extent_location()
        [efi_section] = catalog.sections
        assert efi_section.platform_id == 0xEF
        [efi] = efi_section.section_entries
        assert efi.boot_indicator == 0x88 and efi.boot_media_type == 0
        assert efi.load_rba == iso.get_record(iso_path=bootiso.EFI_IMAGE).extent_location()
        assert efi.sector_count * 512 == result.efi_image_size

        assert _read(iso, "/VMLINUZ.;1") == kernel
        assert _read(iso, "/INITRD.;1") == initrd
        assert _read(iso, "/ISOLINUX/LDLINUX.C32;1") == bootiso.LDLINUX_C32.read_bytes()
        cfg = _read(iso, bootiso.ISOLINUX_CFG).decode()
        assert "  LINUX /vmlinuz\n  INITRD /initrd\n" in cfg
        assert f"  APPEND {CMDLINE}\n" in cfg
        # Rock Ridge names, as isolinux.cfg and loader entries spell them.
        assert iso.get_record(iso_path="/VMLINUZ.;1").rock_ridge.name() == b"vmlinuz"
        efi_image = tmp_path / "efiboot.img"
        efi_image.write_bytes(_read(iso, bootiso.EFI_IMAGE))
    finally:
        iso.close()
    assert _fat_file(efi_image, "EFI/BOOT/BOOTX64.EFI") == bootiso.SYSTEMD_BOOT.read_bytes()
    assert _fat_file(efi_image, "vmlinuz") == kernel
    assert _fat_file(efi_image, "initrd") == initrd
    entry = _fat_file(efi_image, bootiso.LOADER_ENTRY).decode()
    assert "linux /vmlinuz\ninitrd /initrd\n" in entry
    assert f"options {CMDLINE}\n" in entry
    assert "default bootforge.conf" in _fat_file(efi_image, "loader/loader.conf").decode()


def test_xorriso_sees_both_boot_entries(ramdisk: tuple[Path, Path], tmp_path: Path) -> None:
    if shutil.which("xorriso") is None:
        pytest.skip("needs xorriso (Debian package xorriso) as a second reader")
    result = _build(ramdisk, tmp_path / "node.iso")
    report = subprocess.run(
        ["xorriso", "-indev", str(result.path), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    images = [line.split() for line in report.splitlines() if line.startswith("El Torito boot img :")]
    assert [(i[6], i[7], i[8]) for i in images] == [("BIOS", "y", "none"), ("UEFI", "y", "none")]
    paths = [line.split()[-1] for line in report.splitlines() if line.startswith("El Torito img path :")]
    assert paths == ["/isolinux/isolinux.bin", "/efiboot.img"]
    assert "boot-info-table" in report


def test_same_inputs_give_the_same_bytes(ramdisk: tuple[Path, Path], tmp_path: Path) -> None:
    first = _build(ramdisk, tmp_path / "a.iso")
    second = _build(ramdisk, tmp_path / "b.iso")
    assert first.path.read_bytes() == second.path.read_bytes()
    other = _build(ramdisk, tmp_path / "c.iso", CMDLINE + " debug")
    assert other.path.read_bytes() != first.path.read_bytes()


@pytest.mark.parametrize(
    "cmdline",
    ['a="b c"', "a\nb", "a  b", " a", "a\tb", "é", "x" * (bootiso.CMDLINE_MAX + 1), ""],
)
def test_a_command_line_that_cannot_go_verbatim_into_a_loader_config_is_refused(cmdline: str) -> None:
    with pytest.raises(BootIsoError, match="command line"):
        check_cmdline(cmdline)


def test_a_missing_ramdisk_file_is_named(ramdisk: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(BootIsoError, match=r"initrd .*does-not-exist does not exist"):
        _build((ramdisk[0], tmp_path / "does-not-exist"), tmp_path / "x.iso")
    assert not (tmp_path / "x.iso").exists()


def test_a_timeout_ends_the_build_and_leaves_nothing(ramdisk: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "slow" / "x.iso"
    out.parent.mkdir()
    with pytest.raises(BootIsoError, match="took longer than"):
        asyncio.run(build_boot_iso(*ramdisk, CMDLINE, out, timeout=0.01))
    assert list(out.parent.iterdir()) == []
