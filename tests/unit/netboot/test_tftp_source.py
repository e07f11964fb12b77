"""Path confinement and the filesystem FileSource."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootforge.netboot.tftp import (
    ClientAddress,
    FileSystemSource,
    PathRefused,
    normalize_path,
)

CLIENT: ClientAddress = ("10.213.0.50", 1234)


@pytest.mark.parametrize(
    ("asked", "path"),
    [
        ("pxelinux.0", "pxelinux.0"),
        ("/grub/grub.cfg", "grub/grub.cfg"),
        ("//grub//./x86_64-efi/command.lst", "grub/x86_64-efi/command.lst"),
        ("pxelinux.cfg\\default", "pxelinux.cfg/default"),
    ],
)
def test_normalize_maps_into_the_root(asked: str, path: str) -> None:
    assert normalize_path(asked) == path


@pytest.mark.parametrize("asked", ["../x", "a/../../x", "..\\x", "/", ".", "a/.."])
def test_normalize_refuses(asked: str) -> None:
    with pytest.raises(PathRefused):
        normalize_path(asked)


@given(st.text(max_size=60))
def test_normalized_paths_never_climb(asked: str) -> None:
    try:
        path = normalize_path(asked)
    except PathRefused:
        return
    assert not path.startswith("/")
    assert ".." not in path.split("/")
    assert os.path.normpath(path) == path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "grub").mkdir(parents=True)
    (root / "grub" / "grubnetx64.efi").write_bytes(b"G" * 3000)
    (root / "grubx64.efi").symlink_to("grub/grubnetx64.efi")
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape_dir").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    return root


def test_reads_files_and_inner_symlinks(tree: Path) -> None:
    source = FileSystemSource(tree)
    f = source.open("/grubx64.efi", CLIENT)
    try:
        assert f.size == 3000
        assert f.read_at(2990, 100) == b"G" * 10
        bufs = [memoryview(bytearray(1024)) for _ in range(3)]
        assert f.readinto_at(bufs, 1000) == 2000
    finally:
        f.close()


@pytest.mark.parametrize("name", ["escape", "escape_dir/secret", "/escape", "../secret"])
def test_symlinks_and_parents_out_of_root_are_refused(tree: Path, name: str) -> None:
    with pytest.raises(PermissionError):
        FileSystemSource(tree).open(name, CLIENT)


@pytest.mark.parametrize("name", ["grub", "fifo", "missing", "/etc/passwd"])
def test_non_regular_or_missing_files_are_not_found(tree: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        FileSystemSource(tree).open(name, CLIENT)


def test_virtual_files_are_rendered_per_client(tree: Path) -> None:
    def render(path: str, client: ClientAddress) -> bytes | None:
        return f"set node={client[0]}\n".encode() if path == "grub/grub.cfg" else None

    source = FileSystemSource(tree, render)
    cfg = source.open("/grub/grub.cfg", CLIENT)
    assert cfg.read_at(0, 100) == b"set node=10.213.0.50\n"
    disk = source.open("grub/grubnetx64.efi", CLIENT)
    assert disk.size == 3000
    disk.close()
