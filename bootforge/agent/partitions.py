"""Partition tables through sfdisk, and the config drive partition at the end of the disk.

The config drive (cloud-init ConfigDrive v2: an ISO 9660 image labelled config-2) arrives as
base64 of gzip. It becomes a new partition after the image's own ones, as close to the end of the
disk as 1 MiB alignment allows, so the image keeps the space between for its partitions to grow
into. A GPT image is smaller than the disk, so its backup header sits in the middle of the disk:
sfdisk moves it to the end first, which also moves the last usable sector out to the disk's end.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from .common import CommandError
from .disks import Disk, DiskIO

__all__ = [
    "Table",
    "TableEntry",
    "add_configdrive",
    "configdrive_reserve",
    "decode_configdrive",
    "read_table",
]

MiB = 1 << 20
CONFIGDRIVE_MIN = 64 * MiB
# Bigger than any real config drive, small enough that a gzip bomb cannot exhaust a ramdisk.
CONFIGDRIVE_MAX = 256 * MiB
ALIGN = MiB
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SFDISK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TableEntry:
    node: str
    start: int  # sectors
    size: int  # sectors


@dataclass(frozen=True)
class Table:
    label: str  # "gpt" or "dos"
    sector_size: int
    last_lba: int | None  # GPT's last usable sector; None for MBR
    partitions: tuple[TableEntry, ...]


def decode_configdrive(value: str) -> bytes:
    """The ISO image from base64 (of gzip, or of the ISO itself, as Ironic also accepts)."""
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CommandError(f"the config drive is not valid base64: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=31)
        try:
            iso = inflater.decompress(raw, CONFIGDRIVE_MAX + 1)
        except zlib.error as exc:
            raise CommandError(f"the config drive is not valid gzip: {exc}") from exc
        if len(iso) > CONFIGDRIVE_MAX:
            raise CommandError(f"the config drive is larger than {CONFIGDRIVE_MAX} bytes uncompressed")
        if not inflater.eof:
            raise CommandError("the config drive's gzip stream is truncated")
    else:
        iso = raw
    if iso[32769:32774] != b"CD001":
        raise CommandError("the config drive is not an ISO 9660 image (no CD001 volume descriptor)")
    return iso


def partition_size(iso_len: int) -> int:
    return max(CONFIGDRIVE_MIN, -(-iso_len // ALIGN) * ALIGN)


def configdrive_reserve(iso_len: int) -> int:
    """Disk space the config drive takes beyond the image: its partition, plus up to 1 MiB lost to
    aligning the partition's start and the GPT backup header (33 sectors) after it."""
    return partition_size(iso_len) + 2 * MiB


def has_partition_table(head: bytes) -> bool:
    """MBR and GPT (whose protective MBR carries it too) both end sector 0 with 55 AA."""
    return head[510:512] == b"\x55\xaa"


def _sfdisk(args: list[str], disk: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        raise CommandError(f"sfdisk is not installed, so the partition table of {disk} cannot be changed")
    try:
        return subprocess.run(
            [sfdisk, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=SFDISK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"sfdisk {' '.join(args)} did not finish within {SFDISK_TIMEOUT_S:.0f} s") from exc


def _failed(what: str, result: subprocess.CompletedProcess[str]) -> CommandError:
    detail = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
    return CommandError(f"{what}: sfdisk said: {detail}")


def read_table(path: Path) -> Table | None:
    """The partition table on `path`, or None when it has none."""
    result = _sfdisk(["--json", str(path)], str(path))
    if result.returncode != 0:
        if "does not contain a recognized partition table" in result.stderr:
            return None
        raise _failed(f"reading the partition table of {path} failed", result)
    try:
        table = json.loads(result.stdout)["partitiontable"]
        entries = tuple(
            TableEntry(p["node"], int(p["start"]), int(p["size"])) for p in table.get("partitions", [])
        )
        last = table.get("lastlba")
        return Table(str(table["label"]), int(table.get("sectorsize", 512)), last and int(last), entries)
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"sfdisk --json printed an unexpected table for {path}: {exc!r}") from exc


def _place(table: Table, disk: Disk, size: int) -> tuple[int, int]:
    """(start, size) in sectors for the new partition: aligned, and ending at the last usable sector."""
    ss = table.sector_size
    last = table.last_lba if table.last_lba is not None else disk.size // ss - 1
    align = ALIGN // ss
    start = (last + 1 - size // ss) // align * align
    used = max((p.start + p.size for p in table.partitions), default=0)
    if start < used or start <= 0:
        raise CommandError(
            f"no room for a {size // MiB} MiB config drive partition at the end of {disk.name}: "
            f"its partitions end at byte {used * ss} and it has {disk.size} bytes"
        )
    return start, last - start + 1


def add_configdrive(disk: Disk, dio: DiskIO, iso: bytes) -> str:
    """Append the config drive partition, write the ISO into it, return the partition's node."""
    table = read_table(disk.path)
    if table is None:
        raise CommandError(f"cannot add a config drive partition to {disk.name}: it has no partition table")
    if table.label == "gpt":
        result = _sfdisk(["--relocate", "gpt-bak-std", str(disk.path)], disk.name)
        if result.returncode != 0:
            raise _failed(f"moving the GPT backup header to the end of {disk.name} failed", result)
        table = read_table(disk.path)
        if table is None:
            raise CommandError(f"sfdisk --relocate left {disk.name} without a partition table")
    elif table.label != "dos":
        raise CommandError(
            f"cannot add a config drive partition to a {table.label!r} partition table on {disk.name}"
        )
    start, sectors = _place(table, disk, partition_size(len(iso)))
    kind = f'type={LINUX_FS_GUID}, name="config-2"' if table.label == "gpt" else "type=83"
    # The kernel is told once, by BLKRRPART after the ISO is written, not by sfdisk halfway.
    args = ["--append", "--no-reread", "--no-tell-kernel", str(disk.path)]
    result = _sfdisk(args, disk.name, f"start={start}, size={sectors}, {kind}\n")
    if result.returncode != 0:
        raise _failed(f"adding the config drive partition to {disk.name} failed", result)
    after = read_table(disk.path)
    node = next((p.node for p in after.partitions if p.start == start), None) if after else None
    if node is None:
        raise CommandError(f"sfdisk did not create the config drive partition on {disk.name}")
    offset, length = start * table.sector_size, sectors * table.sector_size
    dio.write(iso, offset)
    # The space after the ISO still holds whatever the disk had: clear its tail so no stale
    # signature at the end of the partition (md 0.90, a GPT backup) confuses blkid.
    tail = max(offset + len(iso), offset + length - MiB)
    dio.zero(tail, offset + length - tail)
    return node
