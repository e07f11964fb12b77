"""The file side of imports: sparse copies, the served sparse streams (simg, simg+zstd), URL downloads,
refusals and clean-up."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard
from simg_util import chunks, expand

from bootforge.config import ImageSettings
from bootforge.images.formats import Digests, ImageError
from bootforge.images.store import BLOCK, ImageStore, SparseWriter, Stored, extents, redact_url

UUID = "0b7f6a5e-1d2c-4b3a-9f8e-7d6c5b4a3f2e"
MiB = 1 << 20


def sparse_image(path: Path, size: int = 64 * MiB) -> bytes:
    """A raw disk with data at the start, in the middle and at the end, and holes between."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, size - MiB):
            f.seek(offset)
            f.write(os.urandom(MiB))
    return path.read_bytes()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def needs_sparse_files(path: Path) -> None:
    probe = path / "probe"
    with open(probe, "wb") as f:
        f.truncate(16 * MiB)
    if allocated(probe) >= 16 * MiB:
        pytest.skip(f"needs a filesystem with sparse files under {path}")
    probe.unlink()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    # Files of the test's directory and loopback URLs are allowed here; test_images_sources.py and
    # test_hardening_images.py check the refusals.
    return ImageStore(
        tmp_path / "root", ImageSettings(import_dirs=[tmp_path], allow_url_networks=["127.0.0.0/8"])
    )


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a directory; yields (directory, base URL)."""
    served = tmp_path / "www"
    served.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_sparse_writer_leaves_zero_blocks_as_holes(tmp_path: Path) -> None:
    needs_sparse_files(tmp_path)
    path = tmp_path / "out"
    data = b"x" * 100 + bytes(8 * MiB) + b"y" * (BLOCK + 3) + bytes(4 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        writer = SparseWriter(fd)
        # Odd-sized pieces, as a download delivers them.
        for i in range(0, len(data), 12_345):
            writer.write(data[i : i + 12_345])
        assert writer.close() == len(data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert allocated(path) < 1 * MiB


def test_extents_cover_the_file_and_find_its_holes(tmp_path: Path) -> None:
    needs_sparse_files(tmp_path)
    path = tmp_path / "img"
    data = sparse_image(path, 16 * MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = list(extents(fd, len(data)))
    finally:
        os.close(fd)
    assert found[0][0] == 0 and sum(length for _, length, _ in found) == len(data)
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(found))
    holes = [(offset, length) for offset, length, has_data in found if not has_data]
    assert sum(length for _, length in holes) >= 12 * MiB
    assert all(data[offset : offset + length] == bytes(length) for offset, length in holes)


def test_hole_digests_equal_hashing_zeros() -> None:
    d = Digests()
    d.update(b"abc")
    d.update_zeros(3 * MiB + 5)
    whole = b"abc" + bytes(3 * MiB + 5)
    assert (d.size, d.sha256, d.sha512) == (
        len(whole),
        hashlib.sha256(whole).hexdigest(),
        hashlib.sha512(whole).hexdigest(),
    )


def served_stream(store: ImageStore, stored: Stored) -> bytes:
    """The served file's bytes, checked against the recorded stream digests."""
    stream = (store.root / stored.stream_path).read_bytes()
    assert stored.stream_size == len(stream)
    assert stored.stream_sha256 == hashlib.sha256(stream).hexdigest()
    assert stored.stream_sha512 == hashlib.sha512(stream).hexdigest()
    return stream


def unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()


def test_raw_import_is_served_as_a_sparse_stream(store: ImageStore, tmp_path: Path) -> None:
    needs_sparse_files(tmp_path)
    src = tmp_path / "disk.img"
    data = sparse_image(src)
    stored = store.import_image(UUID, str(src))
    assert stored.stream_path == f"images/{UUID}.simg"
    assert (stored.disk_format, stored.stream_format) == ("raw", "simg")
    # sha256/sha512 are the original's; stream_* the served file's.
    assert stored.size == stored.virtual_size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.sha512 == hashlib.sha512(data).hexdigest()
    stream = served_stream(store, stored)
    assert expand(stream) == data
    # 3 MiB of data in a 64 MiB image: the stream carries the data, not the zeros.
    assert len(stream) < 3 * MiB + 4096
    assert [kind for kind, _, _ in chunks(stream)[1]] == ["raw", "fill", "raw", "fill", "raw"]
    assert sorted(p.name for p in store.dir.iterdir()) == [".partial", f"{UUID}.simg"]
    assert list((store.dir / ".partial").iterdir()) == []


def test_zstd_is_served_as_a_compressed_sparse_stream(store: ImageStore, tmp_path: Path) -> None:
    raw = os.urandom(MiB) + bytes(3 * MiB) + os.urandom(4096)
    packed = zstandard.ZstdCompressor(level=3).compress(raw)
    src = tmp_path / "disk.bin"  # the name says nothing; the content does
    src.write_bytes(packed)
    stored = store.import_image(UUID, str(src))
    assert (stored.disk_format, stored.stream_format) == ("zstd", "simg+zstd")
    assert stored.stream_path == f"images/{UUID}.simg.zst"
    assert stored.virtual_size == len(raw)
    assert stored.size == len(packed)
    assert stored.sha256 == hashlib.sha256(packed).hexdigest()
    assert expand(unzstd(served_stream(store, stored))) == raw
    assert list((store.dir / ".partial").iterdir()) == []


def test_qcow2_becomes_a_compressed_sparse_stream_of_the_same_bytes(
    store: ImageStore, tmp_path: Path
) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img (Debian package qemu-utils)")
    raw = tmp_path / "disk.raw"
    data = sparse_image(raw, 32 * MiB)
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    original = qcow2.read_bytes()

    stored = store.import_image(UUID, str(qcow2))
    served = store.root / stored.stream_path
    assert (stored.disk_format, stored.stream_format) == ("qcow2", "simg+zstd")
    assert stored.stream_path == f"images/{UUID}.simg.zst"
    assert stored.size == len(original) and stored.virtual_size == len(data)
    # sha256/sha512 are the original qcow2's; stream_* the served file's.
    assert stored.sha256 == hashlib.sha256(original).hexdigest()
    assert stored.sha512 == hashlib.sha512(original).hexdigest()
    stream = unzstd(served_stream(store, stored))
    assert expand(stream) == data
    # The agent's decompressor (the zstd binary) reads it too, when installed.
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc", str(served)], check=True, capture_output=True).stdout
        assert out == stream
    assert sorted(p.name for p in store.dir.iterdir()) == [".partial", f"{UUID}.simg.zst"]
    assert list((store.dir / ".partial").iterdir()) == []


def test_url_import_from_loopback_http(store: ImageStore, http_dir: tuple[Path, str]) -> None:
    served_dir, base = http_dir
    data = os.urandom(2 * MiB) + bytes(6 * MiB)
    (served_dir / "disk.img").write_bytes(data)
    stored = store.import_image(UUID, f"{base}/disk.img")
    assert stored.disk_format == "raw" and stored.virtual_size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert expand(served_stream(store, stored)) == data


def test_url_errors_name_the_url_without_secrets(store: ImageStore, http_dir: tuple[Path, str]) -> None:
    _, base = http_dir
    url = base.replace("http://", "http://admin:s3cret@") + "/missing.img?token=abc"
    with pytest.raises(ImageError, match="HTTP 404") as info:
        store.import_image(UUID, url)
    assert "s3cret" not in info.value.message and "abc" not in info.value.message
    assert "/missing.img" in info.value.message
    assert not list(store.dir.glob(f"{UUID}*"))


def test_unreachable_url(store: ImageStore) -> None:
    with pytest.raises(ImageError, match=re.escape("downloading http://127.0.0.1:9/x failed")):
        store.import_image(UUID, "http://127.0.0.1:9/x")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"root:x:0:0:root:/root:/bin/bash\n", "not a whole number of 512-byte sectors"),
        (b"", "0 bytes"),
        (zstandard.ZstdCompressor().compress(b"QFI\xfb" + bytes(1020)), "holds a qcow2 image"),
        (b"\x1f\x8b\x08" + bytes(1021), "gzip"),
        (b"\x3a\xff\x26\xed\x01\x00\x00\x00" + bytes(1016), "an Android sparse image.*simg2img"),
        (zstandard.ZstdCompressor().compress(os.urandom(1000)), "not a whole number of 512-byte sectors"),
    ],
)
def test_refused_files_leave_nothing_behind(
    store: ImageStore, tmp_path: Path, content: bytes, message: str
) -> None:
    src = tmp_path / "src"
    src.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        store.import_image(UUID, str(src))
    assert [p.name for p in store.dir.iterdir()] == [".partial"]
    assert list((store.dir / ".partial").iterdir()) == []


def test_unreadable_sources(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"cannot read .*No such file"):
        store.import_image(UUID, str(tmp_path / "nope"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        store.import_image(UUID, str(tmp_path / "adir"))


def test_cancelled_import_stops_and_cleans_up(store: ImageStore, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(4 * MiB))
    stop = threading.Event()
    stop.set()
    with pytest.raises(ImageError, match="cancelled"):
        store.import_image(UUID, str(src), stop)
    assert list((store.dir / ".partial").iterdir()) == []
    assert not list(store.dir.glob(f"{UUID}*"))


def test_remove_deletes_every_file_of_an_image(store: ImageStore, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(MiB))
    stored = store.import_image(UUID, str(src))
    store.remove(UUID)
    assert not (store.root / stored.stream_path).exists()


def test_redact_url() -> None:
    assert redact_url("https://u:pw@host/a/b.img?sig=x&e=1") == "https://u:***@host/a/b.img?***"
    assert redact_url("http://host:8080/b.img") == "http://host:8080/b.img"
    assert redact_url("http://user@host/b.img") == "http://user@host/b.img"
