"""Format detection from content: qcow2 headers, zstd frames (as imports decompress them), refused formats,
digests."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard

from bootforge.images.formats import (
    QCOW2,
    RAW,
    ZSTD,
    Digests,
    ImageError,
    check_head,
    file_digests,
    parse_qcow2,
    read_head,
    sniff,
)
from bootforge.images.store import decompress


def qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img (Debian package qemu-utils)")
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_raw_is_whatever_is_not_recognised() -> None:
    assert sniff(b"") == RAW
    assert sniff(bytes(4096)) == RAW
    mbr = bytearray(512)
    mbr[0:3] = b"\xeb\x63\x90"
    mbr[510:512] = b"\x55\xaa"
    assert sniff(bytes(mbr)) == RAW


def test_qcow2_header_from_qemu_img(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    head = read_head(path)
    assert sniff(head) == QCOW2
    header = parse_qcow2(head)
    assert header.virtual_size == 64 << 20
    assert header.version == 3
    assert header.cluster_bits == 16


def test_qcow2_v2_compat(tmp_path: Path) -> None:
    path = tmp_path / "old.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(path), "1G")
    header = parse_qcow2(read_head(path))
    assert (header.version, header.virtual_size) == (2, 1 << 30)


def test_qcow2_with_backing_file_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    with pytest.raises(ImageError, match="backing file"):
        check_head(read_head(overlay))


def test_encrypted_qcow2_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.qcow2"
    secret = ["--object", "secret,id=sec0,data=hunter2"]
    # LUKS needs qemu built with a crypto library; the legacy AES format does not.
    for encryption in ("luks", "aes"):
        options = f"encrypt.format={encryption},encrypt.key-secret=sec0"
        try:
            qemu_img("create", "-q", *secret, "-f", "qcow2", "-o", options, str(path), "16M")
            break
        except subprocess.CalledProcessError:
            continue
    else:
        pytest.skip("needs a qemu-img that can create an encrypted qcow2 (luks or aes)")
    with pytest.raises(ImageError, match="encrypted"):
        check_head(read_head(path))


def _qcow2_header(version: int = 3, incompatible: int = 0, size: int = 1 << 20) -> bytes:
    head = struct.pack(">4sIQIIQI", b"QFI\xfb", version, 0, 0, 16, size, 0)
    head += bytes(72 - len(head))
    head += struct.pack(">QQQII", incompatible, 0, 0, 4, 104)
    return head + bytes(4096 - len(head))


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (_qcow2_header(incompatible=1 << 2), "external file"),
        (_qcow2_header(incompatible=1 << 1), "corrupt"),
        (_qcow2_header(version=1), "version 1"),
        (_qcow2_header(size=1000), "whole number"),
        (_qcow2_header()[:50], "truncated"),
    ],
)
def test_qcow2_header_refusals(head: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_qcow2(head)


def test_vmdk_made_by_qemu_img_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "disk.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(path), "16M")
    with pytest.raises(ImageError, match="VMDK") as info:
        check_head(read_head(path))
    assert "qemu-img convert" in info.value.message
    assert info.value.field == "source"


@pytest.mark.parametrize(("fmt", "name"), [("vhdx", "VHDX"), ("vpc", "VHD"), ("vdi", "VDI"), ("qed", "QED")])
def test_other_hypervisor_formats_are_refused(tmp_path: Path, fmt: str, name: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    qemu_img("create", "-q", "-f", fmt, str(path), "16M")
    with pytest.raises(ImageError, match=name):
        sniff(read_head(path))


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"\x1f\x8b\x08\x00" + bytes(100), "gzip"),
        (b"\xfd7zXZ\x00" + bytes(100), "xz"),
        (b"BZh91AY&SY" + bytes(100), "bzip2"),
        (b"PK\x03\x04" + bytes(100), "zip"),
        (bytes(257) + b"ustar\x0000" + bytes(100), "tar"),
    ],
)
def test_archives_and_other_compressors_are_refused(head: bytes, name: str) -> None:
    with pytest.raises(ImageError, match=name):
        sniff(head)


def zstd_content(path: Path) -> bytes:
    """What the store's import decompresses path to (every frame checked first)."""
    out = path.with_name(path.name + ".out")
    decompress(path, out, threading.Event())
    return out.read_bytes()


def test_zstd_decompresses_to_the_image(tmp_path: Path) -> None:
    data = os.urandom(300_000) + bytes(1 << 20) + b"end" + bytes(512 - 3)
    path = tmp_path / "img.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    assert sniff(read_head(path)) == ZSTD
    assert zstd_content(path) == data


def test_zstd_many_frames_and_skippable_frames(tmp_path: Path) -> None:
    # pzstd writes a skippable frame before each frame; concatenated files are several frames.
    c = zstandard.ZstdCompressor(level=1)
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"\0\0\0\0"
    path = tmp_path / "multi.zst"
    path.write_bytes(skippable + c.compress(b"a" * 1024) + skippable + c.compress(b"b" * 2048))
    assert sniff(read_head(path)) == ZSTD
    assert zstd_content(path) == b"a" * 1024 + b"b" * 2048


def test_truncated_zstd_is_refused(tmp_path: Path) -> None:
    whole = zstandard.ZstdCompressor(level=3).compress(os.urandom(200_000))
    path = tmp_path / "cut.zst"
    for cut in (len(whole) - 1, len(whole) // 2, 6):
        path.write_bytes(whole[:cut])
        with pytest.raises(ImageError, match="truncated"):
            zstd_content(path)


def test_zstd_with_trailing_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tail.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(bytes(4096)) + b"garbage!")
    with pytest.raises(ImageError, match="not a zstd frame"):
        zstd_content(path)


def test_zstd_window_beyond_the_agents_limit_is_refused(tmp_path: Path) -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28)
    path = tmp_path / "long.zst"
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    path.write_bytes(cobj.compress(bytes(1 << 20)) + cobj.flush())
    with pytest.raises(ImageError, match="256 MiB window"):
        zstd_content(path)


def test_digests_match_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    d = file_digests(path)
    assert d.size == len(data)
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.sha512 == hashlib.sha512(data).hexdigest()
    fed = Digests()
    for i in range(0, len(data), 4096):
        fed.update(memoryview(data)[i : i + 4096])
    assert (fed.sha256, fed.sha512) == (d.sha256, d.sha512)
