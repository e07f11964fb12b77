"""The usr-merged view over unpacked packages, and the shared-library closure of programs."""

from __future__ import annotations

from pathlib import Path

import pytest
from ramdisk_fakes import elf_program

from bootforge.ramdisk.debs import RamdiskError
from bootforge.ramdisk.rootfs import RootFs, normalise

LOADER = "/lib64/ld-linux-x86-64.so.2"


@pytest.mark.parametrize(
    ("path", "merged"),
    [
        ("/bin/busybox", "usr/bin/busybox"),
        ("./sbin/sfdisk", "usr/sbin/sfdisk"),
        ("lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libc.so.6"),
        ("/lib64/ld-linux-x86-64.so.2", "usr/lib64/ld-linux-x86-64.so.2"),
        ("usr/bin/../lib/python3.11/os.py", "usr/lib/python3.11/os.py"),
        ("etc/hosts", "etc/hosts"),
    ],
)
def test_normalise(path: str, merged: str) -> None:
    assert normalise(path) == merged


def _tree(root: Path, files: dict[str, bytes], links: dict[str, str]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    for path, target in links.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(target)
    return root


@pytest.fixture
def fs(tmp_path: Path) -> RootFs:
    libc6 = _tree(
        tmp_path / "libc6",
        {
            "lib/x86_64-linux-gnu/libc.so.6": elf_program(["ld-linux-x86-64.so.2"]),
            "lib/x86_64-linux-gnu/libm.so.6": elf_program(["libc.so.6"]),
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": elf_program([]),
        },
        {"lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
    )
    libz = _tree(
        tmp_path / "zlib1g",
        {"lib/x86_64-linux-gnu/libz.so.1.2.13": elf_program(["libc.so.6"])},
        {"lib/x86_64-linux-gnu/libz.so.1": "libz.so.1.2.13"},
    )
    tool = _tree(tmp_path / "tool", {"usr/bin/tool": elf_program(["libz.so.1", "libm.so.6"], LOADER)}, {})
    return RootFs([libc6, libz, tool])


def test_symlinks_resolve_inside_the_view(fs: RootFs, tmp_path: Path) -> None:
    assert fs.resolve("/lib64/ld-linux-x86-64.so.2") == "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert fs.resolve("usr/lib/x86_64-linux-gnu/libz.so.1") == "usr/lib/x86_64-linux-gnu/libz.so.1.2.13"


def test_library_closure_follows_needed_entries_and_the_loader(fs: RootFs) -> None:
    closure = fs.library_closure([("usr/bin/tool", fs.read("usr/bin/tool"))])
    assert closure == {
        "usr/lib/x86_64-linux-gnu/libz.so.1": "usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
        "usr/lib/x86_64-linux-gnu/libm.so.6": "usr/lib/x86_64-linux-gnu/libm.so.6",
        "usr/lib/x86_64-linux-gnu/libc.so.6": "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib64/ld-linux-x86-64.so.2": "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    }


def test_a_missing_library_names_itself(fs: RootFs) -> None:
    with pytest.raises(RamdiskError, match=r"libssl\.so\.3"):
        fs.library_closure([("usr/bin/x", elf_program(["libssl.so.3"], LOADER))])


def test_a_missing_file_names_itself(fs: RootFs) -> None:
    with pytest.raises(RamdiskError, match="/usr/sbin/wipefs"):
        fs.resolve("sbin/wipefs")
