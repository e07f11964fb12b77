"""write_image with Android sparse streams (simg, simg+zstd), against regular files as disks.

Streams come from bootforge's own encoder (what the catalogue serves), from the peer img2simg
(Debian android-sdk-libsparse-utils), or are built chunk by chunk here (DONT_CARE, non-zero FILL,
malformed streams). What is checked is what lands on the disk file.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import ImageServer, attached_loop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_disk_write import (
    PwriteSpy,
    build_image,
    configdrive_iso,
    encode,
    new_disk,
    read,
    run_write,
    sha256,
    table_of,
)

from bootforge.agent.common import CommandError
from bootforge.images.sparse import write_simg

MiB = 1 << 20
KiB = 1 << 10
RAW, FILL, DONT_CARE, CRC32 = 0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4


def simg(raw: Path, out: Path, compress: bool = False) -> Path:
    write_simg(raw, out, threading.Event(), compress=compress)
    return out


def spec(server: ImageServer, served: Path, virtual_size: int, fmt: str = "simg") -> dict[str, Any]:
    return {
        "url": server.url(served.name),
        "format": fmt,
        "size": served.stat().st_size,
        "virtual_size": virtual_size,
        "checksum_algo": "sha256",
        "checksum": sha256(served),
    }


@dataclass
class Stream:
    """A sparse stream built chunk by chunk, with its disk bytes alongside."""

    blk: int = 4096
    chunks: list[bytes] = field(default_factory=list)
    disk: bytearray = field(default_factory=bytearray)
    header: dict[str, int] = field(default_factory=dict)

    def raw(self, data: bytes) -> Stream:
        assert len(data) % self.blk == 0
        self.chunks.append(struct.pack("<HHII", RAW, 0, len(data) // self.blk, 12 + len(data)) + data)
        self.disk += data
        return self

    def fill(self, value: bytes, blocks: int) -> Stream:
        self.chunks.append(struct.pack("<HHII", FILL, 0, blocks, 16) + value)
        self.disk += value * (blocks * self.blk // 4)
        return self

    def dont_care(self, blocks: int) -> Stream:
        self.chunks.append(struct.pack("<HHII", DONT_CARE, 0, blocks, 12))
        self.disk += bytes(blocks * self.blk)
        return self

    def bytes(self, **header: int) -> bytes:
        fields = {
            "magic": 0xED26FF3A,
            "major": 1,
            "minor": 0,
            "file_hdr_sz": 28,
            "chunk_hdr_sz": 12,
            "blk_sz": self.blk,
            "total_blks": len(self.disk) // self.blk,
            "total_chunks": len(self.chunks),
            "image_checksum": 0,
        }
        fields.update(header)
        return struct.pack("<IHHHHIIII", *fields.values()) + b"".join(self.chunks)


def serve(server: ImageServer, name: str, data: bytes) -> Path:
    path = server.root / name
    path.write_bytes(data)
    return path


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- round trips through bootforge's encoder and the agent --------------------------------------

# (image size, [(offset, length) of random data]): zero runs at the head, at the tail, across the
# HEAD (1 MiB) and buffer (4 MiB) boundaries, data runs longer than a buffer (one RAW chunk
# longer than 4 MiB), short zero runs between data, sizes that are not a multiple of 4096.
LAYOUTS = {
    "data-at-both-ends": (16 * MiB, [(0, 3 * MiB), (13 * MiB, 3 * MiB)]),
    "zeros-at-both-ends": (16 * MiB, [(2 * MiB, MiB), (9 * MiB, 100 * KiB)]),
    "across-head-and-buffers": (
        24 * MiB,
        [(MiB - 4096, 8192), (4 * MiB - 64 * KiB, 128 * KiB), (8 * MiB - 4096, 4096 + 5 * MiB)],
    ),
    "short-gaps": (12 * MiB, [(o * 192 * KiB, 128 * KiB) for o in range(50)]),
    "one-long-raw-chunk": (20 * MiB, [(512 * KiB, 13 * MiB + 4096)]),
    "not-4k-sectors": (9 * MiB + 1536, [(0, 1000), (5 * MiB + 512, 2048), (9 * MiB + 1024, 512)]),
    "all-zeros": (3 * MiB, []),
    "all-data": (6 * MiB + 4096, [(0, 6 * MiB + 4096)]),
}


def layout_image(path: Path, size: int, runs: list[tuple[int, int]], seed: int = 5) -> bytes:
    data = bytearray(size)
    for i, (offset, length) in enumerate(runs):
        data[offset : offset + length] = random_bytes(length, seed + i)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in runs:
            f.seek(offset)
            f.write(data[offset : offset + length])
    return bytes(data)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_encoder_to_agent_round_trip(server: ImageServer, tmp_path: Path, name: str) -> None:
    size, runs = LAYOUTS[name]
    image = layout_image(tmp_path / "img.raw", size, runs)
    served = simg(tmp_path / "img.raw", server.root / "img.simg")
    disk = new_disk(tmp_path / "disk", 32 * MiB, fill=0xAA)
    result, progress = run_write([disk], spec(server, served, size))

    assert read(disk, 0, size) == image
    assert read(disk, size) == b"\xaa" * (32 * MiB - size), "bytes past the image must stay as they were"
    assert result["checksum"] == sha256(served)
    assert result["bytes_written"] + result["bytes_zeroed"] == size
    data = sum(length for _, length in runs)
    # Written: the held-back head, the data, and at most the short zero runs kept between data.
    assert result["bytes_written"] <= min(size, MiB) + data + 50 * 64 * KiB
    dones = [done for done, _, _ in progress.calls]
    assert dones == sorted(dones) and dones[-1] == size


def test_simg_zstd_round_trip(server: ImageServer, tmp_path: Path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("needs zstd (Debian package zstd)")
    size, runs = LAYOUTS["across-head-and-buffers"]
    image = layout_image(tmp_path / "img.raw", size, runs)
    served = simg(tmp_path / "img.raw", server.root / "img.simg.zst", compress=True)
    disk = new_disk(tmp_path / "disk", 32 * MiB, fill=0xAA)
    result, _ = run_write([disk], spec(server, served, size, "simg+zstd"))
    assert read(disk, 0, size) == image
    assert result["checksum"] == sha256(served), "the checksum is of the stream as served"


def test_a_sparse_image_costs_its_data(server: ImageServer, tmp_path: Path) -> None:
    """256 MiB holding 2 MiB of data: the stream carries the data, the disk gets it and zero ranges."""
    size = 256 * MiB
    image = layout_image(tmp_path / "img.raw", size, [(0, MiB), (200 * MiB, MiB)])
    served = simg(tmp_path / "img.raw", server.root / "img.simg")
    assert served.stat().st_size < 2 * MiB + 4096
    disk = new_disk(tmp_path / "disk", size)
    result, _ = run_write([disk], spec(server, served, size))
    assert result["bytes_written"] == 2 * MiB
    assert result["bytes_zeroed"] == size - 2 * MiB
    assert read(disk, 200 * MiB, MiB) == image[200 * MiB : 201 * MiB]
    assert os.stat(disk).st_blocks * 512 <= 3 * MiB


# --- the peer: img2simg's streams --------------------------------------------------------------


def needs_libsparse(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (Debian package android-sdk-libsparse-utils)")


# img2simg takes block sizes from 1024 up: 1024 makes an image that is not a whole number of 4096s.
@pytest.mark.parametrize("block", [4096, 1024])
def test_img2simg_stream_is_written_as_the_original(server: ImageServer, tmp_path: Path, block: int) -> None:
    needs_libsparse("img2simg")
    size = 12 * MiB + (0 if block == 4096 else 1024)
    image = layout_image(tmp_path / "img.raw", size, [(0, 700 * KiB), (5 * MiB, 4 * MiB + 4096)])
    served = server.root / "peer.simg"
    subprocess.run(["img2simg", str(tmp_path / "img.raw"), str(served), str(block)], check=True)
    disk = new_disk(tmp_path / "disk", 16 * MiB, fill=0x5A)
    run_write([disk], spec(server, served, size))
    assert read(disk, 0, size) == image
    assert read(disk, size) == b"\x5a" * (16 * MiB - size)


# --- chunk kinds -------------------------------------------------------------------------------


def test_dont_care_and_fill_zero_clear_the_previous_bytes(server: ImageServer, tmp_path: Path) -> None:
    stream = (
        Stream()
        .raw(random_bytes(64 * KiB, 1))
        .dont_care(16)  # in the head
        .raw(random_bytes(2 * MiB, 2))
        .dont_care(1024)  # 4 MiB past the head
        .fill(bytes(4), 300)
        .raw(random_bytes(4096, 3))
        .dont_care(7)  # at the end
    )
    served = serve(server, "dc.simg", stream.bytes())
    disk = new_disk(tmp_path / "disk", 16 * MiB, fill=0xEE)
    result, _ = run_write([disk], spec(server, served, len(stream.disk)))
    # The expected disk has zeros wherever DONT_CARE was: the old bytes must not stay.
    assert read(disk, 0, len(stream.disk)) == bytes(stream.disk)
    assert result["bytes_zeroed"] >= 4 * MiB


def test_non_zero_fill_is_written(server: ImageServer, tmp_path: Path) -> None:
    stream = (
        Stream()
        .fill(b"\x01\x02\x03\x04", 100)  # in the head
        .raw(random_bytes(MiB, 4))
        .fill(b"\xff\xff\xff\xff", 2000)  # across buffers
        .raw(random_bytes(8192, 5))
        .fill(b"\xde\xad\xbe\xef", 3)
    )
    served = serve(server, "fill.simg", stream.bytes())
    disk = new_disk(tmp_path / "disk", 16 * MiB)
    run_write([disk], spec(server, served, len(stream.disk)))
    assert read(disk, 0, len(stream.disk)) == bytes(stream.disk)


def test_header_bytes_are_hashed(server: ImageServer, tmp_path: Path) -> None:
    """Two streams for the same disk bytes, differing only in the file header's checksum field:
    the digest of one does not pass for the other."""
    stream = Stream().raw(random_bytes(2 * MiB, 6)).dont_care(10)
    expected = hashlib.sha256(stream.bytes()).hexdigest()
    served = serve(server, "h.simg", stream.bytes(image_checksum=1))
    disk = new_disk(tmp_path / "disk", 8 * MiB, fill=0x11)
    with pytest.raises(CommandError, match=f"image checksum mismatch: expected sha256 {expected}"):
        run_write([disk], {**spec(server, served, len(stream.disk)), "checksum": expected})
    assert read(disk, 0, MiB) == b"\x11" * MiB


def test_checksum_mismatch_holds_the_head_back(server: ImageServer, tmp_path: Path) -> None:
    size, runs = LAYOUTS["across-head-and-buffers"]
    layout_image(tmp_path / "img.raw", size, runs)
    served = simg(tmp_path / "img.raw", server.root / "img.simg")
    disk = new_disk(tmp_path / "disk", 32 * MiB, fill=0x11)
    wrong = "0" * 64
    with pytest.raises(CommandError) as err:
        run_write([disk], {**spec(server, served, size), "checksum": wrong})
    assert str(err.value) == f"image checksum mismatch: expected sha256 {wrong}, got {sha256(served)}"
    assert read(disk, 0, MiB) == b"\x11" * MiB


def test_configdrive_with_a_sparse_image(server: ImageServer, tmp_path: Path) -> None:
    build_image(tmp_path / "img.raw", [("data", 2), ("zero", 4), ("data", 2)], table="gpt")
    image = (tmp_path / "img.raw").read_bytes()
    served = simg(tmp_path / "img.raw", server.root / "img.simg")
    iso = configdrive_iso(b"#cloud-config\n")
    disk = new_disk(tmp_path / "disk", 100 * MiB, fill=0x66)
    result, _ = run_write([disk], spec(server, served, len(image)), configdrive=encode(iso))
    cd = table_of(disk)["partitions"][1]
    assert result["configdrive_partition"] == cd["node"]
    assert read(disk, cd["start"] * 512, len(iso)) == iso
    assert read(disk, MiB, len(image) - 2 * MiB) == image[MiB:-MiB]


def test_configdrive_needs_a_partition_table_before_anything_is_written(
    server: ImageServer, tmp_path: Path
) -> None:
    # The head comes in pieces (RAW, FILL, RAW); the check waits for the whole of it.
    stream = Stream().raw(random_bytes(8192, 7)).fill(bytes(4), 100).raw(random_bytes(3 * MiB, 8))
    served = serve(server, "notable.simg", stream.bytes())
    disk = new_disk(tmp_path / "disk", 80 * MiB)
    with pytest.raises(CommandError, match="has no partition table"):
        run_write([disk], spec(server, served, len(stream.disk)), configdrive=encode(configdrive_iso(b"x")))
    assert os.stat(disk).st_blocks == 0


def test_block_device_gets_the_data_through_o_direct(
    server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 24 * MiB
    image = layout_image(tmp_path / "img.raw", size, [(0, 2 * MiB), (5 * MiB + 4096, 6 * MiB - 8192)])
    served = simg(tmp_path / "img.raw", server.root / "img.simg")
    backing = new_disk(tmp_path / "backing", 64 * MiB, fill=0x77)
    spy = PwriteSpy(monkeypatch)
    with attached_loop(backing) as device:
        result, _ = run_write([device], spec(server, served, size))
    assert read(backing, 0, size) == image
    assert read(backing, size, MiB) == b"\x77" * MiB
    assert spy.direct_fds and spy.direct_fds[0] >= 0, "the block device refused O_DIRECT"
    # All the data past the held-back head went past the page cache.
    assert spy.bytes_to(direct=True) == MiB + 6 * MiB - 8192
    assert result["bytes_written"] == MiB + MiB + 6 * MiB - 8192


# --- malformed streams -------------------------------------------------------------------------


def valid() -> Stream:
    return Stream().raw(random_bytes(MiB + 8192, 9)).dont_care(64).raw(random_bytes(8192, 10))


def chunk_header(kind: int, blocks: int, total: int) -> bytes:
    return struct.pack("<HHII", kind, 0, blocks, total)


def malformed_cases() -> list[tuple[str, bytes, int, str]]:
    """(name, stream, virtual_size, expected message)."""
    good = valid()
    size = len(good.disk)
    data = good.bytes()
    first_chunk_end = 28 + 12 + MiB + 8192
    cases = [
        ("bad magic", good.bytes(magic=0x12345678), size, "at stream offset 0: magic 0x12345678"),
        ("major 2", good.bytes(major=2), size, "at stream offset 0: major version 2 is not 1"),
        ("file header size", good.bytes(file_hdr_sz=32), size, "header sizes 32/12 are not 28/12"),
        ("chunk header size", good.bytes(chunk_hdr_sz=16), size, "header sizes 28/16 are not 28/12"),
        ("block size", good.bytes(blk_sz=1022), size, "block size 1022 is not a positive multiple of 4"),
        ("size", data, size + 4096, f"are {size} bytes, not the image's virtual_size {size + 4096}"),
        ("truncated header", data[:20], size, "at stream offset 20: the stream ends inside the file header"),
        (
            "truncated raw",
            data[: 28 + 12 + 5000],
            size,
            "at stream offset 5040: the stream ends inside a RAW",
        ),
        ("left over", data + b"x", size, f"at stream offset {len(data)}: bytes follow the last chunk"),
        (
            "too few chunks",
            good.bytes(total_chunks=2),
            size,
            "the chunks cover 322 blocks, the header declares 324",
        ),
        (
            "too many chunks",
            good.bytes(total_chunks=4),
            size,
            f"at stream offset {len(data)}: the stream ends inside a chunk header",
        ),
    ]
    bad_chunks = [
        ("crc32", chunk_header(CRC32, 0, 16) + bytes(4), "CRC32 chunks are not supported"),
        ("unknown type", chunk_header(0xCAC5, 1, 12), "unknown chunk type 0xcac5"),
        (
            "raw total_sz",
            chunk_header(RAW, 2, 12 + 4096) + bytes(8192),
            "a chunk of type 0xcac1 and 2 blocks has total_sz 4108, not 8204",
        ),
        (
            "fill total_sz",
            chunk_header(FILL, 2, 20) + bytes(8),
            "a chunk of type 0xcac2 and 2 blocks has total_sz 20, not 16",
        ),
        (
            "dont_care total_sz",
            chunk_header(DONT_CARE, 2, 16),
            "a chunk of type 0xcac3 and 2 blocks has total_sz 16, not 12",
        ),
        (
            "past the image",
            chunk_header(DONT_CARE, 3, 12),
            "a chunk covers blocks 322 to 325, past the image's 324",
        ),
    ]
    for name, chunk, message in bad_chunks:
        # The valid stream's first two chunks, then the bad one in place of the last.
        stream = data[: first_chunk_end + 12] + chunk
        cases.append((name, stream, size, f"at stream offset {first_chunk_end + 12}: {message}"))
    return cases


MALFORMED = malformed_cases()


@pytest.mark.parametrize(("name", "stream", "size", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_streams_fail_saying_what_and_where(
    server: ImageServer, tmp_path: Path, name: str, stream: bytes, size: int, message: str
) -> None:
    served = serve(server, "bad.simg", stream)
    disk = new_disk(tmp_path / "disk", 4 * MiB, fill=0x3C)
    with pytest.raises(CommandError) as err:
        run_write([disk], spec(server, served, size))
    assert message in str(err.value), name
    assert str(err.value).startswith(f"the sparse image from {server.url('bad.simg')} is malformed")
    assert read(disk, 0, MiB) == b"\x3c" * MiB, "the head is held back"
    assert read(disk, size) == b"\x3c" * (4 * MiB - size), "nothing is written past the image"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=len(valid().bytes())),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(valid().bytes()) - 1), st.integers(1, 255)),
        max_size=3,
    ),
    # Where corruption matters most: the headers.
    header_flips=st.lists(
        st.tuples(
            st.sampled_from([*range(28), *range(28 + 12 + MiB + 8192, 28 + 12 + MiB + 8192 + 24)]),
            st.integers(1, 255),
        ),
        max_size=2,
    ),
)
def test_corrupt_streams_only_ever_fail_with_a_command_error(
    server: ImageServer,
    tmp_path: Path,
    cut: int,
    flips: list[tuple[int, int]],
    header_flips: list[tuple[int, int]],
) -> None:
    good = valid()
    stream = bytearray(good.bytes())
    for at, xor in flips + header_flips:
        stream[at] ^= xor
    del stream[cut:]
    served = serve(server, "fuzz.simg", bytes(stream))
    disk = new_disk(tmp_path / "disk", 4 * MiB, fill=0x3C)
    size = len(good.disk)
    try:
        # The checksum is the served stream's: what stops a bad stream is the decoder.
        run_write([disk], spec(server, served, size))
    except CommandError:
        assert read(disk, 0, MiB) == b"\x3c" * MiB, "the head is held back"
    assert read(disk, size) == b"\x3c" * (4 * MiB - size), "nothing is written past the image"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "simg", "virtual_size": None}, "needs a positive virtual_size"),
        ({"format": "simg+zst"}, "format 'simg+zst' is not one of raw, zstd, simg, simg+zstd"),
    ],
)
def test_sparse_image_arguments(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    image = {"url": "http://127.0.0.1:9/x", "size": MiB, "checksum": "a" * 64, **change}
    with pytest.raises(CommandError, match=message.replace("+", r"\+")):
        run_write([new_disk(tmp_path / "disk", 8 * MiB)], image)
