"""A bootable ISO of the bootforge ramdisk, for virtual-media boot: BIOS and UEFI from one image.

Layout (ISO 9660 with Rock Ridge names; the El Torito catalogue has two entries):

* BIOS: ``isolinux/isolinux.bin`` (Debian's isolinux package) as a no-emulation boot image with a boot
  info table, ``isolinux/ldlinux.c32`` (syslinux-common) next to it, and ``isolinux/isolinux.cfg``
  that boots ``/vmlinuz`` and ``/initrd`` with the command line, its menu on the serial port too.
* UEFI: ``efiboot.img``, a FAT file system (mkfs.vfat, mtools) as the EFI entry (platform 0xEF).
  Firmware mounts it as the boot medium's ESP and starts ``EFI/BOOT/BOOTX64.EFI``: systemd-boot
  (systemd-boot-efi, as the lab's UEFI sample OS uses), whose one entry boots the kernel and initrd
  that are in the FAT too, since systemd-boot reads only the partition it was started from.
  So the ISO holds the kernel and initrd twice. A GRUB EFI image that reads ISO 9660 would avoid
  that, at the price of another boot loader to build and vet; the ramdisk is ~20 MiB, so the ISO
  stays small enough to build in about a second.

The same inputs give the same bytes: every timestamp (ISO 9660 and FAT) is EPOCH, mkfs.vfat runs
with --invariant, and the files go in in a fixed order. pycdlib reads the clock for its dates, so
the build runs in a child process of its own whose clock is pinned (nothing else runs there); that
also keeps the blocking build off the conductor's event loop and lets a timeout end it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EFI_IMAGE",
    "ISOLINUX_CFG",
    "LOADER_ENTRY",
    "BootIsoError",
    "IsoResult",
    "build_boot_iso",
    "check_cmdline",
    "missing_tools",
]

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
# Program or file -> the Debian package that has it.
REQUIRED = {
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    str(ISOLINUX_BIN): "isolinux",
    str(LDLINUX_C32): "syslinux-common",
    str(SYSTEMD_BOOT): "systemd-boot-efi",
}
EPOCH = 315532800  # 1980-01-01 00:00 UTC: the FAT epoch, used for every timestamp
VOLUME_ID = "BOOTFORGE"
EFI_IMAGE = "/EFIBOOT.IMG;1"
ISOLINUX_CFG = "/ISOLINUX/ISOLINUX.CFG;1"
LOADER_ENTRY = "loader/entries/bootforge.conf"
# The kernel's own limit on x86 (COMMAND_LINE_SIZE).
CMDLINE_MAX = 2048
# El Torito counts a no-emulation image in 512-byte sectors, in 16 bits.
EFI_IMAGE_MAX = 0xFFFF * 512
BUILD_TIMEOUT = 120.0

# Boot loader configs carry the command line verbatim: one line, no quotes (check_cmdline).
_CMDLINE_OK = re.compile(r"[\x21\x23-\x7e]+( [\x21\x23-\x7e]+)*")

ISOLINUX_TEMPLATE = """SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT bootforge
LABEL bootforge
  LINUX /vmlinuz
  INITRD /initrd
  APPEND {cmdline}
"""
LOADER_CONF = """timeout 0
default bootforge.conf
editor no
auto-entries no
auto-firmware no
"""
ENTRY_TEMPLATE = """title bootforge ramdisk
linux /vmlinuz
initrd /initrd
options {cmdline}
"""


class BootIsoError(RuntimeError):
    """The ISO could not be built; the message names the missing tool or the failed step."""


@dataclass(frozen=True)
class IsoResult:
    path: Path
    size: int
    efi_image_size: int
    seconds: float


def missing_tools() -> list[str]:
    """What this host lacks to build the ISO, each with its Debian package."""
    missing = []
    for need, package in REQUIRED.items():
        found = Path(need).is_file() if need.startswith("/") else shutil.which(need) is not None
        if not found:
            missing.append(f"{need} (Debian package {package})")
    return missing


def check_cmdline(cmdline: str) -> None:
    """The command line goes verbatim into isolinux.cfg and a systemd-boot entry: printable ASCII
    words separated by single spaces, no double quotes (they group words for the kernel), at most
    CMDLINE_MAX characters."""
    if not _CMDLINE_OK.fullmatch(cmdline):
        raise BootIsoError(
            "the kernel command line must be printable ASCII words without double quotes, "
            f"separated by single spaces: {cmdline[:200]!r}"
        )
    if len(cmdline) > CMDLINE_MAX:
        raise BootIsoError(
            f"the kernel command line is {len(cmdline)} characters; the kernel takes {CMDLINE_MAX}"
        )


async def build_boot_iso(
    kernel: Path, initrd: Path, cmdline: str, output: Path, timeout: float = BUILD_TIMEOUT
) -> IsoResult:
    """Build the ISO at `output` (atomically: a reader never sees half of it); see the module doc."""
    check_cmdline(cmdline)
    missing = missing_tools()
    if missing:
        raise BootIsoError(f"building a boot ISO needs {', '.join(missing)}")
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if not path.is_file():
            raise BootIsoError(f"the ramdisk's {what} {path} does not exist")
    started = time.monotonic()
    spec = {"kernel": str(kernel), "initrd": str(initrd), "cmdline": cmdline, "output": str(output)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TZ": "UTC", "SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(spec).encode()), timeout)
    except TimeoutError:
        await _end(proc, output)
        raise BootIsoError(f"building {output.name} took longer than {timeout:.0f} s") from None
    except BaseException:  # cancelled: the child must not outlive the caller
        await _end(proc, output)
        raise
    if proc.returncode != 0:
        _remove_partial(output)
        detail = err.decode(errors="replace").strip().splitlines()
        raise BootIsoError(f"building {output.name} failed: {detail[-1] if detail else proc.returncode}")
    reply = json.loads(out)
    return IsoResult(output, int(reply["iso_size"]), int(reply["efi_image_size"]), time.monotonic() - started)


async def _end(proc: asyncio.subprocess.Process, output: Path) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    _remove_partial(output)


def _remove_partial(output: Path) -> None:
    """The work directory a killed child leaves next to `output`."""
    for leftover in output.parent.glob(f".{output.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)


# -- the child process ------------------------------------------------------------------------------


def _run(argv: list[str], env: Mapping[str, str]) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=dict(env))
    except FileNotFoundError:
        raise BootIsoError(f"needs {argv[0]}") from None
    if proc.returncode != 0:
        raise BootIsoError(f"{' '.join(argv[:3])} ... failed: {proc.stderr.strip()[-300:]}")


def efi_image(kernel: Path, initrd: Path, cmdline: str, work: Path) -> Path:
    """The FAT image of the EFI boot entry: systemd-boot, its config, the kernel and initrd."""
    generated = {
        "EFI/BOOT/BOOTX64.EFI": SYSTEMD_BOOT,
        "loader/loader.conf": _text_file(work, "loader.conf", LOADER_CONF),
        LOADER_ENTRY: _text_file(work, "entry.conf", ENTRY_TEMPLATE.format(cmdline=cmdline)),
        "vmlinuz": kernel,
        "initrd": initrd,
    }
    payload = sum(src.stat().st_size for src in generated.values())
    # Room for the FAT tables, directories and cluster slack: 5% and a MiB, rounded up to a MiB.
    size = -(-(payload + payload // 20 + (1 << 20)) // (1 << 20)) << 20
    if size > EFI_IMAGE_MAX:
        raise BootIsoError(
            f"kernel + initrd ({payload >> 20} MiB) do not fit the {EFI_IMAGE_MAX >> 20} MiB an El Torito "
            "EFI entry can describe"
        )
    image = work / "efiboot.img"
    with image.open("wb") as f:
        f.truncate(size)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(EPOCH)}
    _run(["mkfs.vfat", "--invariant", "-n", "BFVMEDIA", str(image)], env)
    for d in ("EFI", "EFI/BOOT", "loader", "loader/entries"):
        _run(["mmd", "-i", str(image), f"::/{d}"], env)
    for name, src in generated.items():
        _run(["mcopy", "-i", str(image), str(src), f"::/{name}"], env)
    return image


def _text_file(work: Path, name: str, text: str) -> Path:
    path = work / name
    path.write_text(text)
    return path


def build_here(kernel: Path, initrd: Path, cmdline: str, output: Path) -> tuple[int, int]:
    """Build the ISO in this process (the child); returns the sizes of the ISO and its EFI image.

    The caller pins the clock (see _child_main): pycdlib stamps the ISO with time.time().
    """
    import pycdlib

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        work = Path(tmp)
        efi = efi_image(kernel, initrd, cmdline, work)
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, vol_ident=VOLUME_ID, app_ident_str="bootforge", rock_ridge="1.09")
        iso.add_directory("/ISOLINUX", rr_name="isolinux")
        files: list[tuple[str, str, Path | bytes]] = [
            ("/ISOLINUX/ISOLINUX.BIN;1", "isolinux.bin", ISOLINUX_BIN),
            ("/ISOLINUX/LDLINUX.C32;1", "ldlinux.c32", LDLINUX_C32),
            (ISOLINUX_CFG, "isolinux.cfg", ISOLINUX_TEMPLATE.format(cmdline=cmdline).encode()),
            ("/VMLINUZ.;1", "vmlinuz", kernel),
            ("/INITRD.;1", "initrd", initrd),
            (EFI_IMAGE, "efiboot.img", efi),
        ]
        opened = []
        try:
            for iso_path, rr_name, content in files:
                if isinstance(content, bytes):
                    iso.add_fp(io.BytesIO(content), len(content), iso_path, rr_name=rr_name)
                else:
                    f = content.open("rb")
                    opened.append(f)
                    iso.add_fp(f, content.stat().st_size, iso_path, rr_name=rr_name)
            # isolinux patches the boot info table (where it was loaded from) into its own copy.
            iso.add_eltorito(
                "/ISOLINUX/ISOLINUX.BIN;1", "/BOOT.CAT;1", boot_load_size=4, boot_info_table=True
            )
            iso.add_eltorito(EFI_IMAGE, "/BOOT.CAT;1", efi=True, platform_id=0xEF)
            partial = work / "out.iso"
            iso.write(str(partial))
            iso.close()
        finally:
            for f in opened:
                f.close()
        partial.replace(output)
        return output.stat().st_size, efi.stat().st_size


def _child_main() -> int:
    spec = json.loads(sys.stdin.read())
    # This process only builds the ISO: pinning its clock makes every pycdlib date EPOCH.
    time.time = lambda: float(EPOCH)
    time.tzset()
    try:
        iso, efi = build_here(
            Path(spec["kernel"]), Path(spec["initrd"]), spec["cmdline"], Path(spec["output"])
        )
    except (BootIsoError, OSError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"iso_size": iso, "efi_image_size": efi}))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
