"""Read a VM's disk file after a deploy or undeploy: partition tables, leftover metadata, the config drive.

Pure Python on the file (no loop devices, no root), 512-byte sectors as QEMU's raw disks have.

* :func:`partition_table` -- a JSON-able summary (MBR entries, GPT headers and entries, digests of
  the first and last MiB) to compare before and after an operation that must not touch the disk.
* :func:`is_blank_metadata` -- no MBR signature, no GPT at either end, no filesystem signature where
  a partition began (the table taken before the wipe) nor at any MiB boundary.
* :func:`config_drive_files` / :func:`find_config_drive` -- the ISO9660 partition labelled config-2
  and its files, read with pycdlib.

MBR logical partitions (extended / EBR chains) are not followed: bootforge's images and config
drives only use primary partitions.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pycdlib

__all__ = [
    "BlankCheck",
    "Partition",
    "config_drive_files",
    "find_config_drive",
    "is_blank_metadata",
    "partition_table",
    "partitions",
]

SECTOR = 512
MIB = 1 << 20
GPT_SIGNATURE = b"EFI PART"
MBR_SIGNATURE = b"\x55\xaa"
PROTECTIVE_MBR = 0xEE
EMPTY_GUID = str(uuid.UUID(int=0))
ISO_PVD = 0x8000  # ISO9660 system area: 16 sectors of 2048 bytes, then the primary volume descriptor
CONFIG_DRIVE_LABELS = ("config-2", "CONFIG-2")


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    scheme: str  # "mbr" or "gpt"


def _pread(f: BinaryIO, offset: int, length: int) -> bytes:
    if offset < 0:
        return b""
    return os.pread(f.fileno(), length, offset)


def _digest(f: BinaryIO, offset: int, length: int) -> str:
    return hashlib.sha256(_pread(f, max(offset, 0), length)).hexdigest()


def _mbr(sector0: bytes) -> dict[str, Any] | None:
    if len(sector0) < SECTOR or sector0[510:512] != MBR_SIGNATURE:
        return None
    entries = []
    for i in range(4):
        status, ptype, start, count = struct.unpack_from("<B3xB3xII", sector0, 446 + 16 * i)
        if ptype == 0 and start == 0 and count == 0:
            continue
        entries.append(
            {"number": i + 1, "bootable": status == 0x80, "type": ptype, "start": start, "sectors": count}
        )
    (disk_id,) = struct.unpack_from("<I", sector0, 440)
    return {"disk_id": f"0x{disk_id:08x}", "partitions": entries}


def _gpt_header(f: BinaryIO, lba: int) -> dict[str, Any] | None:
    raw = _pread(f, lba * SECTOR, SECTOR)
    if raw[:8] != GPT_SIGNATURE:
        return None
    (hsize,) = struct.unpack_from("<I", raw, 12)
    hsize = min(max(hsize, 92), SECTOR)
    (crc,) = struct.unpack_from("<I", raw, 16)
    crc_ok = zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:hsize]) == crc
    current, backup, first, last = struct.unpack_from("<QQQQ", raw, 24)
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", raw, 72)
    table = _pread(f, entries_lba * SECTOR, min(count * esize, MIB)) if esize >= 128 else b""
    parts = []
    for i in range(len(table) // esize if esize >= 128 else 0):
        e = table[i * esize : (i + 1) * esize]
        ptype = str(uuid.UUID(bytes_le=e[:16]))
        if ptype == EMPTY_GUID:
            continue
        first_lba, last_lba, attrs = struct.unpack_from("<QQQ", e, 32)
        name = e[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        guid = str(uuid.UUID(bytes_le=e[16:32]))
        parts.append(
            {"number": i + 1, "type": ptype, "guid": guid, "first_lba": first_lba, "last_lba": last_lba}
            | {"attributes": attrs, "name": name}
        )
    return {
        "lba": current,
        "backup_lba": backup,
        "first_usable": first,
        "last_usable": last,
        "disk_guid": str(uuid.UUID(bytes_le=raw[56:72])),
        "entries_lba": entries_lba,
        "header_crc_ok": crc_ok,
        "entries_crc_ok": zlib.crc32(table) == ecrc,
        "partitions": parts,
    }


def partition_table(path: Path) -> dict[str, Any]:
    """What a partitioner would see on `path`, plus digests of its first and last MiB.

    Two tables compare equal when neither the first nor the last MiB, nor any partition entry, changed.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        mbr = _mbr(_pread(f, 0, SECTOR))
        primary = _gpt_header(f, 1)
        backup = _gpt_header(f, size // SECTOR - 1) if size >= 2 * SECTOR else None
        return {
            "size": size,
            "mbr": mbr,
            "gpt": None if primary is None and backup is None else {"primary": primary, "backup": backup},
            "head_sha256": _digest(f, 0, MIB),
            "tail_sha256": _digest(f, size - MIB, MIB),
        }


def _partitions_of(table: dict[str, Any]) -> list[Partition]:
    found: list[Partition] = []
    gpt = table["gpt"]
    header = gpt and (gpt["primary"] or gpt["backup"])
    if header:
        for p in header["partitions"]:
            size = (p["last_lba"] - p["first_lba"] + 1) * SECTOR
            found.append(Partition(p["number"], p["first_lba"] * SECTOR, size, "gpt"))
    mbr = table["mbr"]
    if mbr is not None and not any(p["type"] == PROTECTIVE_MBR for p in mbr["partitions"]):
        for p in mbr["partitions"]:
            found.append(Partition(p["number"], p["start"] * SECTOR, p["sectors"] * SECTOR, "mbr"))
    return found


def partitions(path: Path) -> list[Partition]:
    """Partitions of `path`: GPT entries (primary header, else backup) and non-protective MBR entries."""
    return _partitions_of(partition_table(path))


def _ext_superblock(sb: bytes) -> bool:
    if len(sb) < 0x50 or sb[0x38:0x3A] != b"\x53\xef":
        return False
    fields: tuple[int, int, int] = struct.unpack_from("<I20xI48xI", sb)  # at 0x00, 0x18, 0x4C
    inodes, log_block, rev = fields
    return inodes > 0 and log_block <= 6 and rev <= 1  # a stray 0xEF53 alone is too weak a sign


def _filesystem_at(f: BinaryIO, offset: int) -> str | None:
    """The filesystem whose signature begins at `offset`, if any (the signatures wipefs erases)."""
    head = _pread(f, offset, 4096)
    if head[:4] == b"XFSB":
        return "xfs"
    if head[:6] == b"LUKS\xba\xbe":
        return "crypto_LUKS"
    if head[510:512] == MBR_SIGNATURE and (
        head[0x36:0x39] == b"FAT" or head[0x52:0x57] == b"FAT32" or head[3:8] in (b"MSWIN", b"MSDOS")
    ):
        return "vfat"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    if _ext_superblock(_pread(f, offset + 1024, 0x50)):
        return "ext2/3/4"
    if _pread(f, offset + ISO_PVD + 1, 5) == b"CD001":
        return "iso9660"
    if _pread(f, offset + 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    return None


@dataclass(frozen=True)
class BlankCheck:
    """Truthy when the disk holds no metadata; `found` says what is left and where."""

    found: tuple[str, ...]

    def __bool__(self) -> bool:
        return not self.found


def _candidate_starts(size: int, before: dict[str, Any] | None) -> Iterator[tuple[int, str]]:
    if before is not None:
        for p in _partitions_of(before):
            yield p.start, f"start of former {p.scheme} partition {p.number}"
    for offset in range(0, size, MIB):
        yield offset, "MiB boundary"


def is_blank_metadata(path: Path, before: dict[str, Any] | None = None) -> BlankCheck:
    """Check that `path` holds no partition table and no filesystem signature.

    `before` is a :func:`partition_table` of the disk taken before it was cleaned, so the starts of
    the partitions it had are checked even when they are not MiB aligned. Use as
    ``assert (check := is_blank_metadata(disk, before)), check.found``.
    """
    size = path.stat().st_size
    found: list[str] = []
    with path.open("rb") as f:
        if _pread(f, 510, 2) == MBR_SIGNATURE:
            found.append("MBR signature 55aa at byte 510")
        last = size // SECTOR - 1
        for lba, where in ((1, "primary"), (last, "backup")):
            if _pread(f, lba * SECTOR, 8) == GPT_SIGNATURE:
                found.append(f"GPT {where} header at LBA {lba}")
        seen: set[int] = set()
        for offset, why in _candidate_starts(size, before):
            if offset in seen:
                continue
            seen.add(offset)
            fs = _filesystem_at(f, offset)
            if fs is not None:
                found.append(f"{fs} signature at byte {offset} ({why})")
    return BlankCheck(tuple(found))


def _iso_label(f: BinaryIO, start: int) -> str | None:
    pvd = _pread(f, start + ISO_PVD, 2048)
    if pvd[1:6] != b"CD001":
        return None
    return pvd[40:72].decode("ascii", errors="replace").rstrip(" \0")


def _iso_files(image: bytes) -> dict[str, bytes]:
    """Every file of an ISO by its Rock Ridge name, else Joliet, else plain ISO9660 (";1" dropped)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        if iso.has_rock_ridge():
            facade: Any = iso.get_rock_ridge_facade()
        elif iso.has_joliet():
            facade = iso.get_joliet_facade()
        else:
            facade = iso.get_iso9660_facade()
        files: dict[str, bytes] = {}
        for dirpath, _, names in facade.walk("/"):
            for name in names:
                full = f"{dirpath.rstrip('/')}/{name}"
                out = io.BytesIO()
                facade.get_file_from_iso_fp(out, full)
                files[full.lstrip("/").split(";", 1)[0].rstrip(".").lower()] = out.getvalue()
        return files
    finally:
        iso.close()


def config_drive_files(path: Path) -> dict[str, bytes] | None:
    """Files of the config drive partition on `path` ("openstack/latest/user_data": ...), or None."""
    with path.open("rb") as f:
        for part in partitions(path):
            if _iso_label(f, part.start) not in CONFIG_DRIVE_LABELS:
                continue
            pvd = _pread(f, part.start + ISO_PVD, 2048)
            (blocks,) = struct.unpack_from("<I", pvd, 80)
            (block_size,) = struct.unpack_from("<H", pvd, 128)
            length = min(blocks * block_size, part.size)
            return _iso_files(_pread(f, part.start, length))
    return None


def find_config_drive(path: Path) -> bytes | None:
    """The config drive's openstack/latest/user_data; None without a config drive or without user_data."""
    files = config_drive_files(path)
    return None if files is None else files.get("openstack/latest/user_data")
