"""An image's CPU architecture, read from its EFI System Partition's removable-media boot loader.

UEFI firmware boots a disk with no boot entry from EFI/BOOT/BOOT<arch>.EFI in its ESP (UEFI 2.10,
3.5.1.1): BOOTX64.EFI on x86_64, BOOTAA64.EFI on aarch64. An image made to boot anywhere as its first
boot carries that file, and its PE header says which machine it runs on. The architecture is reported
only when the file name and the PE machine type agree and exactly one architecture is found; an image
with loaders for both, a BIOS-only image (no ESP) or anything this reader does not follow gives None
("any architecture"): a wrong guess would refuse good deploys, a missing one only refuses nothing.

The disk is read with bounded preads of the raw file (GPT or MBR, then FAT12/16/32 directories): a few
KiB of a multi-GiB image, whatever the image holds. Kernels inside the OS's own file systems (ext4,
XFS, ...) are not looked at: reading those file systems reliably is not cheap.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
ESP_GUID = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").bytes_le
MBR_ESP = 0xEF
# The removable-media loader's 8.3 name (padded, as FAT stores it) -> (architecture, PE machine type).
LOADERS = {b"BOOTX64 EFI": ("x86_64", 0x8664), b"BOOTAA64EFI": ("aarch64", 0xAA64)}
MAX_GPT_ENTRIES = 256  # real tables have 128
MAX_DIR_BYTES = 1 << 20  # a directory longer than this is not an ESP's EFI/BOOT
MAX_CHAIN = 4096  # clusters followed in one chain
PE_HEAD = 4096  # the PE signature sits within the first bytes (e_lfanew)


@dataclass(frozen=True)
class Found:
    cpu_arch: str
    evidence: str  # for messages: which file said so


class _Unreadable(Exception):
    """The disk is not laid out as this reader expects: no architecture, never an import failure."""


class _Disk:
    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise _Unreadable(f"read of {length} bytes at {offset} is outside the disk")
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise _Unreadable("short read")
        return data


def detect_cpu_arch(path: Path) -> Found | None:
    """The architecture of the raw disk image at `path`, or None when it cannot be told reliably."""
    with open(path, "rb") as f:
        disk = _Disk(f.fileno(), os.fstat(f.fileno()).st_size)
        found: dict[str, str] = {}
        try:
            for start in _esp_offsets(disk):
                try:
                    found.update(_loaders(disk, start))
                except (_Unreadable, struct.error):
                    continue
        except (_Unreadable, struct.error):
            return None
    if len(found) != 1:
        return None
    ((arch, evidence),) = found.items()
    return Found(arch, evidence)


def _esp_offsets(disk: _Disk) -> list[int]:
    """Byte offsets of the disk's EFI System Partitions (GPT first, else an MBR type 0xEF)."""
    mbr = disk.read(0, SECTOR)
    if disk.size >= 2 * SECTOR and disk.read(SECTOR, 8) == b"EFI PART":
        header = disk.read(SECTOR, 92)
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if not 128 <= entry_size <= 4096 or entry_size % 8:
            raise _Unreadable("GPT entry size")
        table = disk.read(entries_lba * SECTOR, min(count, MAX_GPT_ENTRIES) * entry_size)
        starts = []
        for i in range(min(count, MAX_GPT_ENTRIES)):
            entry = table[i * entry_size : (i + 1) * entry_size]
            if entry[:16] == ESP_GUID:
                first, last = struct.unpack_from("<QQ", entry, 32)
                if first <= last:
                    starts.append(first * SECTOR)
        return starts
    if mbr[510:512] != b"\x55\xaa":
        return []
    starts = []
    for i in range(4):
        entry = mbr[446 + 16 * i : 462 + 16 * i]
        lba, sectors = struct.unpack_from("<II", entry, 8)
        if entry[4] == MBR_ESP and sectors:
            starts.append(lba * SECTOR)
    return starts


@dataclass(frozen=True)
class _Fat:
    disk: _Disk
    start: int
    sector: int
    cluster: int  # bytes per cluster
    fat: int  # byte offset of the first FAT
    bits: int  # 12, 16 or 32
    root: int  # FAT32: root directory's cluster; else 0
    root_dir: tuple[int, int]  # FAT12/16: (offset, length) of the fixed root directory
    data: int  # byte offset of cluster 2
    clusters: int

    @classmethod
    def open(cls, disk: _Disk, start: int) -> _Fat:
        bpb = disk.read(start, SECTOR)
        if bpb[510:512] != b"\x55\xaa":
            raise _Unreadable("no boot sector signature")
        sector, per_cluster, reserved, fats, root_entries, total16 = struct.unpack_from("<HBHBHH", bpb, 11)
        fat16_size = struct.unpack_from("<H", bpb, 22)[0]
        total32, fat32_size, root_cluster = struct.unpack_from("<II4xI", bpb, 32)
        if sector not in (512, 1024, 2048, 4096) or per_cluster not in {1 << i for i in range(8)}:
            raise _Unreadable("not a FAT boot sector")
        fat_size = fat16_size or fat32_size
        total = total16 or total32
        root_len = root_entries * 32
        root_sectors = -(-root_len // sector)
        data_sector = reserved + fats * fat_size + root_sectors
        if not fats or not fat_size or total <= data_sector:
            raise _Unreadable("FAT geometry")
        clusters = (total - data_sector) // per_cluster
        # The FAT type is its cluster count's, never its label's (Microsoft's FAT specification).
        bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        return cls(
            disk,
            start,
            sector,
            sector * per_cluster,
            start + reserved * sector,
            bits,
            root_cluster if bits == 32 else 0,
            (start + (reserved + fats * fat_size) * sector, root_len),
            start + data_sector * sector,
            clusters,
        )

    def _next(self, cluster: int) -> int | None:
        value: int
        if self.bits == 12:
            raw: int = struct.unpack("<H", self.disk.read(self.fat + cluster * 3 // 2, 2))[0]
            value = raw >> 4 if cluster & 1 else raw & 0xFFF
            end = 0xFF8
        elif self.bits == 16:
            value, end = struct.unpack("<H", self.disk.read(self.fat + cluster * 2, 2))[0], 0xFFF8
        else:
            value = struct.unpack("<I", self.disk.read(self.fat + cluster * 4, 4))[0] & 0x0FFFFFFF
            end = 0x0FFFFFF8
        if value >= end:
            return None
        if not 2 <= value < self.clusters + 2:
            raise _Unreadable("cluster chain leaves the file system")
        return value

    def read_chain(self, first: int, limit: int) -> bytes:
        """Up to `limit` bytes of the cluster chain starting at `first`."""
        out = bytearray()
        cluster: int | None = first
        seen: set[int] = set()
        while cluster is not None and len(out) < limit:
            # A chain that comes back to a cluster is corrupt (it would never end).
            if not 2 <= cluster < self.clusters + 2 or cluster in seen or len(seen) >= MAX_CHAIN:
                raise _Unreadable("bad cluster chain")
            seen.add(cluster)
            out += self.disk.read(self.data + (cluster - 2) * self.cluster, self.cluster)
            cluster = self._next(cluster)
        return bytes(out[:limit])

    def root_entries(self) -> bytes:
        if self.bits == 32:
            return self.read_chain(self.root, MAX_DIR_BYTES)
        offset, length = self.root_dir
        return self.disk.read(offset, min(length, MAX_DIR_BYTES))


def _entries(directory: bytes) -> dict[bytes, tuple[int, int, int]]:
    """8.3 name -> (attributes, first cluster, size) of a directory's live short entries."""
    out: dict[bytes, tuple[int, int, int]] = {}
    for i in range(0, len(directory) - 31, 32):
        entry = directory[i : i + 32]
        if entry[0] == 0:
            break
        attr = entry[11]
        if entry[0] == 0xE5 or attr & 0x0F == 0x0F or attr & 0x08:  # deleted, long name, volume label
            continue
        high, low, size = struct.unpack_from("<H4xHI", entry, 20)
        out[entry[:11]] = (attr, high << 16 | low, size)
    return out


def _subdir(fat: _Fat, directory: bytes, name: bytes) -> bytes:
    entry = _entries(directory).get(name)
    if entry is None or not entry[0] & 0x10:
        raise _Unreadable(f"no {name.decode().strip()} directory")
    return fat.read_chain(entry[1], MAX_DIR_BYTES)


def _loaders(disk: _Disk, start: int) -> dict[str, str]:
    """Architecture -> evidence for each EFI/BOOT/BOOT<arch>.EFI whose PE machine matches its name."""
    fat = _Fat.open(disk, start)
    boot = _subdir(fat, _subdir(fat, fat.root_entries(), b"EFI        "), b"BOOT       ")
    found = {}
    for name, (attr, first, size) in _entries(boot).items():
        if name not in LOADERS or attr & 0x10 or size < 64:
            continue
        arch, machine = LOADERS[name]
        head = fat.read_chain(first, min(size, PE_HEAD))
        if head[:2] != b"MZ":
            continue
        pe = struct.unpack_from("<I", head, 0x3C)[0]
        if pe + 6 > len(head) or head[pe : pe + 4] != b"PE\0\0":
            continue
        if struct.unpack_from("<H", head, pe + 4)[0] == machine:
            shown = name[:8].decode().strip() + "." + name[8:].decode().strip()
            found[arch] = f"EFI/BOOT/{shown} (PE machine {machine:#06x}) in its EFI System Partition"
    return found


__all__ = ["Found", "detect_cpu_arch"]
