"""Reading Android sparse streams in tests: the chunk list, and the disk bytes they stand for."""

from __future__ import annotations

import struct

FILE_HEADER = struct.Struct("<IHHHHIIII")
CHUNK_HEADER = struct.Struct("<HHII")
RAW, FILL, DONT_CARE = 0xCAC1, 0xCAC2, 0xCAC3
KIND = {RAW: "raw", FILL: "fill", DONT_CARE: "dont_care"}


def chunks(stream: bytes) -> tuple[tuple[int, ...], list[tuple[str, int, bytes]]]:
    """(the file header's fields, [(kind, blocks, payload)]); asserts the stream is well formed."""
    header = FILE_HEADER.unpack_from(stream)
    magic, major, _minor, file_hdr, chunk_hdr, _blk, total_blks, total_chunks, _crc = header
    assert (magic, major, file_hdr, chunk_hdr) == (0xED26FF3A, 1, 28, 12)
    pos, found, blocks = FILE_HEADER.size, [], 0
    for _ in range(total_chunks):
        kind, _, count, total = CHUNK_HEADER.unpack_from(stream, pos)
        found.append((KIND[kind], count, stream[pos + 12 : pos + total]))
        pos += total
        blocks += count
    assert pos == len(stream) and blocks == total_blks
    return header, found


def expand(stream: bytes) -> bytes:
    header, found = chunks(stream)
    blk = header[5]
    out = bytearray()
    for kind, count, payload in found:
        if kind == "raw":
            assert len(payload) == count * blk
            out += payload
        elif kind == "fill":
            out += payload * (count * blk // 4)
        else:
            out += bytes(count * blk)
    return bytes(out)
