"""The core's side of an outside data phase (the native data plane): which transfers qualify,
what the outside loop is told, and how its outcome becomes the core's own result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootforge.netboot.tftp import (
    Ack,
    Completed,
    DataPhase,
    Error,
    Failed,
    FileSystemSource,
    Opcode,
    Outcome,
    Request,
    State,
    TftpTransfer,
    TransferConfig,
    encode_packet,
)

CLIENT = ("10.213.0.50", 40000)
CONFIG = TransferConfig(timeout=2.0, max_retries=3)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "f.bin").write_bytes(os.urandom(5000))
    (tmp_path / "grub.cfg").write_bytes(b"set default=0\n")
    return tmp_path


def transfer(root: Path, name: str = "f.bin", mode: str = "octet", **options: str) -> TftpTransfer:
    source = FileSystemSource(root, lambda p, c: b"virtual\n" if p == "v.cfg" else None)
    return TftpTransfer(Request(Opcode.RRQ, name, mode, options), source, CLIENT, CONFIG)


def test_a_lockstep_file_transfer_qualifies_once_data_1_is_out(root: Path) -> None:
    t = transfer(root, blksize="1000", timeout="5")
    t.begin(0.0)
    assert t.state is State.NEGOTIATING and t.external_data_phase() is None
    t.receive(encode_packet(Ack(0)), 0.1)
    phase = t.external_data_phase()
    assert phase is not None
    assert phase == DataPhase(phase.fileno, 5000, 1000, 5.0, 3, 0, 0, 1)
    assert os.pread(phase.fileno, 4, 0) == (root / "f.bin").read_bytes()[:4]


@pytest.mark.parametrize(
    ("name", "mode", "options"),
    [
        ("f.bin", "octet", {"windowsize": "4"}),
        ("f.bin", "netascii", {}),
        ("v.cfg", "octet", {}),  # virtual: bytes in memory, no descriptor
    ],
)
def test_windows_netascii_and_virtual_files_do_not_qualify(
    root: Path, name: str, mode: str, options: dict[str, str]
) -> None:
    t = transfer(root, name, mode, **options)
    t.begin(0.0)
    if t.state is State.NEGOTIATING:
        t.receive(encode_packet(Ack(0)), 0.1)
    assert t.state is State.SENDING
    assert t.external_data_phase() is None


def handed_off(root: Path) -> tuple[TftpTransfer, DataPhase]:
    t = transfer(root)
    t.begin(10.0)
    phase = t.external_data_phase()
    assert phase is not None and (phase.blksize, phase.acked, phase.sent) == (512, 0, 1)
    return t, phase


def test_a_completed_outside_phase_is_the_core_s_completed(root: Path) -> None:
    t, phase = handed_off(root)
    t.finish_external(12.5, Outcome.COMPLETED, acked=10, retransmits=2, dropped=1, stale_acks=4)
    assert t.result == Completed("f.bin", 5000, 2.5, 512, 1, 2)
    assert t.state is State.COMPLETED and t.deadline is None
    assert (t.dropped, t.stale_acks, t.retransmits) == (1, 4, 2)
    with pytest.raises(OSError):  # the core closed the file: the outside loop must be done
        os.fstat(phase.fileno)


@pytest.mark.parametrize(
    ("outcome", "error", "expected"),
    [
        (Outcome.CLIENT_ERROR, Error(0, "user abort"), (Outcome.CLIENT_ERROR, 0, "user abort")),
        (Outcome.TIMED_OUT, None, (Outcome.TIMED_OUT, None, "no answer after 3 retransmissions")),
        (Outcome.READ_ERROR, None, (Outcome.READ_ERROR, 0, "file changed while reading")),
        # A completion short of the last block is a broken outside loop, not a success.
        (Outcome.COMPLETED, None, (Outcome.READ_ERROR, 0, "file changed while reading")),
    ],
)
def test_failed_outside_phases_are_the_core_s_failures(
    root: Path, outcome: Outcome, error: Error | None, expected: tuple[Outcome, int | None, str]
) -> None:
    t, _ = handed_off(root)
    t.finish_external(11.0, outcome, acked=3, retransmits=1, error=error)
    assert t.result == Failed("f.bin", *expected, 3 * 512, 1.0, 1)
    assert t.state is State.FAILED


def test_an_outside_end_during_negotiation_is_dropped(root: Path) -> None:
    t = transfer(root, blksize="1000")
    t.begin(0.0)
    t.finish_external(1.0, Outcome.COMPLETED, acked=5)
    assert (t.state, t.result, t.dropped) == (State.NEGOTIATING, None, 1)


def test_abandon_releases_the_file(root: Path) -> None:
    t, phase = handed_off(root)
    t.abandon()
    assert t.result is None and t.deadline is None
    with pytest.raises(OSError):
        os.fstat(phase.fileno)


def test_small_blocks_read_ahead_at_most_iov_max_buffers(tmp_path: Path) -> None:
    """blksize 8 would read ahead 2730 blocks in one preadv; the kernel takes 1024 at most."""
    data = os.urandom(8 * 3000 + 5)
    (tmp_path / "f.bin").write_bytes(data)
    t = transfer(tmp_path, blksize="8")
    t.begin(0.0)
    out = t.receive(encode_packet(Ack(0)), 0.0)
    got = bytearray()
    for block in range(1, 3002):
        (packet,) = out
        assert bytes(packet[:4]) == b"\0\x03" + block.to_bytes(2, "big")
        got += packet[4:]
        out = t.receive(encode_packet(Ack(block)), 0.0)
    assert isinstance(t.result, Completed) and bytes(got) == data
