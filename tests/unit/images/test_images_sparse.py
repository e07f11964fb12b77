"""bootforge's sparse stream encoder: what it writes, and what the peer (simg2img) makes of it."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard
from simg_util import chunks, expand

from bootforge.images import sparse
from bootforge.images.formats import ImageError
from bootforge.images.sparse import write_simg

MiB = 1 << 20
KiB = 1 << 10


def image(path: Path, size: int, runs: list[tuple[int, int]], dense: bool = False) -> bytes:
    """Random data at runs, zeros elsewhere: holes, or written zeros when dense."""
    data = bytearray(size)
    rng = random.Random(size)
    for offset, length in runs:
        data[offset : offset + length] = rng.randbytes(length)
    if dense:
        path.write_bytes(data)
        return bytes(data)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in runs:
            f.seek(offset)
            f.write(data[offset : offset + length])
    return bytes(data)


def encode(src: Path, tmp_path: Path, compress: bool = False) -> bytes:
    out = tmp_path / "out.simg"
    digests = write_simg(src, out, threading.Event(), compress=compress)
    stream = out.read_bytes()
    assert digests.size == len(stream)
    assert digests.sha256 == hashlib.sha256(stream).hexdigest()
    assert digests.sha512 == hashlib.sha512(stream).hexdigest()
    return stream


LAYOUTS = {
    "holes": (16 * MiB, [(0, 5000), (3 * MiB, 2 * MiB), (16 * MiB - 4096, 4096)]),
    "zeros-at-ends": (8 * MiB, [(MiB + 4096, 8192)]),
    "512-byte-sectors": (5 * MiB + 512, [(512, 1024), (2 * MiB + 1536, 3000), (5 * MiB, 512)]),
    "empty": (MiB, []),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("dense", [False, True], ids=["sparse-file", "zeros-written"])
def test_stream_expands_to_the_image(tmp_path: Path, name: str, dense: bool) -> None:
    size, runs = LAYOUTS[name]
    data = image(tmp_path / "img", size, runs, dense)
    stream = encode(tmp_path / "img", tmp_path)
    assert expand(stream) == data
    header, found = chunks(stream)
    assert header[5] == (4096 if size % 4096 == 0 else 512)
    # The stream carries the data, in RAW chunks, and names the zeros in 16-byte FILL chunks.
    assert {kind for kind, _, _ in found} <= {"raw", "fill"}
    assert all(payload == bytes(4) for kind, _, payload in found if kind == "fill")
    raw = sum(len(payload) for kind, _, payload in found if kind == "raw")
    assert raw <= sum(length for _, length in runs) + len(runs) * 2 * 64 * KiB
    # Neighbouring chunks are never of the same kind: runs are merged (no RAW_MAX split here).
    assert all(a[0] != b[0] for a, b in itertools.pairwise(found))


def test_peer_expands_the_stream_to_the_image(tmp_path: Path) -> None:
    if shutil.which("simg2img") is None:
        pytest.skip("needs simg2img (Debian package android-sdk-libsparse-utils)")
    for name, (size, runs) in LAYOUTS.items():
        data = image(tmp_path / "img", size, runs)
        (tmp_path / "img.simg").write_bytes(encode(tmp_path / "img", tmp_path))
        subprocess.run(["simg2img", str(tmp_path / "img.simg"), str(tmp_path / "back")], check=True)
        assert (tmp_path / "back").read_bytes() == data, name


def test_long_data_is_cut_into_raw_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse, "RAW_MAX", MiB)
    data = image(tmp_path / "img", 8 * MiB, [(64 * KiB, 3 * MiB + 8192)])
    stream = encode(tmp_path / "img", tmp_path)
    assert expand(stream) == data
    _, found = chunks(stream)
    assert [(kind, blocks) for kind, blocks, _ in found] == [
        ("fill", 16),
        ("raw", 256),
        ("raw", 256),
        ("raw", 256),
        ("raw", 2),
        ("fill", 2048 - 16 - 770),
    ]


def test_zero_blocks_inside_data_become_fill(tmp_path: Path) -> None:
    # Written zeros, not holes: one aligned 64 KiB block of them, and a shorter run that stays data.
    data = image(
        tmp_path / "img", MiB, [(0, 128 * KiB), (192 * KiB, 100 * KiB), (300 * KiB, 724 * KiB)], True
    )
    stream = encode(tmp_path / "img", tmp_path)
    assert expand(stream) == data
    _, found = chunks(stream)
    assert [(kind, blocks) for kind, blocks, _ in found] == [("raw", 32), ("fill", 16), ("raw", 208)]


def test_filesystems_without_seek_hole_are_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image(tmp_path / "img", 4 * MiB, [(MiB, 4096)])
    real = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "no SEEK_DATA here")
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    stream = encode(tmp_path / "img", tmp_path)
    assert expand(stream) == data
    assert len(stream) < 64 * KiB + 4096


def test_compressed_stream_is_the_stream_compressed(tmp_path: Path) -> None:
    size, runs = LAYOUTS["holes"]
    data = image(tmp_path / "img", size, runs)
    plain = encode(tmp_path / "img", tmp_path)
    packed = encode(tmp_path / "img", tmp_path, compress=True)
    unpacked = zstandard.ZstdDecompressor().stream_reader(packed, read_across_frames=True).read()
    assert unpacked == plain and expand(unpacked) == data
    if shutil.which("zstd"):  # the agent's decompressor reads it too
        out = subprocess.run(["zstd", "-dc"], input=packed, check=True, capture_output=True).stdout
        assert out == plain


def test_cancel_and_refusals(tmp_path: Path) -> None:
    image(tmp_path / "img", MiB, [(0, 4096)])
    stop = threading.Event()
    stop.set()
    with pytest.raises(ImageError, match="cancelled"):
        write_simg(tmp_path / "img", tmp_path / "out", stop, compress=False)
    (tmp_path / "odd").write_bytes(bytes(1000))
    with pytest.raises(ImageError, match="not a whole number of 512-byte sectors"):
        write_simg(tmp_path / "odd", tmp_path / "out", threading.Event(), compress=False)
