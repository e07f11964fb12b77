"""Android sparse images (libsparse's format, "simg") decoded as write_image receives them.

The format, little-endian: a 28-byte file header (magic, version 1.x, the sizes of both headers, the
block size, the image's length in blocks, the number of chunks, an optional checksum), then the
chunks in disk order, each a 12-byte header (type, blocks covered, bytes in the stream) and its
payload: RAW (the blocks' bytes), FILL (one 4-byte value repeated), DONT_CARE (nothing) or CRC32.
bootforge serves every new import this way, so that zero runs cost a few bytes of stream, not a
pass of zstd and of the zero check over each of their bytes.

decode runs in write_image's reader thread and turns the stream into what the writer consumes:
CHUNK buffers holding disk bytes from a block boundary on (RAW data is read straight into them, so
O_DIRECT still applies and nothing is copied) and zero ranges. A short zero run between two pieces
of data is zeroed inside the buffer instead, so that buffers stay full and the writer's zero check
finds it again. Everything the stream declares is checked before any of it reaches the disk: a
malformed stream fails the command, naming what is wrong and at which stream offset.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Protocol

from .common import CommandError

__all__ = ["Feed", "decode"]

MAGIC = 0xED26FF3A
# magic, major, minor, file_hdr_sz, chunk_hdr_sz, blk_sz, total_blks, total_chunks, image_checksum
FILE_HEADER = struct.Struct("<IHHHHIIII")
# chunk_type, reserved, chunk_sz (blocks), total_sz (bytes, header included)
CHUNK_HEADER = struct.Struct("<HHII")
RAW, FILL, DONT_CARE, CRC32 = 0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4
FILL_VALUE = 4
# A zero run at most this long, between data in the same buffer, is zeroed in the buffer.
INLINE_ZEROS = 256 * 1024
ZERO_INLINE = bytes(INLINE_ZEROS)


class Feed(Protocol):
    """write_image's side: the stream, its buffers, and where decoded pieces go (in disk order)."""

    def readinto(self, view: memoryview) -> int: ...
    def tap(self, data: bytes | memoryview) -> None: ...  # stream bytes, in order (the checksum)
    def take(self) -> mmap.mmap: ...  # a free buffer
    def give(self, buf: mmap.mmap, n: int, offset: int) -> None: ...  # buf[:n] is the disk at offset
    def zero(self, offset: int, length: int) -> None: ...


@dataclass(frozen=True)
class Header:
    blk_sz: int
    total_blks: int
    total_chunks: int


class _Stream:
    """The stream read in order, its offset counted so that every error can say where."""

    def __init__(self, feed: Feed, url: str) -> None:
        self.feed, self.url, self.pos = feed, url, 0

    def error(self, what: str, at: int | None = None) -> CommandError:
        where = self.pos if at is None else at
        return CommandError(f"the sparse image from {self.url} is malformed at stream offset {where}: {what}")

    def exact(self, n: int, what: str) -> bytes:
        data = bytearray(n)
        self.into(memoryview(data), what)
        return bytes(data)

    def into(self, view: memoryview, what: str) -> None:
        got = 0
        while got < len(view):
            n = self.feed.readinto(view[got:])
            if not n:
                raise self.error(f"the stream ends inside {what}", self.pos + got)
            got += n
        self.feed.tap(view)
        self.pos += got

    def end(self) -> None:
        if self.feed.readinto(memoryview(bytearray(1))):
            raise self.error("bytes follow the last chunk")


class _Out:
    """The buffer being filled: disk bytes from `start` on, `fill` of them so far."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.buf: mmap.mmap | None = None
        self.start = self.fill = 0

    def room(self, offset: int) -> memoryview:
        """Where the disk bytes from `offset` on go: the rest of this buffer, or a new one."""
        if self.buf is not None and (offset != self.start + self.fill or self.fill == len(self.buf)):
            self.flush()
        if self.buf is None:
            self.buf, self.start, self.fill = self.feed.take(), offset, 0
        return memoryview(self.buf)[self.fill :]

    def gap(self, offset: int, length: int) -> None:
        if (
            self.buf is not None
            and offset == self.start + self.fill
            and length <= min(INLINE_ZEROS, len(self.buf) - self.fill)
        ):
            self.buf[self.fill : self.fill + length] = ZERO_INLINE[:length]
            self.fill += length
            return
        self.flush()
        self.feed.zero(offset, length)

    def flush(self) -> None:
        if self.buf is not None:
            buf, self.buf = self.buf, None
            self.feed.give(buf, self.fill, self.start)


def decode(feed: Feed, virtual_size: int, url: str) -> None:
    """Reads a whole sparse stream from feed and hands it back as buffers and zero ranges."""
    stream = _Stream(feed, url)
    header = _file_header(stream, virtual_size)
    out = _Out(feed)
    block = 0
    pattern = b""
    for _ in range(header.total_chunks):
        at = stream.pos
        kind, _reserved, blocks, total = CHUNK_HEADER.unpack(
            stream.exact(CHUNK_HEADER.size, "a chunk header")
        )
        _check_chunk(stream, header, kind, blocks, total, block, at)
        offset, length = block * header.blk_sz, blocks * header.blk_sz
        if kind == RAW:
            _raw(stream, out, offset, length)
        elif kind == FILL and (value := stream.exact(FILL_VALUE, "a fill value")) != bytes(FILL_VALUE):
            if pattern[:FILL_VALUE] != value:
                pattern = value * (len(ZERO_INLINE) // FILL_VALUE)
            _fill(out, pattern, offset, length)
        else:
            # FILL 0 and DONT_CARE alike are zeroed: "don't care" leaves the image's blocks
            # undefined, but a deployed disk must not keep the previous tenant's bytes there.
            out.gap(offset, length)
        block += blocks
    if block != header.total_blks:
        raise stream.error(f"the chunks cover {block} blocks, the header declares {header.total_blks}")
    stream.end()
    out.flush()


def _file_header(stream: _Stream, virtual_size: int) -> Header:
    raw = stream.exact(FILE_HEADER.size, "the file header")
    magic, major, _minor, file_hdr, chunk_hdr, blk_sz, total_blks, chunks, _crc = FILE_HEADER.unpack(raw)
    if magic != MAGIC:
        raise stream.error(f"magic {magic:#010x} is not a sparse image's ({MAGIC:#010x})", 0)
    if major != 1:
        raise stream.error(f"major version {major} is not 1", 0)
    if (file_hdr, chunk_hdr) != (FILE_HEADER.size, CHUNK_HEADER.size):
        raise stream.error(
            f"header sizes {file_hdr}/{chunk_hdr} are not {FILE_HEADER.size}/{CHUNK_HEADER.size}", 0
        )
    if blk_sz == 0 or blk_sz % 4:
        raise stream.error(f"block size {blk_sz} is not a positive multiple of 4", 0)
    if total_blks * blk_sz != virtual_size:
        raise stream.error(
            f"{total_blks} blocks of {blk_sz} bytes are {total_blks * blk_sz} bytes, "
            f"not the image's virtual_size {virtual_size}",
            0,
        )
    return Header(blk_sz, total_blks, chunks)


def _check_chunk(
    stream: _Stream, header: Header, kind: int, blocks: int, total: int, block: int, at: int
) -> None:
    """Refuses a chunk that would not fit the image, before any of it is read."""
    if kind == CRC32:
        raise stream.error("CRC32 chunks are not supported", at)
    expected = {
        RAW: CHUNK_HEADER.size + blocks * header.blk_sz,
        FILL: CHUNK_HEADER.size + FILL_VALUE,
        DONT_CARE: CHUNK_HEADER.size,
    }.get(kind)
    if expected is None:
        raise stream.error(f"unknown chunk type {kind:#06x}", at)
    if total != expected:
        raise stream.error(
            f"a chunk of type {kind:#06x} and {blocks} blocks has total_sz {total}, not {expected}", at
        )
    if block + blocks > header.total_blks:
        raise stream.error(
            f"a chunk covers blocks {block} to {block + blocks}, past the image's {header.total_blks}", at
        )


def _raw(stream: _Stream, out: _Out, offset: int, length: int) -> None:
    while length:
        view = out.room(offset)[:length]
        stream.into(view, "a RAW chunk's data")
        out.fill += len(view)
        offset, length = offset + len(view), length - len(view)


def _fill(out: _Out, pattern: bytes, offset: int, length: int) -> None:
    """A non-zero FILL is written as data. Buffers and blocks are multiples of 4 bytes long, so the
    pattern keeps its phase across pieces."""
    while length:
        view = out.room(offset)[: min(length, len(pattern))]
        view[:] = pattern[: len(view)]
        out.fill += len(view)
        offset, length = offset + len(view), length - len(view)
