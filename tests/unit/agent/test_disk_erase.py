"""erase on regular files as disks (and a loop device as root): what a probe finds afterwards."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import attached_loop, needs

from bootforge.agent import erase
from bootforge.agent.common import CommandError, Context
from bootforge.agent.disks import Disk

MiB = 1 << 20
SIZE = 64 * MiB
# Partition 1: 8 MiB at 1 MiB (an XFS signature planted); partition 2: 40 MiB at 10 MiB (ext4).
P1, P2 = (MiB, 8 * MiB), (10 * MiB, 40 * MiB)
MARKER = b"bootforge marker: data in the middle of a partition is not metadata"


def read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def pwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def has_table(path: Path) -> bool:
    return subprocess.run(["sfdisk", "--json", str(path)], capture_output=True).returncode == 0


def signatures(path: Path, offset: int = 0) -> str:
    """What blkid's low-level probe finds at offset (superblocks, partition tables)."""
    probe = ["blkid", "-p", "-o", "export", "--offset", str(offset), str(path)]
    return subprocess.run(probe, capture_output=True, text=True).stdout


def plant_ext4(path: Path, offset: int, size: int, tmp: Path) -> None:
    """A real ext4 made by mkfs.ext4 when it is installed, else its superblock magic (0xEF53 at 1080)."""
    if shutil.which("mkfs.ext4"):
        fs = tmp / "fs.ext4"
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", str(fs), f"{size // 1024}k"], check=True, capture_output=True
        )
        with open(fs, "rb") as src, open(path, "r+b") as dst:
            dst.seek(offset)
            shutil.copyfileobj(src, dst)
    else:
        pwrite(path, offset + 1080, b"\x53\xef")


def make_disk(tmp_path: Path, label: str) -> Path:
    needs("sfdisk", "fdisk")
    disk = tmp_path / "disk"
    disk.write_bytes(random.Random(7).randbytes(SIZE))
    parts = "".join(f"start={start // 512}, size={size // 512}\n" for start, size in (P1, P2))
    script = f"label: {label}\n{parts}"
    subprocess.run(["sfdisk", "-q", str(disk)], input=script, text=True, check=True, capture_output=True)
    pwrite(disk, P1[0], b"XFSB")
    plant_ext4(disk, P2[0], 16 * MiB, tmp_path)
    pwrite(disk, P2[0] + 20 * MiB, MARKER)
    return disk


def run(targets: list[Path], **args: object) -> tuple[dict[str, Any], list[tuple[int, int, str]]]:
    calls: list[tuple[int, int, str]] = []
    result = erase.run(args, Context(disks=targets), lambda d, t, m: calls.append((d, t, m)))
    return result, calls


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_metadata_erase_clears_tables_at_both_ends_and_signatures(tmp_path: Path, label: str) -> None:
    disk = make_disk(tmp_path, label)
    assert has_table(disk)
    assert read(disk, P1[0], 4) == b"XFSB" and read(disk, P2[0] + 1080, 2) == b"\x53\xef"
    if label == "gpt":
        assert read(disk, SIZE - 512, 8) == b"EFI PART", "the backup GPT header is at the end"
    if shutil.which("blkid"):
        assert f"PTTYPE={label}" in signatures(disk)
        if shutil.which("mkfs.ext4"):
            assert "TYPE=ext4" in signatures(disk, P2[0])

    result, calls = run([disk])

    [entry] = result["disks"]
    assert entry["name"] == str(disk) and entry["mode"] == "metadata" and entry["bytes"] >= 4 * MiB
    assert not has_table(disk)
    for start, size in [(0, SIZE), P1, P2]:
        assert read(disk, start, MiB) == bytes(MiB), f"first MiB at {start} not zeroed"
        assert read(disk, start + size - MiB, MiB) == bytes(MiB), f"last MiB before {start + size} not zeroed"
    assert read(disk, P2[0] + 20 * MiB, len(MARKER)) == MARKER, "metadata erase must not zero everything"
    if shutil.which("blkid"):
        assert signatures(disk) == "" and signatures(disk, P2[0]) == "" and signatures(disk, P1[0]) == ""
    assert calls[-1][0] == calls[-1][1]


def test_metadata_erase_without_a_table_still_zeroes_the_disk_edges(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"\xff" * (4 * MiB))
    result, _ = run([disk], mode="metadata")
    assert read(disk, 0, MiB) == bytes(MiB) and read(disk, 3 * MiB, MiB) == bytes(MiB)
    assert read(disk, MiB, 2 * MiB) == b"\xff" * (2 * MiB)
    assert result["disks"] == [{"name": str(disk), "mode": "metadata", "bytes": 2 * MiB}]


def test_edges_of_a_disk_smaller_than_two_mib_are_merged() -> None:
    disk = Disk(name="d", path=Path("d"), size=MiB + 4096)
    assert erase.edges(disk, []) == [(0, MiB + 4096)]


def test_full_erase_zeroes_every_byte(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(random.Random(1).randbytes(3 * MiB + 512))
    result, calls = run([disk], mode="full")
    assert disk.read_bytes() == bytes(3 * MiB + 512)
    assert result["disks"] == [{"name": str(disk), "mode": "full", "bytes": 3 * MiB + 512}]
    assert calls[-1][:2] == (3 * MiB + 512, 3 * MiB + 512)


def test_secure_erase_on_a_device_that_cannot_fails_clearly(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"\x01" * MiB)
    with pytest.raises(CommandError, match=rf"secure erase is not supported by {disk}"):
        run([disk], mode="secure")
    assert disk.read_bytes() == b"\x01" * MiB, "no silent fallback to another erase"


def test_only_the_named_disks_are_erased(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"\xff" * (2 * MiB))
    b.write_bytes(b"\xff" * (2 * MiB))
    result, _ = run([a, b], disks=[str(b)])
    assert [d["name"] for d in result["disks"]] == [str(b)]
    assert a.read_bytes() == b"\xff" * (2 * MiB) and b.read_bytes() == bytes(2 * MiB)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"mode": "shred"}, "unknown erase mode 'shred'"),
        ({"disks": ["/dev/nope"]}, "unknown disk /dev/nope"),
        ({"disks": "all"}, "must be a list of disk names"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: dict[str, object], message: str) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"\xff" * MiB)
    with pytest.raises(CommandError, match=message):
        run([disk], **args)
    assert disk.read_bytes() == b"\xff" * MiB


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    backing = make_disk(tmp_path, "gpt")
    with attached_loop(backing) as device:
        yield device, backing


def test_metadata_and_full_erase_of_a_block_device(loop_disk: tuple[Path, Path]) -> None:
    device, backing = loop_disk
    run([device], mode="metadata")
    assert not has_table(backing)
    assert read(backing, SIZE - MiB, MiB) == bytes(MiB) and read(backing, P2[0], MiB) == bytes(MiB)
    assert read(backing, P2[0] + 20 * MiB, len(MARKER)) == MARKER

    result, _ = run([device], mode="full")
    assert result["disks"] == [{"name": str(device), "mode": "full", "bytes": SIZE}]
    assert read(backing, 0, SIZE) == bytes(SIZE)
    with pytest.raises(CommandError, match=rf"secure erase is not supported by {device}: BLKSECDISCARD"):
        run([device], mode="secure")
