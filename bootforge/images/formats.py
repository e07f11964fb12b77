"""What an image file is, found from its bytes (never from its name), and the digests recorded for it.

Three formats are accepted: raw (a disk's bytes), zstd (raw compressed with zstd) and qcow2. Each is served
to the agent as an Android sparse stream (sparse.py): simg for raw, simg+zstd for the others (images
imported before that are served as they were stored: raw, or zstd). Everything else that can be
told apart cheaply by its first bytes (other hypervisors' formats, archives, other compressors) is refused
with its name: written to a disk as if it were raw, it would give a machine that does not boot, and the
operator would learn it only at the end of a deploy.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias

from bootforge.errors import InvalidInput

RAW = "raw"
QCOW2 = "qcow2"
ZSTD = "zstd"
# Formats of the stream served to the agent (besides RAW and ZSTD, kept for images imported before).
SIMG = "simg"
SIMG_ZSTD = "simg+zstd"

# Enough for every signature below (tar's sits at 257).
HEAD_SIZE = 4096
SECTOR = 512

QCOW_MAGIC = b"QFI\xfb"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Skippable frames (pzstd writes one before each frame): magic 0x184D2A50..5F, little-endian.
SKIPPABLE_LOW, SKIPPABLE_HIGH = 0x184D2A50, 0x184D2A5F
# zstd's default window limit (libzstd's and the `zstd` binary's) is 128 MiB (--long=27): the import
# decompresses with it, and so does an agent given a zstd image imported before sparse streams.
MAX_WINDOW = 1 << 27

# qcow2 incompatible feature bits (docs/interop/qcow2.txt).
QCOW_DIRTY, QCOW_CORRUPT, QCOW_EXTERNAL_DATA = 1 << 0, 1 << 1, 1 << 2

# (offset, magic, what it is): refused as not a disk image bootforge can write.
REFUSED: tuple[tuple[int, bytes, str], ...] = (
    (0, b"KDMV", "VMDK (VMware)"),
    (0, b"COWD", "VMDK (VMware ESX sparse)"),
    (0, b"# Disk DescriptorFile", "a VMDK descriptor (VMware)"),
    (0, b"vhdxfile", "VHDX (Hyper-V)"),
    (0, b"conectix", "VHD (Virtual PC / Hyper-V)"),
    (64, b"\x7f\x10\xda\xbe", "VDI (VirtualBox)"),
    (0, b"QED\x00", "QED (QEMU enhanced disk)"),
    (0, b"\x1f\x8b", "gzip-compressed data"),
    (0, b"\xfd7zXZ\x00", "xz-compressed data"),
    (0, b"\x04\x22\x4d\x18", "lz4-compressed data"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"PK\x03\x04", "a zip archive"),
    (257, b"ustar", "a tar archive"),
    (0, b"\x3a\xff\x26\xed", "an Android sparse image"),
)


Bytes: TypeAlias = bytes | bytearray | memoryview


class ImageError(InvalidInput):
    """The image cannot be imported; the message names the source and the reason."""

    def __init__(self, message: str, field: str = "source") -> None:
        super().__init__(message, field)


def check_cancelled(stop: threading.Event) -> None:
    """Raises at the next step of an import that was cancelled (the catalogue sets `stop`)."""
    if stop.is_set():
        raise ImageError("the import was cancelled")


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    virtual_size: int
    cluster_bits: int


def sniff(head: bytes) -> str:
    """RAW, QCOW2 or ZSTD for the first bytes of a file; ImageError for a format that is refused."""
    if head.startswith(QCOW_MAGIC):
        return QCOW2
    if head.startswith(ZSTD_MAGIC) or _skippable(head):
        return ZSTD
    if head.startswith(b"BZh") and head[4:10] == b"\x31\x41\x59\x26\x53\x59":
        raise ImageError("the image is bzip2-compressed data, not a disk image; decompress it first")
    for offset, magic, what in REFUSED:
        if head[offset : offset + len(magic)] == magic:
            raise ImageError(f"the image is {what}, not a disk image bootforge can write{_hint(what)}")
    return RAW


def _hint(what: str) -> str:
    if "Android" in what:
        return "; expand it with simg2img first (Debian package android-sdk-libsparse-utils)"
    if "compressed" in what or "archive" in what:
        return "; unpack it first, or compress the raw image with zstd"
    return "; convert it with `qemu-img convert -O raw` (or -O qcow2) first"


def _skippable(head: bytes) -> bool:
    return len(head) >= 4 and SKIPPABLE_LOW <= struct.unpack_from("<I", head)[0] <= SKIPPABLE_HIGH


def read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_SIZE)


def check_head(head: bytes) -> str:
    """The format of an image starting with `head`, with every check that needs only those bytes."""
    fmt = sniff(head)
    if fmt == QCOW2:
        parse_qcow2(head)
    return fmt


def parse_qcow2(head: bytes) -> Qcow2Header:
    """The qcow2 header's facts, refusing what bootforge must not convert: backing files (the image is
    not self-contained, and qemu-img would open any host path named in it), external data files (same),
    encryption (there is no key) and images marked corrupt."""
    if len(head) < 72:
        raise ImageError("the qcow2 header is truncated")
    version, backing_offset, backing_size, cluster_bits, size, crypt = struct.unpack_from(">IQIIQI", head, 4)
    if version not in (2, 3):
        raise ImageError(f"qcow2 version {version} is not supported (only 2 and 3)")
    if backing_offset or backing_size:
        raise ImageError("the qcow2 image has a backing file; flatten it first (qemu-img convert -O qcow2)")
    if crypt:
        raise ImageError("the qcow2 image is encrypted; bootforge cannot decrypt it")
    if not 9 <= cluster_bits <= 21:
        raise ImageError(f"the qcow2 header is invalid (cluster_bits {cluster_bits})")
    if version == 3:
        if len(head) < 104:
            raise ImageError("the qcow2 v3 header is truncated")
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        if incompatible & QCOW_EXTERNAL_DATA:
            raise ImageError("the qcow2 image keeps its data in an external file; flatten it first")
        if incompatible & QCOW_CORRUPT:
            raise ImageError("the qcow2 image is marked corrupt; repair it with `qemu-img check -r all`")
    if size <= 0 or size % SECTOR:
        raise ImageError(f"the qcow2 virtual size {size} is not a whole number of {SECTOR}-byte sectors")
    return Qcow2Header(version, size, cluster_bits)


# --- digests ------------------------------------------------------------------------------------------

ZEROS = bytes(1 << 20)


# hashlib releases the GIL on large updates: sha512 runs on another core while sha256 runs here, which
# nearly halves the time an import spends hashing (sha512 is the slower of the two where the CPU has
# SHA extensions for sha256 only).
_HASHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bootforge-digest")
PARALLEL_MIN = 256 << 10


class Digests:
    """sha256 and sha512 of a byte stream, fed as it passes."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._sha512 = hashlib.sha512()
        self.size = 0

    def update(self, data: Bytes) -> None:
        view = memoryview(data)
        if view.nbytes >= PARALLEL_MIN:
            other = _HASHER.submit(self._sha512.update, view)
            self._sha256.update(view)
            other.result()
        else:
            self._sha256.update(view)
            self._sha512.update(view)
        self.size += view.nbytes

    def update_zeros(self, count: int) -> None:
        """As update(bytes(count)), for a hole in a sparse file, without reading it."""
        while count > 0:
            n = min(count, len(ZEROS))
            self.update(memoryview(ZEROS)[:n])
            count -= n

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def sha512(self) -> str:
        return self._sha512.hexdigest()


def file_digests(path: Path, chunk: int = 1 << 20) -> Digests:
    digests = Digests()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digests.update(view[:n])
    return digests


# --- zstd ---------------------------------------------------------------------------------------------


def check_zstd_frames(f: BinaryIO, size: int) -> None:
    """Walk the frame and block headers: the file must be whole frames up to its last byte.

    libzstd's streaming API reports no error for a stream cut at a frame boundary or inside one (it
    simply waits for more input), so a truncated download would otherwise be imported as a shorter image.
    """
    pos = 0
    while pos < size:
        f.seek(pos)
        magic_bytes = f.read(4)
        if len(magic_bytes) < 4:
            raise ImageError(f"the zstd data is truncated at byte {pos}")
        (magic,) = struct.unpack("<I", magic_bytes)
        if SKIPPABLE_LOW <= magic <= SKIPPABLE_HIGH:
            length = f.read(4)
            if len(length) < 4:
                raise ImageError(f"the zstd data is truncated at byte {pos}")
            pos += 8 + struct.unpack("<I", length)[0]
        elif magic_bytes == ZSTD_MAGIC:
            pos = _zstd_frame_end(f, pos)
        else:
            raise ImageError(f"the zstd data has something that is not a zstd frame at byte {pos}")
    if pos != size:
        raise ImageError(f"the zstd data is truncated: its last frame ends at byte {pos}, past the end")


def _zstd_frame_end(f: BinaryIO, start: int) -> int:
    """Offset just past the frame at `start` (RFC 8878 section 3.1.1), checking its window size."""
    f.seek(start + 4)
    descriptor = f.read(1)
    if not descriptor:
        raise ImageError(f"the zstd data is truncated at byte {start + 4}")
    fhd = descriptor[0]
    fcs_flag, single_segment, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    did_size = (0, 1, 2, 4)[dict_flag]
    window = 0
    if not single_segment:
        wd = f.read(1)
        if not wd:
            raise ImageError(f"the zstd data is truncated at byte {start + 5}")
        base = 1 << (10 + (wd[0] >> 3))
        window = base + (base // 8) * (wd[0] & 7)
    f.seek(did_size, io.SEEK_CUR)
    fcs_raw = f.read(fcs_size)
    if single_segment:
        window = int.from_bytes(fcs_raw, "little") + (256 if fcs_size == 2 else 0)
    if window > MAX_WINDOW:
        raise ImageError(
            f"the zstd data needs a {window >> 20} MiB window; bootforge decompresses with windows up to "
            f"{MAX_WINDOW >> 20} MiB: recompress without --long (or with --long=27)"
        )
    pos = f.tell()
    while True:
        header = f.read(3)
        if len(header) < 3:
            raise ImageError(f"the zstd data is truncated in the frame starting at byte {start}")
        value = int.from_bytes(header, "little")
        last, kind, block_size = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            raise ImageError(f"the zstd data has an invalid block in the frame starting at byte {start}")
        pos += 3 + (1 if kind == 1 else block_size)
        f.seek(pos)
        if last:
            return pos + (4 if checksum else 0)


__all__ = [
    "HEAD_SIZE",
    "QCOW2",
    "RAW",
    "SECTOR",
    "SIMG",
    "SIMG_ZSTD",
    "ZEROS",
    "ZSTD",
    "Bytes",
    "Digests",
    "ImageError",
    "Qcow2Header",
    "check_cancelled",
    "check_head",
    "check_zstd_frames",
    "file_digests",
    "parse_qcow2",
    "read_head",
    "sniff",
]
