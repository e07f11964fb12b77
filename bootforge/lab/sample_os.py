"""A small sample OS as a raw disk image, for BIOS or UEFI: what the lab deploys, and how tests see it boot.

The image is what a user would deploy, shrunk to the least that proves a deploy worked. The BIOS
variant is an MBR with syslinux's boot code and one active FAT16 partition (1 MiB .. IMAGE_MIB)
holding syslinux, Debian's kernel and a busybox initramfs. The UEFI variant is a GPT with one EFI
System Partition (1 MiB .. IMAGE_MIB - 1 MiB, FAT16: OVMF reads it, and FAT32 would need a bigger
image) holding systemd-boot as the removable-media loader EFI/BOOT/BOOTX64.EFI and the same kernel
and initramfs. The rest of a bigger target disk stays unpartitioned, so the deploy agent can append
its config drive partition at the end.

The initramfs's /init prints BOOTED_MARKER on the serial console, loads the block and ISO9660
modules, looks for a partition whose ISO9660 volume label is config-2, and prints
``USER_DATA_MARKER + <user_data>`` (first 4 KiB, line breaks as spaces, trailing spaces dropped) or
NO_CONFIG_DRIVE_MARKER; then it idles.

Everything is built without root or loop devices: sfdisk, mkfs.vfat --offset, mtools and the
mtools-based ``syslinux --offset`` all work on a plain file (Debian packages syslinux,
syslinux-common, mtools, dosfstools, fdisk; systemd-boot-efi instead of the syslinux ones for
UEFI). Kernel, modules and busybox come from Debian's archive through bootforge.lab.ramdisk. The
image is cached by a hash of its recipe; a second build is a lookup.

The arm64 variant is the UEFI one built from Debian's arm64 packages (kernel, busybox-static and
systemd-boot's systemd-bootaa64.efi as EFI/BOOT/BOOTAA64.EFI, fetched through an apt state of their
own: bootforge.ramdisk.debs.Apt), with the console on the virt machine's PL011 UART (ttyAMA0).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pycdlib

from bootforge.lab import ramdisk
from bootforge.lab.ramdisk import _Cpio, _members

__all__ = [
    "BOOTED_MARKER",
    "CONFIG_DRIVE_LABEL",
    "FIRMWARES",
    "IMAGE_MIB",
    "NO_CONFIG_DRIVE_MARKER",
    "REQUIRED_TOOLS",
    "USER_DATA_MARKER",
    "TestOsError",
    "append_config_drive",
    "build_test_os",
    "config_drive_iso",
    "missing_tools",
]

BOOTED_MARKER = "BOOTFORGE-TEST-OS: booted"
USER_DATA_MARKER = "BOOTFORGE-TEST-OS: user_data="
NO_CONFIG_DRIVE_MARKER = "BOOTFORGE-TEST-OS: no config drive"
CONFIG_DRIVE_LABEL = "config-2"
IMAGE_MIB = 32
PARTITION_START = 2048  # sectors: 1 MiB, where sfdisk and every partitioner put the first partition
RECIPE_VERSION = "1"
SYSLINUX_DIR = Path("/usr/lib/syslinux")
MBR_BIN = SYSLINUX_DIR / "mbr/mbr.bin"
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
FIRMWARES = ("bios", "uefi", "arm64")
ARM64_IMAGE_MIB = 64  # Debian's arm64 kernel is an uncompressed 33 MB Image
SYSTEMD_BOOT_AA64 = "usr/lib/systemd/boot/efi/systemd-bootaa64.efi"  # in the arm64 systemd-boot-efi
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# Fixed GUIDs (like the MBR's label-id) keep the image byte-for-byte reproducible.
GPT_DISK_GUID = "B007F0A6-5E1F-4B6E-9F0A-7E57B007F0A6"
ESP_GUID = "B007F0A6-E5B0-4C1D-8A2E-7E57B007F0A6"

# Program -> the Debian package providing it, for skip messages and for the lead's install list.
REQUIRED_TOOLS = {
    "syslinux": "syslinux",
    "mcopy": "mtools",
    "mkfs.vfat": "dosfstools",
    "sfdisk": "fdisk",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}
# The UEFI image needs no syslinux: systemd-boot's EFI binary is a file, checked in missing_tools.
UEFI_TOOLS = {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if tool != "syslinux"} | {"mmd": "mtools"}

# What /init loads; their dependencies are read from each module's .modinfo and loaded first.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "isofs")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "@BOOTED@"
for m in $(cat /etc/modules.order); do
  insmod /lib/modules/$m.ko || echo "bootforge-test-os: insmod $m failed"
done
found=""; n=0; scans=0
# Disks and their partitions appear while virtio_blk probes; once a scan has seen a disk, one more
# scan half a second later settles it, so a disk without a config drive does not cost the whole wait.
while [ -z "$found" ] && [ $n -lt 20 ] && [ $scans -lt 2 ]; do
  seen=""
  for b in /sys/class/block/*; do
    d=${b##*/}
    [ -b /dev/$d ] || continue
    seen=1
    [ "$(dd if=/dev/$d bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || continue
    label=$(dd if=/dev/$d bs=1 skip=32808 count=32 2>/dev/null)
    case "${label%% *}" in config-2|CONFIG-2) found=$d ;; esac
  done
  [ -n "$seen" ] && scans=$((scans + 1))
  [ -z "$found" ] && sleep 0.5; n=$((n + 1))
done
if [ -z "$found" ]; then
  echo "@NOCD@"
else
  echo "bootforge-test-os: config drive on /dev/$found"
  mkdir -p /mnt
  if mount -t iso9660 -o ro /dev/$found /mnt; then
    f=/mnt/openstack/latest/user_data
    if [ -f $f ]; then
      echo "@USERDATA@$(head -c 4096 $f | tr '\r\n' '  ' | sed 's/ *$//')"
    else
      echo "bootforge-test-os: config drive has no openstack/latest/user_data"
    fi
  else
    echo "bootforge-test-os: mounting /dev/$found failed"
  fi
fi
while true; do sleep 3600; done
"""

# quiet: kernel messages printed while /init writes could split a marker line on the serial port.
SYSLINUX_CFG = """SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT testos
LABEL testos
  LINUX /vmlinuz
  INITRD /initrd
  APPEND console=ttyS0,115200 quiet panic=0
"""

# systemd-boot: no menu, no editor; the entry's paths are on the ESP, where the loader itself lives.
LOADER_CONF = """timeout 0
default sample.conf
editor no
"""
LOADER_ENTRY = """title bootforge sample OS
linux /vmlinuz
initrd /initrd.gz
options console=ttyS0,115200n8 quiet panic=0
"""
LOADER_ENTRY_ARM64 = LOADER_ENTRY.replace("console=ttyS0,115200n8", "console=ttyAMA0,115200")


class TestOsError(RuntimeError):
    """The test OS image could not be built; the message names the missing tool or failed step."""

    __test__ = False  # not a test class, whatever pytest's name-based collection thinks


def missing_tools(firmware: str = "bios") -> list[str]:
    """Programs and files (with their Debian package) the `firmware` variant needs and this host lacks."""
    tools, (loader, loader_pkg) = (REQUIRED_TOOLS, (MBR_BIN, "syslinux-common"))
    if firmware == "uefi":
        tools, (loader, loader_pkg) = (UEFI_TOOLS, (SYSTEMD_BOOT, "systemd-boot-efi"))
    if firmware == "arm64":  # its loader comes from the arm64 package, not the host
        return [f"{tool} ({pkg})" for tool, pkg in UEFI_TOOLS.items() if shutil.which(tool) is None]
    missing = [f"{tool} ({pkg})" for tool, pkg in tools.items() if shutil.which(tool) is None]
    if not loader.is_file():
        missing.append(f"{loader} ({loader_pkg})")
    return missing


def _run(argv: list[str], stdin: str | None = None, env: Mapping[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except FileNotFoundError:
        raise TestOsError(f"needs {argv[0]}") from None
    if proc.returncode != 0:
        raise TestOsError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _modinfo(ko: bytes, field: str) -> str | None:
    m = re.search(rb"(?:^|\0)" + field.encode() + rb"=([^\0]*)\0", ko)
    return m.group(1).decode() if m else None


def _module_name(path: str) -> str:
    return os.path.basename(path)[: -len(".ko")].replace("-", "_")


def _load_order(depends: Mapping[str, list[str]], roots: Iterable[str]) -> list[str]:
    """Dependencies before dependents: insmod, unlike modprobe, resolves nothing by itself."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in depends:
            raise TestOsError(f"kernel package has no module {name}")
        if name in visiting:
            raise TestOsError(f"module dependency cycle through {name}")
        visiting.add(name)
        for dep in depends[name]:
            visit(dep)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def _kernel_and_modules(kdeb: Path) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The kernel and the modules /init loads, in load order.

    The package has no modules.dep (depmod runs at install), so dependencies come from .modinfo.
    Two passes over the package: holding every module's bytes at once would take hundreds of MiB.
    """
    kernel: bytes | None = None
    depends: dict[str, list[str]] = {}
    for info, data in _members(kdeb):
        if data is None:
            continue
        if re.fullmatch(r"(\./)?boot/vmlinuz-.*", info.name):
            kernel = data
        elif info.name.endswith(".ko"):
            deps = _modinfo(data, "depends") or ""
            depends[_module_name(info.name)] = [d for d in deps.split(",") if d]
    if kernel is None:
        raise TestOsError(f"{kdeb.name} has no /boot/vmlinuz-*")
    order = _load_order(depends, ROOT_MODULES)
    wanted = set(order)
    found: dict[str, bytes] = {}
    for info, data in _members(kdeb):
        if data is not None and info.name.endswith(".ko") and _module_name(info.name) in wanted:
            found[_module_name(info.name)] = data
    return kernel, [(name, found[name]) for name in order]


def _busybox(bdeb: Path) -> bytes:
    for info, data in _members(bdeb):
        if data is not None and info.name.lstrip("./") == "bin/busybox":
            return data
    raise TestOsError(f"{bdeb.name} has no bin/busybox")


def _initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    c = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "sys", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)  # the kernel opens it for init's stdout before devtmpfs exists
    c.file("bin/busybox", busybox, 0o755)
    init = (
        INIT.replace("@BOOTED@", BOOTED_MARKER)
        .replace("@NOCD@", NO_CONFIG_DRIVE_MARKER)
        .replace("@USERDATA@", USER_DATA_MARKER)
    )
    c.file("init", init.encode(), 0o755)
    c.file("etc/modules.order", "".join(f"{name}\n" for name, _ in modules).encode())
    for name, data in modules:
        c.file(f"lib/modules/{name}.ko", data)
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


def _syslinux_version() -> str:
    # mbr.bin and ldlinux.sys come from the host's syslinux: a new version is a new recipe.
    return _run(["dpkg-query", "-W", "-f", "${Version}", "syslinux", "syslinux-common"])


def _systemd_boot_version() -> str:
    # The loader is copied from the host: a new version (or an unpackaged file) is a new recipe.
    return hashlib.sha256(SYSTEMD_BOOT.read_bytes()).hexdigest()


def _mkfs_fat(image: Path, start: int, sectors: int, label: str) -> None:
    mkfs = ["mkfs.vfat", "-F", "16", "-n", label, "--invariant", f"--offset={start}", "-h", str(start)]
    _run([*mkfs, str(image), str(sectors * 512 // 1024)])


def _copy_in(image: Path, offset: int, files: Mapping[str, bytes], dirs: Iterable[str] = ()) -> None:
    """Put `files` (FAT path -> content) into the FAT at byte `offset` of `image`, with mtools."""
    env = {"MTOOLS_SKIP_CHECK": "1"}  # mtools otherwise rejects the FAT's made-up geometry
    target = f"{image}@@{offset}"
    for d in dirs:
        _run(["mmd", "-i", target, f"::/{d}"], env=env)
    staging = image.parent / f".{image.name}.files"
    staging.mkdir()
    try:
        for i, (name, data) in enumerate(files.items()):
            src = staging / str(i)
            src.write_bytes(data)
            _run(["mcopy", "-o", "-i", target, str(src), f"::/{name}"], env=env)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_disk(image: Path, kernel: bytes, initrd: bytes) -> None:
    size = IMAGE_MIB << 20
    with image.open("wb") as f:
        f.truncate(size)
    table = f"label: dos\nlabel-id: 0xb007f0a6\nstart={PARTITION_START}, type=e, bootable\n"
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", str(image)], stdin=table)
    boot_code = MBR_BIN.read_bytes()
    if len(boot_code) > 440:
        raise TestOsError(f"{MBR_BIN} is {len(boot_code)} bytes; MBR boot code has 440")
    with image.open("r+b") as f:
        f.write(boot_code)
    offset = PARTITION_START * 512
    _mkfs_fat(image, PARTITION_START, size // 512 - PARTITION_START, "BFTESTOS")
    files = {"vmlinuz": kernel, "initrd": initrd, "syslinux.cfg": SYSLINUX_CFG.encode()}
    _copy_in(image, offset, files)
    _run(["syslinux", "--install", "--offset", str(offset), str(image)], env={"MTOOLS_SKIP_CHECK": "1"})


def _write_uefi_disk(
    image: Path,
    kernel: bytes,
    initrd: bytes,
    loader: tuple[str, bytes] | None = None,
    entry: str = LOADER_ENTRY,
    image_mib: int = IMAGE_MIB,
) -> None:
    size = image_mib << 20
    with image.open("wb") as f:
        f.truncate(size)
    # The ESP ends a MiB before the image does: the backup GPT lives in the last 33 sectors.
    sectors = size // 512 - 2 * PARTITION_START
    table = (
        f"label: gpt\nlabel-id: {GPT_DISK_GUID}\n"
        f"start={PARTITION_START}, size={sectors}, type={ESP_TYPE}, uuid={ESP_GUID}, name=EFI\n"
    )
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", str(image)], stdin=table)
    _mkfs_fat(image, PARTITION_START, sectors, "BFTESTESP")
    name, data = loader or ("BOOTX64.EFI", SYSTEMD_BOOT.read_bytes())
    files = {
        f"EFI/BOOT/{name}": data,
        "loader/loader.conf": LOADER_CONF.encode(),
        "loader/entries/sample.conf": entry.encode(),
        "vmlinuz": kernel,
        "initrd.gz": initrd,
    }
    _copy_in(image, PARTITION_START * 512, files, dirs=("EFI", "EFI/BOOT", "loader", "loader/entries"))


def build_test_os(cache: Path = ramdisk.DEFAULT_CACHE, firmware: str = "bios") -> Path:
    """The test OS disk image (raw, IMAGE_MIB MiB, sparse), built once per recipe and kept in `cache`.

    `firmware` is "bios" (MBR, syslinux) or "uefi" (GPT, an EFI System Partition, systemd-boot).
    Raises TestOsError when a tool is missing or a step fails, ramdisk.RamdiskError when the Debian
    packages cannot be fetched. Callers must not modify the returned file: copy it.
    """
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {FIRMWARES}, not {firmware!r}")
    missing = missing_tools(firmware)
    if missing:
        raise TestOsError(f"needs {', '.join(missing)}")
    if firmware == "arm64":
        return _build_arm64(cache)
    debs = cache / "debs"
    # A RamdiskError here means Debian's archive was unreachable or apt is missing: callers may skip.
    kdeb = ramdisk.download(ramdisk.kernel_package(), debs)
    bdeb = ramdisk.download("busybox-static", debs)
    if firmware == "bios":  # the recipe (and so the cache key) predates the UEFI variant
        recipe = [kdeb.name, bdeb.name, RECIPE_VERSION, INIT, SYSLINUX_CFG, str(IMAGE_MIB), *ROOT_MODULES]
        recipe.append(_syslinux_version())
        name, write = "test-os", _write_disk
    else:
        recipe = [kdeb.name, bdeb.name, RECIPE_VERSION, INIT, LOADER_CONF, LOADER_ENTRY, str(IMAGE_MIB)]
        recipe += [*ROOT_MODULES, GPT_DISK_GUID, ESP_GUID, _systemd_boot_version()]
        name, write = "test-os-uefi", _write_uefi_disk
    key = hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:16]
    out = cache / f"{name}-{key}.raw"
    if out.is_file():
        return out
    kernel, modules = _kernel_and_modules(kdeb)
    initrd = _initramfs(_busybox(bdeb), modules)
    tmp = cache / f".{name}-{key}.{os.getpid()}.raw"
    try:
        write(tmp, kernel, initrd)
        tmp.rename(out)  # atomic: a concurrent builder either wins or its result is as good
    finally:
        tmp.unlink(missing_ok=True)
    return out


def config_drive_iso(files: Mapping[str, bytes], label: str = CONFIG_DRIVE_LABEL) -> bytes:
    """An ISO9660 image with Rock Ridge and Joliet names, as genisoimage -J -r makes config drives.

    `files` maps paths like "openstack/latest/user_data" to their content.
    """
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, vol_ident=label, joliet=3, rock_ridge="1.09")
    made: set[str] = set()
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                iso.add_directory(iso_path=d.upper(), rr_name=parts[i - 1], joliet_path=d)
                made.add(d)
        data = files[path]
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            iso_path="/" + "/".join(parts).upper() + ";1",
            rr_name=parts[-1],
            joliet_path="/" + "/".join(parts),
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def append_config_drive(disk: Path, iso: bytes) -> int:
    """Put `iso` in a new partition at the end of `disk` (sfdisk --append), as the deploy agent does.

    Returns the partition's start in bytes. The partition is 1 MiB aligned and at least 1 MiB.
    """
    mib = 1 << 20
    size = -(-len(iso) // mib) * mib
    start = (disk.stat().st_size - mib // 2 - size) // mib * mib  # half a MiB spare for a GPT backup
    # "L" is sfdisk's shortcut for Linux in both labels; "83" would be rejected on a GPT disk.
    script = f"start={start // 512}, size={size // 512}, type=L\n"
    _run(["sfdisk", "--append", "--no-reread", "--no-tell-kernel", str(disk)], stdin=script)
    with disk.open("r+b") as f:
        f.seek(start)
        f.write(iso)
    return start


def _build_arm64(cache: Path) -> Path:
    """The arm64 UEFI variant (see the module docstring); arm64 .deb files in their own directory,
    apart from the amd64 ones bootforge.lab.ramdisk.download picks by package name alone."""
    from bootforge.ramdisk import debs as rdebs  # imported late: zstandard

    try:
        apt = rdebs.Apt("arm64", cache)
        kpkg = rdebs.kernel_package(apt)
        got = rdebs.fetch([kpkg, "busybox-static", "systemd-boot-efi"], cache / "debs-arm64", apt=apt)
    except rdebs.RamdiskError as e:
        raise ramdisk.RamdiskError(str(e)) from None
    kdeb, bdeb, sdeb = got[kpkg], got["busybox-static"], got["systemd-boot-efi"]
    recipe = [kdeb.name, bdeb.name, sdeb.name, RECIPE_VERSION, INIT, LOADER_CONF, LOADER_ENTRY_ARM64]
    recipe += [str(ARM64_IMAGE_MIB), *ROOT_MODULES, GPT_DISK_GUID, ESP_GUID]
    key = hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:16]
    out = cache / f"test-os-arm64-{key}.raw"
    if out.is_file():
        return out
    boot = next(
        (d for i, d in _members(sdeb) if d is not None and i.name.lstrip("./") == SYSTEMD_BOOT_AA64), None
    )
    if boot is None:
        raise TestOsError(f"{sdeb.name} has no {SYSTEMD_BOOT_AA64}")
    kernel, modules = _kernel_and_modules(kdeb)
    initrd = _initramfs(_busybox(bdeb), modules)
    tmp = cache / f".test-os-arm64-{key}.{os.getpid()}.raw"
    try:
        _write_uefi_disk(tmp, kernel, initrd, ("BOOTAA64.EFI", boot), LOADER_ENTRY_ARM64, ARM64_IMAGE_MIB)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
