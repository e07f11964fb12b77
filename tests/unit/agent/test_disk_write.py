"""write_image against regular files as disks, fed by a loopback HTTP server.

Images are built here: random data (seeded) with runs of zeros, optionally partitioned with
sfdisk, compressed with the zstd program. What is checked is what lands on the disk file: its
bytes, its holes (st_blocks), its partition table (sfdisk --json).
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import ImageServer, attached_loop, needs

from bootforge.agent import disks, write
from bootforge.agent.common import CommandError, Context

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 64 * 1024
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def build_image(path: Path, layout: list[tuple[str, int]], table: str | None = None, seed: int = 1) -> Path:
    """layout: ("data", MiB) and ("zero", MiB) runs; table: "gpt" or "dos" writes one 2 MiB
    partition with sfdisk (into the first MiB and, for GPT, the last 33 sectors)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for kind, mib in layout:
            for _ in range(mib):
                f.write(rng.randbytes(MiB) if kind == "data" else bytes(MiB))
    if table is not None:
        needs("sfdisk", "fdisk")
        sfdisk(path, f"label: {table}\nstart=2048, size=4096, type=L\n")
    return path


def sfdisk(path: Path, script: str) -> None:
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True)


def table_of(path: Path) -> dict[str, Any]:
    out = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)["partitiontable"]
    return result


def zstd(path: Path) -> Path:
    needs("zstd", "zstd")
    out = path.with_name(path.name + ".zst")
    subprocess.run(["zstd", "-q", "-f", str(path), "-o", str(out)], check=True)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def new_disk(path: Path, size: int, fill: int | None = None) -> Path:
    """A disk file: sparse, or every byte `fill` (so that skipped writes would show)."""
    if fill is None:
        with open(path, "wb") as f:
            f.truncate(size)
    else:
        block = bytes([fill]) * MiB
        with open(path, "wb") as f:
            for _ in range(size // MiB):
                f.write(block)
    return path


def image_args(
    server: ImageServer, served: Path, raw: Path, fmt: str = "raw", checksum: str | None = None
) -> dict[str, Any]:
    return {
        "url": server.url(served.name),
        "format": fmt,
        "size": served.stat().st_size,
        "virtual_size": raw.stat().st_size,
        "checksum_algo": "sha256",
        "checksum": checksum or sha256(served),
    }


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))


def run_write(disks: list[Path], image: dict[str, Any], **extra: Any) -> tuple[dict[str, Any], Progress]:
    progress = Progress()
    args = {"image": image, "root_device_hints": {}, "configdrive": None, **extra}
    return write.run(args, Context(disks=disks), progress), progress


def read(path: Path, offset: int = 0, length: int | None = None) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(-1 if length is None else length)


@pytest.fixture
def served_dir(server: ImageServer) -> Path:
    return server.root


def test_raw_image_lands_byte_for_byte_and_zero_runs_are_zeroed(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    image = build_image(served_dir / "disk.raw", [("data", 3), ("zero", 24), ("data", 2), ("zero", 1)])
    disk = new_disk(tmp_path / "disk", 40 * MiB, fill=0xAA)
    result, progress = run_write([disk], image_args(server, image, image))

    size = image.stat().st_size
    assert read(disk, 0, size) == image.read_bytes()
    assert read(disk, size) == b"\xaa" * (40 * MiB - size), "bytes past the image must stay as they were"
    assert result["root_device"] == str(disk)
    assert result["checksum"] == sha256(image)
    assert result["bytes_zeroed"] == 25 * MiB
    assert result["bytes_written"] == 5 * MiB
    assert result["configdrive_partition"] is None
    # The zeroed range is a hole now: only the data and the untouched tail are allocated.
    assert os.stat(disk).st_blocks * 512 <= (5 + 10) * MiB + MiB
    dones = [done for done, _, _ in progress.calls]
    assert dones == sorted(dones) and dones[-1] == size
    assert {total for _, total, _ in progress.calls} == {size}
    assert progress.calls[-1][2] == f"writing {disk}"


def test_sparse_disk_stays_sparse(server: ImageServer, served_dir: Path, tmp_path: Path) -> None:
    image = build_image(served_dir / "sparse.raw", [("data", 1), ("zero", 64), ("data", 1)])
    disk = new_disk(tmp_path / "disk", 80 * MiB)
    result, _ = run_write([disk], image_args(server, image, image))
    assert read(disk, 0, image.stat().st_size) == image.read_bytes()
    assert os.stat(disk).st_blocks * 512 <= 3 * MiB
    assert result["bytes_zeroed"] == 64 * MiB


@pytest.mark.parametrize("size", [100, MiB + 1000, 4 * MiB, 8 * MiB, 9 * MiB - 512])
def test_image_sizes_around_the_head_and_chunk_boundaries(
    server: ImageServer, served_dir: Path, tmp_path: Path, size: int
) -> None:
    image = served_dir / "odd.raw"
    data = bytearray(random.Random(size).randbytes(size))
    if size > 4 * BLOCK:
        data[size // 2 : size // 2 + 2 * BLOCK] = bytes(2 * BLOCK)  # a zero run
    image.write_bytes(data)
    disk = new_disk(tmp_path / "disk", 16 * MiB, fill=0x99)
    spec = {**image_args(server, image, image), "checksum_algo": "sha512"}
    spec["checksum"] = hashlib.sha512(data).hexdigest()
    result, _ = run_write([disk], spec)
    assert read(disk, 0, size) == bytes(data)
    assert read(disk, size, 4096) == b"\x99" * 4096
    assert result["bytes_written"] + result["bytes_zeroed"] == size


def test_background_writeback_keeps_every_byte(
    server: ImageServer, served_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writeback runs every WRITEBACK_STEP bytes written through the page cache, so O_DIRECT is
    # off here; a small step runs it many times while writing.
    monkeypatch.setattr(disks, "WRITEBACK_STEP", MiB)
    monkeypatch.setattr(disks, "_open_direct", lambda path: -1)
    image = build_image(served_dir / "wb.raw", [("data", 9), ("zero", 4), ("data", 7)])
    disk = new_disk(tmp_path / "disk", 24 * MiB)
    result, _ = run_write([disk], image_args(server, image, image))
    assert read(disk, 0, image.stat().st_size) == image.read_bytes()
    assert result["bytes_written"] == 16 * MiB


class PwriteSpy:
    """Records (fd, length) of every os.pwrite; refuses O_DIRECT ones with EINVAL when told to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse_direct: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.direct_fds: list[int] = []
        real_pwrite, real_open = os.pwrite, disks._open_direct

        def open_direct(path: Path) -> int:
            fd = real_open(path)
            self.direct_fds.append(fd)
            return fd

        def pwrite(fd: int, data: Any, offset: int) -> int:
            self.calls.append((fd, len(data)))
            if refuse_direct and fd in self.direct_fds:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(disks, "_open_direct", open_direct)
        monkeypatch.setattr(os, "pwrite", pwrite)

    def bytes_to(self, direct: bool) -> int:
        return sum(n for fd, n in self.calls if (fd in self.direct_fds) == direct)


def test_refused_o_direct_falls_back_to_the_page_cache(
    server: ImageServer, served_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = PwriteSpy(monkeypatch, refuse_direct=True)
    image = build_image(served_dir / "img.raw", [("data", 6), ("zero", 2), ("data", 1)])
    with open(image, "ab") as f:
        f.write(b"tail")
    disk = new_disk(tmp_path / "disk", 16 * MiB, fill=0x55)
    result, _ = run_write([disk], image_args(server, image, image))
    size = image.stat().st_size
    assert read(disk, 0, size) == image.read_bytes()
    assert read(disk, size) == b"\x55" * (16 * MiB - size)
    assert result["bytes_written"] == 7 * MiB + 4
    assert spy.direct_fds and spy.direct_fds[0] >= 0, "O_DIRECT was not tried"
    # One refused O_DIRECT write, then everything through the page cache.
    assert [fd for fd, _ in spy.calls].count(spy.direct_fds[0]) == 1
    assert spy.bytes_to(direct=False) == 7 * MiB + 4


def test_two_o_direct_writes_are_in_flight_at_once(
    server: ImageServer, served_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two O_DIRECT writes after the first chunk must meet inside pwrite: with a single writer
    # the barrier breaks (its timeout only bounds how long a failing run waits).
    spy = PwriteSpy(monkeypatch)
    real_pwrite = os.pwrite
    meet = threading.Barrier(2, timeout=30)
    met: list[int] = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in spy.direct_fds and offset >= 2 * write.CHUNK and len(met) < 2:
            met.append(offset)
            meet.wait()
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    image = build_image(served_dir / "wide.raw", [("data", 24)])
    disk = new_disk(tmp_path / "disk", 32 * MiB)
    result, _ = run_write([disk], image_args(server, image, image))
    assert read(disk, 0, image.stat().st_size) == image.read_bytes()
    assert result["bytes_written"] == 24 * MiB
    assert len(met) == 2 and not meet.broken


def test_a_failed_disk_write_in_a_writer_thread_fails_the_command_and_keeps_the_head(
    server: ImageServer, served_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = PwriteSpy(monkeypatch)
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in spy.direct_fds and offset == 12 * MiB:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    image = build_image(served_dir / "eio.raw", [("data", 24)])
    disk = new_disk(tmp_path / "disk", 32 * MiB, fill=0x77)
    threads_before = threading.active_count()
    with pytest.raises(CommandError) as err:
        run_write([disk], image_args(server, image, image))
    assert str(err.value) == f"writing to {disk} at offset {12 * MiB} failed: {os.strerror(errno.EIO)}"
    assert read(disk, 0, MiB) == b"\x77" * MiB, "the head is written only after a complete stream"
    assert threading.active_count() <= threads_before, "writer or reader threads left running"


def test_zeros_written_when_the_kernel_cannot_zero(tmp_path: Path) -> None:
    path = new_disk(tmp_path / "disk", 12 * MiB, fill=0x33)
    disk = disks.Disk(name=str(path), path=path, size=12 * MiB)
    with disks.DiskIO(disk) as dio:
        dio._cheap_zeroing = False
        dio.zero(MiB, 5 * MiB + 123)  # aligned start, a tail off the block grid
        dio.zero(8 * MiB + 7, 4096)  # unaligned start
        dio.flush()
        assert (dio.bytes_zeroed, dio.bytes_written) == (5 * MiB + 123 + 4096, 0)
    data = read(path)
    assert data[:MiB] == b"\x33" * MiB
    assert data[MiB : 6 * MiB + 123] == bytes(5 * MiB + 123)
    assert data[6 * MiB + 123 : 8 * MiB + 7] == b"\x33" * (2 * MiB - 116)
    assert data[8 * MiB + 7 : 8 * MiB + 7 + 4096] == bytes(4096)
    assert data[8 * MiB + 7 + 4096 :] == b"\x33" * (4 * MiB - 7 - 4096)


def test_zstd_image(server: ImageServer, served_dir: Path, tmp_path: Path) -> None:
    image = build_image(tmp_path / "z.raw", [("data", 2), ("zero", 16), ("data", 5)], table="gpt")
    served = zstd(image)
    shutil.move(served, served_dir / served.name)
    served = served_dir / served.name
    disk = new_disk(tmp_path / "disk", 32 * MiB, fill=0x55)
    result, _ = run_write([disk], image_args(server, served, image, fmt="zstd"))
    assert read(disk, 0, image.stat().st_size) == image.read_bytes()
    assert result["checksum"] == sha256(served), "the checksum is of the stream as served"
    assert result["bytes_zeroed"] == 16 * MiB


def test_checksum_mismatch_leaves_the_partition_table_untouched(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    needs("sfdisk", "fdisk")
    image = build_image(served_dir / "bad.raw", [("data", 8)], table="dos")
    disk = new_disk(tmp_path / "disk", 32 * MiB, fill=0x11)
    sfdisk(disk, "label: gpt\nstart=2048, size=20480, type=L\n")
    head_before, table_before = read(disk, 0, MiB), table_of(disk)
    wrong = "0" * 64

    with pytest.raises(CommandError) as err:
        run_write([disk], image_args(server, image, image, checksum=wrong))

    assert str(err.value) == f"image checksum mismatch: expected sha256 {wrong}, got {sha256(image)}"
    assert read(disk, 0, MiB) == head_before
    assert table_of(disk) == table_before


def test_disk_too_small_fails_before_any_write_or_download(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    image = build_image(served_dir / "big.raw", [("data", 12)])
    disk = new_disk(tmp_path / "disk", 8 * MiB, fill=0x22)
    with pytest.raises(CommandError) as err:
        run_write([disk], image_args(server, image, image))
    assert str(12 * MiB) in str(err.value) and str(8 * MiB) in str(err.value)
    assert read(disk) == b"\x22" * (8 * MiB)
    assert server.requests == []


def test_hinted_disk_too_small_names_both_sizes(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    image = build_image(served_dir / "img.raw", [("data", 4)])
    small = new_disk(tmp_path / "small", 2 * MiB)
    with pytest.raises(
        CommandError, match=rf"{small} chosen by the root device hints is too small.*{4 * MiB}"
    ):
        run_write([small], image_args(server, image, image), root_device_hints={"name": str(small)})
    assert server.requests == []


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({}, "a"),  # none: the smallest disk that fits
        ({"size": 2}, "c"),
        ({"size": ">= 2"}, "b"),  # several match: the first by name
        ({"size": "< 3", "model": "file"}, "a"),
        ({"name": "c"}, None),  # "c" is a kernel name, /dev/c: no such disk
    ],
)
def test_root_device_hints_choose_the_disk(
    server: ImageServer, served_dir: Path, tmp_path: Path, hints: dict[str, Any], expected: str | None
) -> None:
    image = build_image(served_dir / "img.raw", [("data", 1)])
    disks = {name: new_disk(tmp_path / name, gib * GiB) for name, gib in (("a", 1), ("b", 3), ("c", 2))}
    if expected is None:
        with pytest.raises(CommandError, match="no disk matches the root device hints"):
            run_write(list(disks.values()), image_args(server, image, image), root_device_hints=hints)
        return
    result, _ = run_write(list(disks.values()), image_args(server, image, image), root_device_hints=hints)
    assert result["root_device"] == str(disks[expected])
    assert read(disks[expected], 0, MiB) == image.read_bytes()
    for name, path in disks.items():
        if name != expected:
            assert os.stat(path).st_blocks == 0, f"disk {name} was written to"


def test_hint_by_full_name_picks_a_larger_disk(server: ImageServer, served_dir: Path, tmp_path: Path) -> None:
    image = build_image(served_dir / "img.raw", [("data", 1)])
    small, large = new_disk(tmp_path / "small", 4 * MiB), new_disk(tmp_path / "large", 8 * MiB)
    result, _ = run_write(
        [small, large], image_args(server, image, image), root_device_hints={"name": str(large)}
    )
    assert result["root_device"] == str(large)


def test_http_error_names_the_url_and_status(server: ImageServer, tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "disk", 8 * MiB)
    spec = {
        "url": server.url("missing.raw"),
        "format": "raw",
        "size": MiB,
        "virtual_size": MiB,
        "checksum": "a" * 64,
    }
    with pytest.raises(
        CommandError, match=r"image download from http://127\.0\.0\.1:\d+/missing\.raw failed: HTTP 404"
    ):
        run_write([disk], spec)
    assert os.stat(disk).st_blocks == 0


def test_connection_refused_is_a_command_error(tmp_path: Path) -> None:
    disk = new_disk(tmp_path / "disk", 8 * MiB)
    spec = {
        "url": "http://127.0.0.1:9/x",
        "format": "raw",
        "size": MiB,
        "virtual_size": MiB,
        "checksum": "a" * 64,
    }
    with pytest.raises(CommandError, match=r"image download from http://127\.0\.0\.1:9/x failed"):
        run_write([disk], spec)


def test_short_stream_fails_and_keeps_the_head(server: ImageServer, served_dir: Path, tmp_path: Path) -> None:
    image = build_image(served_dir / "short.raw", [("data", 10)])
    server.short["short.raw"] = 6 * MiB + 123
    disk = new_disk(tmp_path / "disk", 16 * MiB, fill=0x33)
    with pytest.raises(CommandError, match=rf"ended after {6 * MiB + 123} of {10 * MiB} bytes"):
        run_write([disk], image_args(server, image, image))
    assert read(disk, 0, MiB) == b"\x33" * MiB


def test_served_size_differs_from_the_declared_size(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    image = build_image(served_dir / "img.raw", [("data", 2)])
    disk = new_disk(tmp_path / "disk", 8 * MiB)
    spec = {**image_args(server, image, image), "size": MiB, "virtual_size": 2 * MiB}
    with pytest.raises(CommandError, match=rf"served as {2 * MiB} bytes, expected {MiB}"):
        run_write([disk], spec)


def test_stream_longer_than_virtual_size(server: ImageServer, served_dir: Path, tmp_path: Path) -> None:
    needs("zstd", "zstd")
    image = build_image(tmp_path / "img.raw", [("data", 6)])
    served = zstd(image).rename(served_dir / "img.raw.zst")
    disk = new_disk(tmp_path / "disk", 16 * MiB)
    spec = {**image_args(server, served, image, fmt="zstd"), "virtual_size": 5 * MiB}
    with pytest.raises(CommandError, match=rf"larger than its virtual_size {5 * MiB}"):
        run_write([disk], spec)


def test_corrupt_zstd_stream_fails_with_zstds_message(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    needs("zstd", "zstd")
    garbage = served_dir / "garbage.zst"
    garbage.write_bytes(random.Random(3).randbytes(3 * MiB))
    disk = new_disk(tmp_path / "disk", 16 * MiB, fill=0x44)
    spec = {**image_args(server, garbage, garbage, fmt="zstd"), "virtual_size": 8 * MiB}
    with pytest.raises(
        CommandError, match=r"zstd could not decompress the image from http://\S+garbage\.zst: \S"
    ):
        run_write([disk], spec)
    assert read(disk, 0, MiB) == b"\x44" * MiB


def test_missing_zstd_program_fails_before_download(
    server: ImageServer, served_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = build_image(served_dir / "img.raw.zst", [("data", 1)])
    disk = new_disk(tmp_path / "disk", 8 * MiB)
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    with pytest.raises(CommandError, match="zstd program is not installed"):
        run_write([disk], image_args(server, image, image, fmt="zstd"))
    assert server.requests == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "ftp://host/x"}, "not an http:// or https:// URL"),
        ({"format": "qcow2"}, "format 'qcow2' is not one of raw, zstd, simg, simg\\+zstd"),
        ({"checksum": "abc"}, "is not a sha256 hex digest"),
        ({"checksum_algo": "md5"}, "checksum_algo 'md5'"),
        ({"virtual_size": -1}, "virtual_size -1 is not a byte count"),
        ({"format": "zstd", "virtual_size": None}, "needs a positive virtual_size"),
    ],
)
def test_bad_image_arguments(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    spec = {"url": "http://127.0.0.1:9/x", "format": "raw", "size": MiB, "checksum": "a" * 64, **change}
    with pytest.raises(CommandError, match=message):
        run_write([new_disk(tmp_path / "disk", 8 * MiB)], spec)


# --- config drive


def configdrive_iso(user_data: bytes) -> bytes:
    pycdlib = pytest.importorskip("pycdlib", reason="needs pycdlib (a bootforge dependency)")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="config-2")
    iso.add_directory("/OPENSTAC", rr_name="openstack", joliet_path="/openstack")
    iso.add_directory("/OPENSTAC/LATEST", rr_name="latest", joliet_path="/openstack/latest")
    iso.add_fp(
        io.BytesIO(user_data),
        len(user_data),
        "/OPENSTAC/LATEST/USER_DAT.;1",
        rr_name="user_data",
        joliet_path="/openstack/latest/user_data",
    )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def encode(iso: bytes) -> str:
    return base64.b64encode(gzip.compress(iso)).decode()


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_configdrive_partition_at_the_end_holds_the_iso(
    server: ImageServer, served_dir: Path, tmp_path: Path, label: str
) -> None:
    iso = configdrive_iso(b"#cloud-config\nmarker: 42\n")
    image = build_image(served_dir / "img.raw", [("data", 2), ("zero", 4), ("data", 2)], table=label)
    disk_size = 100 * MiB
    disk = new_disk(tmp_path / "disk", disk_size, fill=0x66)
    result, _ = run_write([disk], image_args(server, image, image), configdrive=encode(iso))

    table = table_of(disk)
    assert table["label"] == label
    first, cd = table["partitions"]
    assert first["start"] == 2048 and first["size"] == 4096, "the image's own partition is kept"
    assert result["configdrive_partition"] == cd["node"] == f"{disk}2"
    end = cd["start"] + cd["size"]
    last_usable = table["lastlba"] + 1 if label == "gpt" else disk_size // 512
    assert end == last_usable, "the partition ends at the end of the disk"
    assert cd["start"] % 2048 == 0 and cd["size"] * 512 >= 64 * MiB
    assert cd["type"] == (LINUX_FS_GUID if label == "gpt" else "83")
    if label == "gpt":
        assert table["lastlba"] == disk_size // 512 - 34, "the GPT backup header moved to the disk's end"
    assert read(disk, cd["start"] * 512, len(iso)) == iso
    # The image's partitions' space (the rest of the image) is untouched by the config drive.
    assert read(disk, 4 * MiB, 4 * MiB) == read(image, 4 * MiB, 4 * MiB)


def test_configdrive_that_does_not_fit_fails_before_download(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    image = build_image(served_dir / "img.raw", [("data", 8)])
    disk = new_disk(tmp_path / "disk", 70 * MiB)
    with pytest.raises(CommandError, match=r"no disk is large enough.*config drive"):
        run_write([disk], image_args(server, image, image), configdrive=encode(configdrive_iso(b"x")))
    assert server.requests == [] and os.stat(disk).st_blocks == 0


def test_configdrive_needs_a_partition_table_and_nothing_is_written(
    server: ImageServer, served_dir: Path, tmp_path: Path
) -> None:
    image = build_image(served_dir / "img.raw", [("data", 4)])
    disk = new_disk(tmp_path / "disk", 80 * MiB)
    with pytest.raises(CommandError, match="has no partition table"):
        run_write([disk], image_args(server, image, image), configdrive=encode(configdrive_iso(b"x")))
    assert os.stat(disk).st_blocks == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"\x1f\x8b" + b"junk").decode(), "not valid gzip"),
        (base64.b64encode(gzip.compress(b"plain text")).decode(), "not an ISO 9660 image"),
    ],
)
def test_bad_configdrive_fails_before_download(
    server: ImageServer, served_dir: Path, tmp_path: Path, value: str, message: str
) -> None:
    image = build_image(served_dir / "img.raw", [("data", 1)])
    with pytest.raises(CommandError, match=message):
        run_write(
            [new_disk(tmp_path / "disk", 80 * MiB)], image_args(server, image, image), configdrive=value
        )
    assert server.requests == []


# --- a real block device


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(loop device, its backing file) for a 128 MiB file, with partition scanning on."""
    backing = new_disk(tmp_path / "backing", 128 * MiB, fill=0x77)
    with attached_loop(backing) as device:
        yield device, backing


def test_block_device_gets_the_bulk_through_o_direct_and_keeps_the_bytes_after_the_image(
    server: ImageServer,
    served_dir: Path,
    loop_disk: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device, backing = loop_disk
    spy = PwriteSpy(monkeypatch)
    image = build_image(served_dir / "img.raw", [("data", 5), ("zero", 3), ("data", 2)])
    with open(image, "ab") as f:
        f.write(random.Random(7).randbytes(1000))  # a tail shorter than a sector
    result, _ = run_write([device], image_args(server, image, image))
    size = image.stat().st_size
    assert read(backing, 0, size) == image.read_bytes()
    assert read(backing, size, MiB) == b"\x77" * MiB, "bytes past the image must stay as they were"
    assert result["bytes_written"] == 7 * MiB + 1000
    assert spy.direct_fds and spy.direct_fds[0] >= 0, "the block device refused O_DIRECT"
    # All but the held-back head and the tail went past the page cache.
    assert spy.bytes_to(direct=True) == 6 * MiB
    assert spy.bytes_to(direct=False) == MiB + 1000


def test_write_to_a_block_device_with_configdrive(
    server: ImageServer, served_dir: Path, tmp_path: Path, loop_disk: tuple[Path, Path]
) -> None:
    device, backing = loop_disk
    iso = configdrive_iso(b"#cloud-config\n")
    image = build_image(tmp_path / "img.raw", [("data", 3), ("zero", 20), ("data", 1)], table="gpt")
    served = zstd(image).rename(served_dir / "img.raw.zst")
    result, _ = run_write([device], image_args(server, served, image, fmt="zstd"), configdrive=encode(iso))

    assert result["root_device"] == str(device)
    assert result["configdrive_partition"] == f"{device}p2"
    assert result["bytes_zeroed"] >= 20 * MiB
    # Read through the backing file: what the loop device put on "the disk". Sectors 0-33 hold
    # the GPT, which the config drive changed.
    assert read(backing, 34 * 512, MiB - 34 * 512) == read(image, 34 * 512, MiB - 34 * 512)
    assert read(backing, MiB, image.stat().st_size - 2 * MiB) == read(
        image, MiB, image.stat().st_size - 2 * MiB
    )
    cd = table_of(backing)["partitions"][1]
    assert read(backing, cd["start"] * 512, len(iso)) == iso
