"""The per-transfer state machine, driven by a simulated RFC 7440 client over a lossy link."""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootforge.netboot.tftp import (
    TRANSITIONS,
    Ack,
    BytesReadable,
    ClientAddress,
    Completed,
    Data,
    Error,
    ErrorCode,
    Failed,
    Input,
    OAck,
    Opcode,
    Outcome,
    Readable,
    Request,
    State,
    TftpTransfer,
    TransferConfig,
    encode_packet,
    normalize_path,
    parse_packet,
)

CLIENT: ClientAddress = ("10.213.0.50", 40000)


@dataclass
class MemorySource:
    files: dict[str, bytes]
    opened: list[tuple[str, ClientAddress]] = field(default_factory=list)

    def open(self, path: str, client: ClientAddress) -> Readable:
        assert normalize_path(path) == path, "the transfer hands sources normalized paths"
        self.opened.append((path, client))
        if path not in self.files:
            raise FileNotFoundError(path)
        return BytesReadable(self.files[path])


def rrq(name: str = "f", mode: str = "octet", **options: str) -> Request:
    return Request(Opcode.RRQ, name, mode, dict(options))


def start(data: bytes, request: Request, config: TransferConfig | None = None) -> TftpTransfer:
    return TftpTransfer(request, MemorySource({"f": data}), CLIENT, config)


def ack(block: int) -> bytes:
    return encode_packet(Ack(block & 0xFFFF))


def blocks_of(out: list[bytes | memoryview]) -> list[int]:
    return [struct.unpack_from("!HH", p)[1] for p in out]


@dataclass
class SimClient:
    """Receives DATA, ACKs per RFC 7440 (last block of a window, or the last in-order block)."""

    windowsize: int
    blksize: int = 512
    received: bytearray = field(default_factory=bytearray)
    expected: int = 1
    in_window: int = 0
    done: bool = False

    def on_packet(self, wire: bytes) -> bytes | None:
        packet = parse_packet(wire)
        if isinstance(packet, OAck):
            self.blksize = int(packet.options.get("blksize", "512"))
            self.windowsize = int(packet.options.get("windowsize", "1"))
            return ack(0)
        assert isinstance(packet, Data), packet
        if packet.block != self.expected & 0xFFFF:
            self.in_window = 0
            return ack(self.expected - 1)  # gap or duplicate: ack what we have in order
        if self.done:
            return ack(packet.block)
        self.received += packet.payload
        self.expected += 1
        self.in_window += 1
        if len(packet.payload) < self.blksize:
            self.done = True
            return ack(packet.block)
        if self.in_window == self.windowsize:
            self.in_window = 0
            return ack(packet.block)
        return None


def run_lossy(transfer: TftpTransfer, client: SimClient, rng: random.Random, loss: float) -> None:
    """Deliver packets FIFO with random loss both ways; fire timers when the link goes quiet."""
    now = 0.0
    link: deque[bytes] = deque(bytes(p) for p in transfer.begin(now))
    for _ in range(2_000_000):
        if transfer.result is not None:
            return
        if not link:
            assert transfer.deadline is not None
            now = transfer.deadline
            link.extend(bytes(p) for p in transfer.on_timer(now))
            continue
        wire = link.popleft()
        if rng.random() < loss:
            continue
        reply = client.on_packet(wire)
        if reply is not None and rng.random() >= loss:
            now += 0.001
            link.extend(bytes(p) for p in transfer.receive(reply, now))
    raise AssertionError("simulation did not end")


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 20_000),
    blksize=st.sampled_from([8, 512, 1024, 1468]),
    windowsize=st.integers(1, 16),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
    seed=st.integers(0, 2**32),
)
def test_lossy_transfer_delivers_identical_bytes_or_times_out(
    size: int, blksize: int, windowsize: int, loss: float, seed: int
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    config = TransferConfig(max_retries=50)
    request = rrq(blksize=str(blksize), windowsize=str(windowsize), tsize="0")
    transfer = start(data, request, config)
    client = SimClient(windowsize)
    run_lossy(transfer, client, rng, loss)
    if isinstance(transfer.result, Completed):
        assert bytes(client.received) == data
        assert transfer.result.bytes_sent == size
        assert transfer.state is State.COMPLETED
    else:
        # Only a lost final ACK can leave the client done while we give up.
        assert loss > 0
        assert isinstance(transfer.result, Failed)
        assert transfer.result.outcome is Outcome.TIMED_OUT


def test_block_numbers_wrap_to_zero() -> None:
    data = random.Random(1).randbytes(8 * 65536 + 3)  # 65537 full blocks and a short one
    transfer = start(data, rrq(blksize="8", windowsize="64"))
    client = SimClient(64)
    run_lossy(transfer, client, random.Random(2), 0.0)
    assert isinstance(transfer.result, Completed)
    assert bytes(client.received) == data


def test_no_options_sends_data_at_once_in_lockstep() -> None:
    transfer = start(b"x" * 1000, rrq())
    out = transfer.begin(0.0)
    assert [bytes(p)[:4] for p in out] == [b"\0\x03\0\x01"]
    assert len(out[0]) == 4 + 512
    assert blocks_of(transfer.receive(ack(1), 0.1)) == [2]
    assert len(transfer.receive(ack(1), 0.2)) == 0  # duplicate ACK: no Sorcerer's Apprentice
    assert transfer.stale_acks == 1
    assert len(transfer.receive(ack(2), 0.3)) == 0
    assert isinstance(transfer.result, Completed)


def test_exact_multiple_of_blksize_ends_with_empty_block() -> None:
    transfer = start(b"y" * 1024, rrq())
    transfer.begin(0.0)
    transfer.receive(ack(1), 0.0)
    last = transfer.receive(ack(2), 0.0)
    assert [bytes(p) for p in last] == [b"\0\x03\0\x03"]


def test_ovmf_size_probe_is_not_a_failure_and_gets_no_reply() -> None:
    transfer = start(b"z" * 5000, rrq(tsize="0", blksize="1468", windowsize="4"))
    (oack,) = transfer.begin(0.0)
    assert parse_packet(oack) == OAck({"tsize": "5000", "blksize": "1468", "windowsize": "4"})
    out = transfer.receive(encode_packet(Error(8, "User aborted the transfer")), 0.01)
    assert len(out) == 0
    assert isinstance(transfer.result, Failed)
    assert transfer.result.is_size_probe
    assert transfer.deadline is None


def test_error_8_without_tsize_is_a_refusal_not_a_probe() -> None:
    transfer = start(b"z", rrq(blksize="1468"))
    transfer.begin(0.0)
    transfer.receive(encode_packet(Error(8, "no")), 0.01)
    assert isinstance(transfer.result, Failed)
    assert transfer.result.outcome is Outcome.CLIENT_ERROR


@pytest.mark.parametrize(
    ("request_", "code", "outcome"),
    [
        (rrq("revocations_sku.efi"), ErrorCode.FILE_NOT_FOUND, Outcome.NOT_FOUND),
        (rrq("../etc/passwd"), ErrorCode.ACCESS_VIOLATION, Outcome.DENIED),
        (Request(Opcode.WRQ, "f", "octet"), ErrorCode.ACCESS_VIOLATION, Outcome.DENIED),
        (rrq("f", "mail"), ErrorCode.ILLEGAL_OPERATION, Outcome.ILLEGAL),
    ],
)
def test_refusals_answer_at_once(request_: Request, code: ErrorCode, outcome: Outcome) -> None:
    transfer = start(b"data", request_)
    (reply,) = transfer.begin(0.0)
    error = parse_packet(reply)
    assert isinstance(error, Error) and error.code == code
    assert isinstance(transfer.result, Failed) and transfer.result.outcome is outcome
    assert transfer.state is State.FAILED and transfer.deadline is None


def test_gap_in_window_resends_from_the_acked_block() -> None:
    transfer = start(b"a" * 512 * 20, rrq(windowsize="4"))
    transfer.begin(0.0)
    assert blocks_of(transfer.receive(ack(0), 0.0)) == [1, 2, 3, 4]
    assert blocks_of(transfer.receive(ack(2), 0.0)) == [3, 4, 5, 6]  # block 3 was lost
    assert len(transfer.receive(ack(1), 0.0)) == 0  # stale
    assert len(transfer.receive(ack(9), 0.0)) == 0  # beyond what we sent
    assert blocks_of(transfer.receive(ack(6), 0.0)) == [7, 8, 9, 10]


def test_timeouts_retransmit_then_give_up() -> None:
    config = TransferConfig(timeout=2.0, max_retries=2)
    transfer = start(b"a" * 2000, rrq(windowsize="2"), config)
    transfer.begin(0.0)
    assert blocks_of(transfer.receive(ack(0), 0.0)) == [1, 2]
    assert transfer.deadline == 2.0
    assert len(transfer.on_timer(1.0)) == 0  # early call is harmless
    assert blocks_of(transfer.on_timer(2.0)) == [1, 2]
    assert blocks_of(transfer.on_timer(4.0)) == [1, 2]
    assert len(transfer.on_timer(6.0)) == 0
    assert isinstance(transfer.result, Failed)
    assert transfer.result.outcome is Outcome.TIMED_OUT
    assert transfer.retransmits == 4


def test_oack_is_retransmitted_and_client_timeout_option_is_used() -> None:
    transfer = start(b"a", rrq(timeout="5"))
    (oack,) = transfer.begin(10.0)
    assert transfer.deadline == 15.0
    assert [bytes(p) for p in transfer.on_timer(15.0)] == [bytes(oack)]


def test_netascii_converts_line_endings_and_tsize_counts_them() -> None:
    transfer = start(b"a\nb\rc", rrq(mode="netascii", tsize="0"))
    (oack,) = transfer.begin(0.0)
    assert parse_packet(oack) == OAck({"tsize": "7"})
    (data,) = transfer.receive(ack(0), 0.0)
    assert bytes(data)[4:] == b"a\r\nb\r\0c"


def test_virtual_hook_failure_becomes_error_0() -> None:
    class Broken:
        def open(self, path: str, client: ClientAddress) -> Readable:
            raise RuntimeError("template bug")

    transfer = TftpTransfer(rrq("grub/grub.cfg"), Broken(), CLIENT)
    (reply,) = transfer.begin(0.0)
    assert parse_packet(reply) == Error(0, "cannot open: RuntimeError")
    assert isinstance(transfer.result, Failed)
    assert transfer.result.outcome is Outcome.READ_ERROR


def test_file_shrinking_mid_transfer_fails_cleanly() -> None:
    class Shrinking(BytesReadable):
        def readinto_at(self, buffers: object, offset: int) -> int:
            return 0

    class Source:
        def open(self, path: str, client: ClientAddress) -> Readable:
            return Shrinking(b"x" * 100)

    transfer = TftpTransfer(rrq(), Source(), CLIENT)
    (reply,) = transfer.begin(0.0)
    assert parse_packet(reply) == Error(0, "file changed while reading")


junk = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda b: ack(b), st.integers(0, 0xFFFF)),
    st.builds(
        lambda c, m: encode_packet(Error(c, m)),
        st.integers(0, 0xFFFF),
        st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"])),
    ),
    st.just(b"\0\x05"),
    st.just(b"\0\x05\0"),
)


@settings(max_examples=200)
@given(st.lists(st.tuples(junk, st.booleans()), max_size=30), st.integers(0, 3000))
def test_any_datagram_in_any_state_never_raises(inputs: list[tuple[bytes, bool]], size: int) -> None:
    transfer = start(b"q" * size, rrq(windowsize="3", tsize="0"))
    now = 0.0
    transfer.begin(now)
    for datagram, fire_timer in inputs:
        now += 1.0
        out = transfer.on_timer(now) if fire_timer else transfer.receive(datagram, now)
        for packet in out:
            assert bytes(packet)[:2] in (b"\0\x03", b"\0\x05", b"\0\x06")
    assert transfer.state in State


def test_table_covers_every_input_of_the_live_states() -> None:
    for state in (State.NEGOTIATING, State.SENDING):
        for kind in Input:
            assert (state, kind) in TRANSITIONS
    assert not any(s in (State.COMPLETED, State.FAILED) for s, _ in TRANSITIONS)


def test_source_gets_the_normalized_path_and_the_client() -> None:
    source = MemorySource({"grub/grub.cfg": b"set default=0\n"})
    transfer = TftpTransfer(rrq("/grub//grub.cfg"), source, CLIENT)
    (data,) = transfer.begin(0.0)
    assert bytes(data) == b"\0\x03\0\x01set default=0\n"
    assert source.opened == [("grub/grub.cfg", CLIENT)]


def test_data_run_is_the_window_as_one_buffer() -> None:
    transfer = start(bytes(range(256)) * 10, rrq(blksize="512", windowsize="8"))
    transfer.begin(0.0)
    out = transfer.receive(ack(0), 0.0)
    run = transfer.data_run()
    assert run is not None
    view, segment = run
    assert segment == 516
    assert bytes(view) == b"".join(bytes(p) for p in out)
    assert transfer.receive(ack(0), 0.0) == [] and transfer.data_run() is None


# -- the lockstep fast path and read-ahead -------------------------------------------------------


def outputs_of(transfer: TftpTransfer, datagram: bytes, now: float, fast: bool) -> list[bytes]:
    if fast:
        packet = transfer.lockstep_ack(datagram, now)
        if packet is not None:
            return [bytes(packet)]
    return [bytes(p) for p in transfer.receive(datagram, now)]


def observable(transfer: TftpTransfer) -> tuple[object, ...]:
    return (
        transfer.state,
        transfer.deadline,
        transfer.result,
        transfer.dropped,
        transfer.stale_acks,
        transfer.retransmits,
    )


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(0, 30_000),
    blksize=st.sampled_from([8, 512, 1468]),
    windowsize=st.sampled_from([None, "1", "4"]),
    readahead=st.sampled_from([1, 4096, 32768]),
    seed=st.integers(0, 2**32),
)
def test_lockstep_fast_path_is_receive_in_every_case(
    size: int, blksize: int, windowsize: str | None, readahead: int, seed: int
) -> None:
    """The same datagrams into two transfers, one through lockstep_ack() first: the same packets
    out and the same state after every step, including duplicate, stale and early ACKs."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    options = {"blksize": str(blksize)} | ({"windowsize": windowsize} if windowsize else {})
    config = TransferConfig(readahead=readahead, max_retries=3)
    plain, fast = (start(data, rrq(**options), config) for _ in range(2))
    expected = [bytes(p) for p in plain.begin(0.0)]
    assert [bytes(p) for p in fast.begin(0.0)] == expected
    last_data, now = 0, 0.0
    for _ in range(300):
        if expected and expected[-1][:2] == b"\0\x03":
            last_data = struct.unpack_from("!H", expected[-1], 2)[0]
        now += 1.0  # the default timeout: every timer step retransmits
        if rng.random() < 0.15:
            expected = [bytes(p) for p in plain.on_timer(now)]
            assert [bytes(p) for p in fast.on_timer(now)] == expected
        else:
            offset = 0 if rng.random() < 0.7 else rng.randint(-2, 2)
            datagram = ack(max(0, last_data + offset))
            expected = outputs_of(plain, datagram, now, fast=False)
            assert outputs_of(fast, datagram, now, fast=True) == expected
        assert observable(plain) == observable(fast)


def test_lockstep_ack_answers_only_the_in_order_ack() -> None:
    transfer = start(b"x" * (512 * 4 + 10), rrq())
    transfer.begin(0.0)  # block 1 out
    packet = transfer.lockstep_ack(ack(1), 1.0)
    assert packet is not None and bytes(packet)[:4] == b"\0\x03\0\x02" and len(packet) == 516
    assert transfer.deadline == 2.0
    before = observable(transfer)
    for datagram in (ack(1), ack(3), ack(0), b"\0\x04\0", b"\0\x05\0\x02", b"\x01\x04\0\x02"):
        assert transfer.lockstep_ack(datagram, 1.5) is None  # left to receive(), untouched
        assert observable(transfer) == before
    assert len(transfer.receive(ack(1), 1.5)) == 0  # the duplicate: no Sorcerer's Apprentice
    assert transfer.stale_acks == 1
    assert transfer.lockstep_ack(ack(2), 1.6) is not None
    assert transfer.lockstep_ack(ack(3), 1.7) is not None
    assert transfer.lockstep_ack(ack(4), 1.8) is None  # the short last block: receive() sends it
    assert [bytes(p)[:4] for p in transfer.receive(ack(4), 1.8)] == [b"\0\x03\0\x05"]
    assert transfer.lockstep_ack(ack(5), 1.9) is None
    transfer.receive(ack(5), 1.9)
    assert isinstance(transfer.result, Completed)


def test_lockstep_ack_leaves_windows_and_negotiation_to_receive() -> None:
    windowed = start(b"x" * 5000, rrq(windowsize="2"))
    windowed.begin(0.0)
    windowed.receive(ack(0), 0.0)
    assert windowed.lockstep_ack(ack(2), 0.1) is None
    negotiating = start(b"x" * 5000, rrq(blksize="512"))
    negotiating.begin(0.0)
    assert negotiating.lockstep_ack(ack(0), 0.1) is None
    assert negotiating.state is State.NEGOTIATING


class CountingReadable(BytesReadable):
    def __init__(self, data: bytes, reads: list[int], fail_after: int | None = None) -> None:
        super().__init__(data)
        self.reads = reads
        self.fail_after = fail_after

    def readinto_at(self, buffers: object, offset: int) -> int:
        self.reads.append(offset)
        if self.fail_after is not None and len(self.reads) > self.fail_after:
            return 0  # the file shrank under us
        return super().readinto_at(buffers, offset)  # type: ignore[arg-type]


def counting_transfer(data: bytes, reads: list[int], fail_after: int | None = None) -> TftpTransfer:
    class Source:
        def open(self, path: str, client: ClientAddress) -> Readable:
            return CountingReadable(data, reads, fail_after)

    config = TransferConfig(readahead=512 * 8)
    return TftpTransfer(rrq(), Source(), CLIENT, config)


def test_lockstep_reads_the_file_once_per_readahead() -> None:
    data = random.Random(3).randbytes(512 * 20 + 100)
    reads: list[int] = []
    transfer = counting_transfer(data, reads)
    client = SimClient(1)
    run_lossy(transfer, client, random.Random(4), 0.0)
    assert bytes(client.received) == data
    # 8 slots of 516 bytes fit in 4096 bytes only 7 times: blocks 1-7, 8-14, 15-21.
    assert reads == [0, 7 * 512, 14 * 512]


def test_a_file_shrinking_between_reads_fails_cleanly() -> None:
    reads: list[int] = []
    transfer = counting_transfer(b"x" * 512 * 20, reads, fail_after=1)
    transfer.begin(0.0)
    for block in range(1, 7):
        assert transfer.lockstep_ack(ack(block), 0.0) is not None
    assert transfer.lockstep_ack(ack(7), 0.0) is None  # block 8 is not read yet
    (reply,) = transfer.receive(ack(7), 0.0)
    assert parse_packet(reply) == Error(0, "file changed while reading")
    assert isinstance(transfer.result, Failed) and transfer.result.outcome is Outcome.READ_ERROR
