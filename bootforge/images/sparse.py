"""Android sparse images ("simg", libsparse's format) made from raw images: what the agent is served.

A raw image served as it is makes the agent receive (or zstd produce) and check every zero byte: a
4 GiB image holding 300 MiB of data costs most of its time in zeros. Its sparse stream names each
zero run in one 16-byte FILL chunk and carries only the data, in RAW chunks, so a deploy takes time
for the data alone (bootforge/agent/sparse.py decodes it on the fly).

The format, little-endian: a 28-byte file header (magic 0xED26FF3A, version 1.0, the sizes of both
headers, the block size, the image's length in blocks, the number of chunks, checksum 0 = none),
then the chunks in disk order, each a 12-byte header (type, blocks, bytes in the stream including
the header) and its payload. The header counts the chunks, so the image is read twice: once to find
its data (the file's holes, then whole zero BLOCKs inside its data), once to write the stream.
Nothing is held in memory but one CHUNK and the list of data runs.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

from bootforge.images.formats import SECTOR, Bytes, Digests, ImageError, check_cancelled

__all__ = ["BLOCK", "encode", "extents", "write_simg"]

MAGIC = 0xED26FF3A
FILE_HEADER = struct.Struct("<IHHHHIIII")
CHUNK_HEADER = struct.Struct("<HHII")
RAW, FILL = 0xCAC1, 0xCAC2
BLK = 4096  # the block size, when the image is a whole number of them (else 512)
# Zero runs at least this long (and aligned to it) inside the data become FILL chunks.
BLOCK = 64 << 10
CHUNK = 1 << 20  # one read
RAW_MAX = 64 << 20  # one RAW chunk at most: its header declares its length before its data
FILL_MAX_BLOCKS = 0xFFFFFFFF  # chunk_sz is 32 bits
ZERO_BLOCK = bytes(BLOCK)
# zstd level 3: about as fast as a disk writes and a third of the size of typical OS images.
ZSTD_LEVEL = 3


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, has_data) covering [0, size); holes are found with SEEK_DATA / SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
        except OSError as e:
            if e.errno != errno.ENXIO:  # EINVAL: the filesystem cannot tell; read it all
                yield pos, size - pos, True
                return
            data = size  # nothing but a hole up to the end
        if data > pos:
            yield pos, data - pos, False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data, True
        pos = hole


def block_size(size: int) -> int:
    if size <= 0 or size % SECTOR:
        raise ImageError(f"the image is {size} bytes, not a whole number of {SECTOR}-byte sectors")
    return BLK if size % BLK == 0 else SECTOR


def data_runs(fd: int, size: int, blk: int, stop: threading.Event) -> array[int]:
    """[start, end, start, end, ...] of the image's data: its file's data extents (widened to whole
    blocks) less the BLOCKs of zeros in them, on the BLOCK grid. Runs touching each other are one."""
    runs: array[int] = array("q")
    view = memoryview(bytearray(CHUNK))
    covered = 0
    for offset, length, has_data in extents(fd, size):
        if not has_data:
            continue
        pos = max(covered, offset - offset % blk)
        end = min(size, -(-(offset + length) // blk) * blk)
        while pos < end:
            check_cancelled(stop)
            n = _read(fd, view[: min(CHUNK, end - pos)], pos)
            i = 0
            while i < n:
                step = min(BLOCK - (pos + i) % BLOCK, n - i)
                if not ZERO_BLOCK.startswith(view[i : i + step]):
                    _add(runs, pos + i, pos + i + step)
                i += step
            pos += n
        covered = max(covered, end)
    return runs


def _add(runs: array[int], start: int, end: int) -> None:
    if runs and runs[-1] == start:
        runs[-1] = end
    else:
        runs.extend((start, end))


def _read(fd: int, view: memoryview, offset: int) -> int:
    n = os.preadv(fd, [view], offset)
    if n != len(view):
        raise ImageError("the image shrank while it was being encoded")
    return n


def _pieces(runs: array[int], size: int, blk: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) of every chunk, in disk order."""
    pos = 0
    for i in range(0, len(runs), 2):
        start, end = runs[i], runs[i + 1]
        yield from _zeros(pos, start, blk)
        for lo in range(start, end, RAW_MAX):
            yield lo, min(RAW_MAX, end - lo), True
        pos = end
    yield from _zeros(pos, size, blk)


def _zeros(start: int, end: int, blk: int) -> Iterator[tuple[int, int, bool]]:
    step = FILL_MAX_BLOCKS * blk
    for lo in range(start, end, step):
        yield lo, min(step, end - lo), False


def encode(fd: int, size: int, stop: threading.Event) -> Iterator[Bytes]:
    """The sparse stream of the raw image in fd, piece by piece (each valid until the next)."""
    blk = block_size(size)
    runs = data_runs(fd, size, blk, stop)
    chunks = sum(1 for _ in _pieces(runs, size, blk))
    yield FILE_HEADER.pack(MAGIC, 1, 0, FILE_HEADER.size, CHUNK_HEADER.size, blk, size // blk, chunks, 0)
    view = memoryview(bytearray(CHUNK))
    for offset, length, is_data in _pieces(runs, size, blk):
        check_cancelled(stop)
        if not is_data:
            yield CHUNK_HEADER.pack(FILL, 0, length // blk, CHUNK_HEADER.size + 4) + bytes(4)
            continue
        yield CHUNK_HEADER.pack(RAW, 0, length // blk, CHUNK_HEADER.size + length)
        end = offset + length
        while offset < end:
            n = _read(fd, view[: min(CHUNK, end - offset)], offset)
            yield view[:n]
            offset += n


def write_simg(src: Path, dest: Path, stop: threading.Event, compress: bool) -> Digests:
    """src's sparse stream into dest, zstd-compressed (all cores) when asked; returns the digests
    of dest's bytes, computed as they are written."""
    digests = Digests()
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with open(dest, "wb") as out:
            emit: Callable[[Bytes], object] = out.write
            cobj = None
            if compress:
                zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
                cobj = zstd.compressobj()
            for piece in encode(fd, os.fstat(fd).st_size, stop):
                data = cobj.compress(piece) if cobj is not None else piece
                digests.update(data)
                emit(data)
            if cobj is not None:
                tail = cobj.flush()
                digests.update(tail)
                emit(tail)
    finally:
        os.close(fd)
    return digests
