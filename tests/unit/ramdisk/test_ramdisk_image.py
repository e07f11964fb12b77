"""The initrd's cpio: what the kernel unpacks, byte for byte the same for the same tree."""

from __future__ import annotations

import gzip
import io
import lzma
import stat

import pytest
import zstandard

from bootforge.ramdisk.image import Image, compress, cpio


def parse(archive: bytes) -> list[tuple[str, int, int, int, bytes]]:
    """(name, mode, mtime, ino, data) of each newc entry, up to and including the trailer."""
    out = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701", pos
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, _nlink, mtime, size = fields[:7]
        namesize = fields[11]
        assert (uid, gid) == (0, 0)
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = archive[pos : pos + size]
        pos += size + (-size % 4)
        out.append((name, mode, mtime, ino, data))
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return out


def sample() -> Image:
    image = Image()
    image.file("usr/bin/tool", b"#!/bin/sh\n", 0o755)
    image.symlink("bin", "usr/bin")
    image.chardev("dev/console", 5, 1)
    image.file("etc/a-b", b"x")
    image.file("etc/a/b", b"y")
    image.dir("tmp", 0o1777)
    return image


def test_entries_are_sorted_with_parents_first_and_fixed_metadata() -> None:
    image = sample()
    entries = parse(cpio(image, image.paths()))
    names = [e[0] for e in entries]
    assert names == [
        "bin", "dev", "dev/console", "etc", "etc/a", "etc/a-b", "etc/a/b",
        "tmp", "usr", "usr/bin", "usr/bin/tool", "TRAILER!!!",
    ]  # fmt: skip
    by_name = {e[0]: e for e in entries}
    assert stat.S_ISLNK(by_name["bin"][1]) and by_name["bin"][4] == b"usr/bin"
    assert stat.S_ISCHR(by_name["dev/console"][1])
    assert stat.S_IMODE(by_name["usr/bin/tool"][1]) == 0o755
    assert stat.S_ISDIR(by_name["etc/a"][1]) and stat.S_IMODE(by_name["tmp"][1]) == 0o1777
    assert {e[2] for e in entries} == {0}
    assert [e[3] for e in entries] == list(range(1, len(entries) + 1))


def test_the_same_tree_gives_the_same_bytes_whatever_the_insertion_order() -> None:
    a = sample()
    b = Image()
    for path in reversed(list(a.entries)):
        b.add(path, a.entries[path])
    assert cpio(a, a.paths()) == cpio(b, b.paths())


def test_a_later_file_replaces_an_earlier_one() -> None:
    image = Image()
    image.symlink("usr/bin/wipefs", "/usr/bin/busybox")
    image.file("usr/bin/wipefs", b"real", 0o755)
    assert image.entries["usr/bin/wipefs"].kind == "file"


@pytest.mark.parametrize(
    ("method", "decompress"),
    [
        (
            "zstd",
            lambda d: (
                zstandard.ZstdDecompressor().stream_reader(io.BytesIO(d), read_across_frames=True).read()
            ),
        ),
        ("xz", lzma.decompress),
        ("gzip", gzip.decompress),
        ("none", bytes),
    ],
)
def test_segments_concatenate_into_one_stream(method: str, decompress) -> None:  # type: ignore[no-untyped-def]
    image = sample()
    first = cpio(image, image.paths(lambda p: not p.startswith("etc")))
    second = cpio(image, image.paths(lambda p: p.startswith("etc")))
    blob = compress(first, method) + compress(second, method)
    assert decompress(blob) == first + second
    assert compress(first, method) == compress(first, method)


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="lz5"):
        compress(b"", "lz5")
