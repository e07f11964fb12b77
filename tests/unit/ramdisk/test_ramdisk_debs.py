"""Debian packages: read with Python alone (ar + tar.xz/zst), unpacked once, fetched from the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ramdisk_fakes import deb

from bootforge.ramdisk.debs import RamdiskError, deb_members, fetch, unpack


@pytest.mark.parametrize("codec", ["xz", "zst"])
def test_unpack_gives_files_modes_and_symlinks(tmp_path: Path, codec: str) -> None:
    package = deb(
        tmp_path / "libfoo1_1.0-1_amd64.deb",
        {"usr/lib/x86_64-linux-gnu/libfoo.so.1.0": b"ELF...", "usr/bin/tool": b"#!/bin/sh\n"},
        {"usr/lib/x86_64-linux-gnu/libfoo.so.1": "libfoo.so.1.0", "lib64/ld.so": "/usr/lib/ld.so"},
        codec=codec,
    )
    tree = unpack(package, tmp_path / "trees")
    assert tree.name == "libfoo1_1.0-1_amd64"
    assert (tree / "usr/lib/x86_64-linux-gnu/libfoo.so.1").read_bytes() == b"ELF..."
    assert os.readlink(tree / "usr/lib/x86_64-linux-gnu/libfoo.so.1") == "libfoo.so.1.0"
    # Absolute link targets are kept as written: they mean the packaged file, resolved later.
    assert os.readlink(tree / "lib64/ld.so") == "/usr/lib/ld.so"
    assert os.access(tree / "usr/bin/tool", os.X_OK)


def test_unpack_is_done_once(tmp_path: Path) -> None:
    package = deb(tmp_path / "a_1_amd64.deb", {"etc/a": b"1"})
    tree = unpack(package, tmp_path / "trees")
    package.write_bytes(b"garbage")
    assert unpack(package, tmp_path / "trees") == tree
    assert not [p for p in (tmp_path / "trees").iterdir() if p.name.startswith(".")]


def test_members_stream_the_data_tree(tmp_path: Path) -> None:
    package = deb(tmp_path / "a_1_amd64.deb", {"boot/vmlinuz-6.1": b"k", "etc/a": b"1"})
    seen = {}
    for info, tar in deb_members(package):
        if info.isfile():
            f = tar.extractfile(info)
            assert f is not None
            seen[info.name] = f.read()
    assert seen == {"./boot/vmlinuz-6.1": b"k", "./etc/a": b"1"}


def test_a_file_that_is_no_package_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad_1_amd64.deb"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(RamdiskError, match="not a Debian package"):
        unpack(bad, tmp_path / "trees")
    assert not (tmp_path / "trees" / "bad_1_amd64").exists()


def test_fetch_uses_the_caches_without_asking_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine, lab = tmp_path / "debs", tmp_path / "lab"
    lab.mkdir()
    deb(lab / "linux-image-6.1.0-9-amd64_6.1.1-1_amd64.deb", {"boot/vmlinuz-6.1.0-9-amd64": b"k"})
    mine.mkdir()
    deb(mine / "zstd_1.5_amd64.deb", {"usr/bin/zstd": b"z"})
    monkeypatch.setenv("PATH", str(tmp_path / "no-apt-here"))
    found = fetch(["zstd", "linux-image-6.1.0-9-amd64"], mine, [lab])
    assert found == {
        "zstd": mine / "zstd_1.5_amd64.deb",
        "linux-image-6.1.0-9-amd64": lab / "linux-image-6.1.0-9-amd64_6.1.1-1_amd64.deb",
    }


def test_fetch_without_apt_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-apt-here"))
    with pytest.raises(RamdiskError, match="needs apt-get"):
        fetch(["zstd"], tmp_path / "debs")
