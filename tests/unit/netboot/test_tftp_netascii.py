"""netascii converted as it is read (issue #11 finding 7): the same bytes as converting the whole
file, from any offset, over a lossy windowed transfer, without a copy of the file."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootforge.netboot.tftp import (
    BytesReadable,
    ClientAddress,
    Completed,
    Failed,
    NetasciiReadable,
    Opcode,
    Outcome,
    Readable,
    Request,
    TftpTransfer,
    TransferConfig,
    netascii_encode,
)

CLIENT: ClientAddress = ("10.213.0.50", 40000)
# Bytes that matter to netascii, weighted so runs of CR and LF (and CR at chunk edges) are common.
_TEXT = st.binary(max_size=3000) | st.lists(st.sampled_from([b"\r", b"\n", b"\0", b"a", b"\r\n"])).map(
    b"".join
)


class Counting(BytesReadable):
    """A file that remembers the largest single read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0
        self.closed = False

    def read_at(self, offset: int, n: int) -> bytes:
        self.largest = max(self.largest, n)
        return super().read_at(offset, n)

    def close(self) -> None:
        self.closed = True
        super().close()


@settings(max_examples=300, deadline=None)
@given(
    data=_TEXT, chunk=st.integers(1, 64), reads=st.lists(st.tuples(st.integers(0, 7000), st.integers(0, 70)))
)
def test_any_read_equals_the_whole_conversion(data: bytes, chunk: int, reads: list[tuple[int, int]]) -> None:
    whole = netascii_encode(data)
    readable = NetasciiReadable(BytesReadable(data), chunk=chunk)
    assert readable.size == len(whole)
    for offset, n in reads:
        assert readable.read_at(offset, n) == whole[offset : offset + n]
        buffers = [bytearray(n), bytearray(n // 2 + 1)]
        got = readable.readinto_at([memoryview(b) for b in buffers], offset)
        assert got == len(whole[offset : offset + len(buffers[0]) + len(buffers[1])])
        assert (bytes(buffers[0]) + bytes(buffers[1]))[:got] == whole[offset : offset + got]


def test_reads_stay_within_a_chunk_of_the_file() -> None:
    data = (b"line\r\n" * 200_000)[:1_000_000]
    inner = Counting(data)
    readable = NetasciiReadable(inner, chunk=16384)
    assert readable.read_at(700_000, 1468) == netascii_encode(data)[700_000:701_468]
    assert inner.largest == 16384
    readable.close()
    assert inner.closed


def test_a_file_that_changes_under_the_conversion_reads_as_an_error() -> None:
    data = bytearray(b"abc\n" * 10_000)
    readable = NetasciiReadable(BytesReadable(data), chunk=1024)
    data[5000] = 10  # one more LF: the chunk no longer converts to the length counted at open
    with pytest.raises(OSError, match="changed"):
        readable.read_at(4000, 2000)


class OneFile:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, path: str, client: ClientAddress) -> Readable:
        return BytesReadable(self.data)


def _fetch(transfer: TftpTransfer, rng: random.Random, loss: float) -> bytes:
    """A windowed client over a lossy link (gap ACKs make the transfer read backwards)."""
    now, received, expected = 0.0, bytearray(), 1
    blksize, window = transfer.blksize, transfer.windowsize
    pending = [bytes(p) for p in transfer.begin(now)]
    for _ in range(200_000):
        if transfer.result is not None:
            return bytes(received)
        if not pending:
            assert transfer.deadline is not None
            now = transfer.deadline
            pending = [bytes(p) for p in transfer.on_timer(now)]
            continue
        replies: list[bytes] = []
        for wire in pending:
            if rng.random() < loss:
                continue
            if wire[:2] == b"\0\x06":  # OACK
                blksize, window = transfer.blksize, transfer.windowsize
                replies.append(b"\0\x04\0\0")
                continue
            block = int.from_bytes(wire[2:4], "big")
            if block != expected & 0xFFFF:
                replies.append(b"\0\x04" + ((expected - 1) & 0xFFFF).to_bytes(2, "big"))
                break
            received += wire[4:]
            expected += 1
            if len(wire) - 4 < blksize or (expected - 1) % window == 0:
                replies.append(b"\0\x04" + wire[2:4])
        pending = []
        for reply in replies[-1:]:
            now += 0.001
            pending = [bytes(p) for p in transfer.receive(reply, now)]
    raise AssertionError("transfer did not end")


@settings(max_examples=40, deadline=None)
@given(
    data=_TEXT,
    blksize=st.sampled_from(["8", "512", "1468"]),
    windowsize=st.sampled_from(["1", "4", "16"]),
    loss=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**32),
)
def test_a_lossy_windowed_netascii_transfer_sends_the_whole_conversion(
    data: bytes, blksize: str, windowsize: str, loss: float, seed: int
) -> None:
    request = Request(Opcode.RRQ, "f.cfg", "netascii", {"blksize": blksize, "windowsize": windowsize})
    transfer = TftpTransfer(request, OneFile(data), CLIENT, TransferConfig(max_retries=1000, readahead=64))
    got = _fetch(transfer, random.Random(seed), loss)
    assert isinstance(transfer.result, Completed), transfer.result
    assert got == netascii_encode(data)


def test_netascii_over_the_size_bound_is_refused_before_reading() -> None:
    inner = Counting(b"x" * 5000)

    class Source:
        def open(self, path: str, client: ClientAddress) -> Readable:
            return inner

    request = Request(Opcode.RRQ, "f.cfg", "netascii", {})
    transfer = TftpTransfer(request, Source(), CLIENT, TransferConfig(max_netascii_size=4096))
    transfer.begin(0.0)
    assert isinstance(transfer.result, Failed) and transfer.result.outcome is Outcome.ILLEGAL
    assert inner.largest == 0 and inner.closed
