# One read transfer (RRQ) as a state machine: datagrams and timer expiries in, datagrams out,
# and a final Completed or Failed event.
#
# Rules for this file:
#   1. Everything that changes `state` lives in TRANSITIONS. A (state, input) pair missing from the
#      table is dropped and counted, never an exception: peers send junk, late ACKs and duplicates,
#      and none of that may end a transfer or a server. The table also lists which states each
#      handler may move to, so diagrams and tests can be generated from it.
#   2. No I/O of our own and no clock. The FileSource is injected and `now` is passed in. The
#      shell owns sockets and timers; it sends what receive()/on_timer() return and calls
#      on_timer() once `deadline` has passed (calling early is harmless: it returns nothing).
#   3. The lists returned by begin()/receive()/on_timer() are reused by the next call: send them
#      before feeding the transfer again. DATA packets are views into one buffer allocated once
#      per transfer. It holds a whole number of windows (about `readahead` bytes, at least one
#      window), filled by a single scatter read, so a lockstep transfer reads the file once per
#      ~20 blocks rather than once per ACK. The packets of a window are adjacent in that buffer,
#      so data_run() can hand the whole window to a sender that segments in the kernel (UDP GSO):
#      one system call per window.
#   4. We only retransmit on a timeout, never because an ACK repeats (RFC 1350's Sorcerer's
#      Apprentice). An ACK inside the outstanding window that is not its last block means the
#      client saw a gap (RFC 7440 section 4): the next window starts right after that block.
#   5. lockstep_ack() is receive() for the one datagram that dominates RFC 1350 transfers: the ACK
#      of the block just sent, when the next block is already in the buffer and is not the last.
#      It makes exactly the changes _on_data_ack() would and returns the next DATA packet; for
#      anything else it changes nothing and returns None, and the caller uses receive(). So the
#      table stays the only place where protocol rules live; the fast path is a subset of it.
#   6. A lockstep data phase over a real file may run outside (bootforge's native data plane, in C):
#      external_data_phase() says what it needs, and finish_external() takes the outcome back
#      through the table (Input.EXTERNAL_END), so results and counters are this file's own. The
#      outside loop must keep rules 4 and 5 and the timeout rules of _on_timeout().
#
# Theory of operation. Blocks are numbered absolutely from 1 internally; the wire carries the low
# 16 bits, which wraps to 0 after 65535 as tftpd-hpa, edk2 and iPXE expect. An ACK's absolute
# number is found by its distance from the last acknowledged block; an ACK outside
# [acked + 1, last sent] is stale (or a duplicate) and is ignored. A file of n bytes has
# n // blksize + 1 blocks; the last one is short, possibly empty, and its ACK ends the transfer.

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ._packets import (
    DEFAULT_BLKSIZE,
    Error,
    ErrorCode,
    MalformedPacket,
    OAck,
    Opcode,
    Request,
    encode_packet,
    negotiate,
    parse_packet,
)
from ._source import (
    ClientAddress,
    FileReadable,
    FileSource,
    NetasciiReadable,
    Readable,
    normalize_path,
)

__all__ = [
    "TRANSITIONS",
    "Completed",
    "DataPhase",
    "Failed",
    "Input",
    "Outcome",
    "State",
    "TftpTransfer",
    "TransferConfig",
]

_DATA_HEADER = struct.Struct("!HH")
_CHANGED = "file changed while reading"
_IOV_MAX = 1024
_ACK_OPCODE = Opcode.ACK.value
_ERROR_OPCODE = Opcode.ERROR.value


# str/int-valued enums hash in C; these are looked up in TRANSITIONS on every datagram.
class State(enum.StrEnum):
    NEW = "new"  # begin() not called yet
    NEGOTIATING = "negotiating"  # OACK sent, waiting for ACK 0
    SENDING = "sending"  # a window of DATA is outstanding
    COMPLETED = "completed"
    FAILED = "failed"


class Input(enum.IntEnum):
    ACK = 1
    ERROR = 2
    OTHER = 3  # well-formed or not, nothing a read transfer expects
    TIMEOUT = 4
    EXTERNAL_END = 5  # the data phase ran outside and ended: finish_external() (rule 6)


class Outcome(enum.Enum):
    COMPLETED = "completed"
    SIZE_PROBE = "size_probe"  # tsize in the OACK answered with ERROR 8: edk2 asking the size
    NOT_FOUND = "not_found"
    DENIED = "denied"  # path refused, permissions, or a write request to this read-only server
    ILLEGAL = "illegal"  # a transfer mode we do not serve
    CLIENT_ERROR = "client_error"  # the client sent ERROR (aborted, or refused our options)
    TIMED_OUT = "timed_out"
    READ_ERROR = "read_error"  # the file could not be read, shrank, or a virtual file failed


@dataclass(frozen=True, slots=True)
class TransferConfig:
    # 1500-byte MTU minus IPv4 (20), UDP (8) and TFTP (4) headers: what OVMF asks for.
    max_blksize: int = 1468
    # RFC 7440 allows 65535; large windows overrun slow NICs, and this sizes our send buffer.
    max_windowsize: int = 64
    timeout: float = 1.0  # seconds before a retransmission unless the client's option says else
    max_retries: int = 5  # consecutive timeouts without progress before giving up
    # netascii is converted as it is sent, but its size is counted by reading the file once at the
    # request (on the caller's thread): this bounds that read.
    max_netascii_size: int = 16 * 1024 * 1024
    # Bytes read ahead per file read (rounded to whole windows, at least one window): one pread
    # per ~20 lockstep blocks instead of one per ACK, for 32 KiB of memory per transfer.
    readahead: int = 32 * 1024


@dataclass(frozen=True, slots=True)
class Completed:
    filename: str
    bytes_sent: int
    duration: float
    blksize: int
    windowsize: int
    retransmits: int

    @property
    def outcome(self) -> Outcome:
        return Outcome.COMPLETED


@dataclass(frozen=True, slots=True)
class Failed:
    filename: str
    outcome: Outcome
    error_code: int | None  # the ERROR code we sent or received; None when nothing was exchanged
    message: str
    bytes_sent: int
    duration: float
    retransmits: int

    @property
    def is_size_probe(self) -> bool:
        return self.outcome is Outcome.SIZE_PROBE


@dataclass(frozen=True, slots=True)
class DataPhase:
    """What an outside data plane needs to run the rest of a lockstep transfer (rule 6). Block
    `sent` (absolute) was just sent and is outstanding; `acked` = sent - 1."""

    fileno: int
    size: int
    blksize: int
    timeout: float
    max_retries: int
    retries: int
    acked: int
    sent: int


Result = Completed | Failed
Outgoing = list[bytes | memoryview]
_Handler = Callable[["TftpTransfer", memoryview, float], State]


def _classify(view: memoryview) -> Input:
    if len(view) >= 4 and view[0] == 0:
        if view[1] == _ACK_OPCODE and len(view) == 4:
            return Input.ACK
        if view[1] == _ERROR_OPCODE:
            return Input.ERROR
    return Input.OTHER


class TftpTransfer:
    """Serve one read request. Create it, call begin(), then feed it datagrams and timer ticks."""

    def __init__(
        self,
        request: Request,
        source: FileSource,
        client: ClientAddress,
        config: TransferConfig | None = None,
    ) -> None:
        self.request = request
        self.client = client
        self.config = config or TransferConfig()
        self.state = State.NEW
        self.deadline: float | None = None  # when on_timer() next has work; None when finished
        self.result: Result | None = None
        self.dropped = 0  # datagrams the table had no entry for
        self.stale_acks = 0  # duplicate or out-of-window ACKs, ignored
        self.retransmits = 0
        self._source = source
        self._out: Outgoing = []
        self._readable: Readable | None = None
        self._started = 0.0
        self._blksize = DEFAULT_BLKSIZE
        self._windowsize = 1
        self._timeout = self.config.timeout
        self._retries = 0
        self._oack = b""
        self._acked = 0  # last block the client acknowledged (absolute)
        self._sent_to = 0  # last block of the outstanding window (absolute)
        self._last_block = 1
        self._buffer = bytearray()
        self._packets: list[memoryview] = []  # one per slot of the buffer, header and payload
        self._payloads: list[memoryview] = []
        self._base = 0  # the buffer holds blocks _base + 1 .. _base + _filled (absolute)
        self._filled = 0
        self._stride = DEFAULT_BLKSIZE + 4
        self._run_start = 0  # where the DATA run the last call returned starts in the buffer
        self._run_bytes = 0  # its length; 0: none
        self._external: tuple[Outcome, int, int, int, int, Error | None] | None = None

    # -- the shell's interface ------------------------------------------------------------------

    @property
    def blksize(self) -> int:
        return self._blksize

    @property
    def windowsize(self) -> int:
        return self._windowsize

    def data_run(self) -> tuple[memoryview, int] | None:
        """The DATA packets the last call returned, as one contiguous buffer of datagrams of
        blksize + 4 bytes each (the last may be shorter), with that segment size. This is what
        a sender using UDP segmentation offload (UDP_SEGMENT) passes in one system call."""
        if not self._run_bytes:
            return None
        start = self._run_start
        return memoryview(self._buffer)[start : start + self._run_bytes], self._stride

    def begin(self, now: float) -> Outgoing:
        """Open the file and produce the first reply: OACK, the first DATA, or an ERROR."""
        self._out.clear()
        self._run_bytes = 0
        self._started = now
        if self.state is State.NEW:
            self.state = self._open(now)
        return self._out

    def receive(self, datagram: bytes | bytearray | memoryview, now: float) -> Outgoing:
        """Feed one datagram that came from the client's TID."""
        self._out.clear()
        self._run_bytes = 0
        view = datagram if isinstance(datagram, memoryview) else memoryview(datagram)
        self._step(_classify(view), view, now)
        return self._out

    def lockstep_ack(self, datagram: bytes | bytearray | memoryview, now: float) -> memoryview | None:
        """receive() for the common lockstep case (rule 5): the next DATA packet, or None when
        this datagram needs receive(). None means nothing was changed."""
        sent = self._sent_to
        slot = sent - self._base  # the next block's slot
        if (
            len(datagram) != 4
            or datagram[1] != _ACK_OPCODE
            or datagram[0]
            or (datagram[2] << 8 | datagram[3]) != sent & 0xFFFF
            or self._windowsize != 1
            or self.state is not State.SENDING
            or slot >= self._filled
            or sent + 1 >= self._last_block
        ):
            return None
        self._acked = sent
        self._retries = 0
        self._sent_to = block = sent + 1
        offset = slot * self._stride
        buffer = self._buffer
        buffer[offset + 2] = (block >> 8) & 0xFF
        buffer[offset + 3] = block & 0xFF
        self.deadline = now + self._timeout
        self._run_bytes = 0
        return self._packets[slot]

    def external_data_phase(self) -> DataPhase | None:
        """The lockstep data phase as an outside loop runs it, or None when this transfer does not
        qualify: it must be SENDING with windowsize 1 from a real file (octet mode)."""
        readable = self._readable
        if self.state is not State.SENDING or self._windowsize != 1 or type(readable) is not FileReadable:
            return None
        return DataPhase(
            readable.fileno(),
            readable.size,
            self._blksize,
            self._timeout,
            self.config.max_retries,
            self._retries,
            self._acked,
            self._sent_to,
        )

    def finish_external(
        self,
        now: float,
        outcome: Outcome,
        *,
        acked: int,
        retransmits: int = 0,
        dropped: int = 0,
        stale_acks: int = 0,
        error: Error | None = None,
    ) -> None:
        """End a data phase that ran outside (rule 6): `acked` is the last block the client
        acknowledged (absolute), the counts are the outside loop's, `error` is the client's ERROR
        for CLIENT_ERROR. Sets `result` as if this transfer had run the phase itself."""
        self._out.clear()
        self._run_bytes = 0
        self._external = (outcome, acked, retransmits, dropped, stale_acks, error)
        self._step(Input.EXTERNAL_END, memoryview(b""), now)

    def abandon(self) -> None:
        """The shell stops without a result (server shutdown): release the file."""
        self._close()

    def on_timer(self, now: float) -> Outgoing:
        """Call when `deadline` has passed; retransmits or gives up."""
        self._out.clear()
        self._run_bytes = 0
        if self.deadline is not None and now >= self.deadline:
            self._step(Input.TIMEOUT, memoryview(b""), now)
        return self._out

    # -- the table ------------------------------------------------------------------------------

    def _step(self, kind: Input, view: memoryview, now: float) -> None:
        entry = TRANSITIONS.get((self.state, kind))
        if entry is None:
            self.dropped += 1
            return
        handler, allowed = entry
        new_state = handler(self, view, now)
        assert new_state in allowed, (self.state, kind, new_state)
        self.state = new_state

    def _on_negotiation_ack(self, view: memoryview, now: float) -> State:
        if view[2] or view[3]:
            self.stale_acks += 1  # only ACK 0 accepts an OACK
            return State.NEGOTIATING
        return self._send_window(now)

    def _on_data_ack(self, view: memoryview, now: float) -> State:
        block = (view[2] << 8) | view[3]
        delta = (block - self._acked) & 0xFFFF
        if delta == 0 or delta > self._sent_to - self._acked:
            self.stale_acks += 1
            return State.SENDING
        self._acked += delta
        self._retries = 0
        if self._acked == self._last_block:
            return self._finish_completed(now)
        return self._send_window(now)

    def _on_peer_error(self, view: memoryview, now: float) -> State:
        try:
            packet = parse_packet(view)
        except MalformedPacket:
            self.dropped += 1
            return self.state
        assert isinstance(packet, Error)
        probe = (
            self.state is State.NEGOTIATING
            and b"tsize\0" in self._oack
            and packet.code == ErrorCode.OPTION_REFUSED
        )
        outcome = Outcome.SIZE_PROBE if probe else Outcome.CLIENT_ERROR
        return self._finish_failed(now, outcome, packet.code, packet.message, send=False)

    def _on_other(self, view: memoryview, now: float) -> State:
        self.dropped += 1
        return self.state

    def _on_timeout(self, view: memoryview, now: float) -> State:
        self._retries += 1
        if self._retries > self.config.max_retries:
            return self._finish_failed(now, Outcome.TIMED_OUT, None, self._gave_up(), send=False)
        if self.state is State.NEGOTIATING:
            self.retransmits += 1
            self._out.append(self._oack)
            self.deadline = now + self._timeout
            return State.NEGOTIATING
        self.retransmits += self._sent_to - self._acked
        return self._send_window(now)

    def _on_external_end(self, view: memoryview, now: float) -> State:
        assert self._external is not None
        outcome, acked, retransmits, dropped, stale_acks, error = self._external
        self._external = None
        self._acked = self._sent_to = acked
        self.retransmits += retransmits
        self.dropped += dropped
        self.stale_acks += stale_acks
        if outcome is Outcome.COMPLETED and acked == self._last_block:
            return self._finish_completed(now)
        if outcome is Outcome.CLIENT_ERROR and error is not None:
            return self._finish_failed(now, outcome, error.code, error.message, send=False)
        if outcome is Outcome.TIMED_OUT:
            return self._finish_failed(now, outcome, None, self._gave_up(), send=False)
        # The outside loop sent this ERROR itself; any other report is a broken data plane.
        return self._finish_failed(now, Outcome.READ_ERROR, ErrorCode.NOT_DEFINED, _CHANGED, send=False)

    def _gave_up(self) -> str:
        return f"no answer after {self.config.max_retries} retransmissions"

    # -- opening and negotiating ----------------------------------------------------------------

    def _open(self, now: float) -> State:
        req = self.request
        if req.opcode is not Opcode.RRQ:
            return self._finish_failed(now, Outcome.DENIED, ErrorCode.ACCESS_VIOLATION, "read-only server")
        if req.mode not in ("octet", "netascii"):
            return self._finish_failed(
                now, Outcome.ILLEGAL, ErrorCode.ILLEGAL_OPERATION, f"mode {req.mode} unsupported"
            )
        failure = self._open_readable()
        if failure is not None:
            outcome, code, message = failure
            return self._finish_failed(now, outcome, code, message)
        assert self._readable is not None
        size = self._readable.size
        agreed = negotiate(
            req.options,
            size,
            max_blksize=self.config.max_blksize,
            max_windowsize=self.config.max_windowsize,
        )
        self._blksize, self._windowsize = agreed.blksize, agreed.windowsize
        if agreed.timeout is not None:
            self._timeout = agreed.timeout
        self._last_block = size // self._blksize + 1
        self._allocate()
        if not agreed.oack:
            return self._send_window(now)  # RFC 2347: no options, no OACK
        self._oack = encode_packet(OAck(agreed.oack))
        self._out.append(self._oack)
        self.deadline = now + self._timeout
        return State.NEGOTIATING

    def _open_readable(self) -> tuple[Outcome, int, str] | None:
        try:
            path = normalize_path(self.request.filename)  # PathRefused is a PermissionError
            readable = self._source.open(path, self.client)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return Outcome.NOT_FOUND, ErrorCode.FILE_NOT_FOUND, "file not found"
        except PermissionError:
            return Outcome.DENIED, ErrorCode.ACCESS_VIOLATION, "access violation"
        except Exception as exc:  # a failing virtual-file hook must not take the server down
            return Outcome.READ_ERROR, ErrorCode.NOT_DEFINED, f"cannot open: {type(exc).__name__}"
        if self.request.mode == "netascii":
            if readable.size > self.config.max_netascii_size:
                readable.close()
                return Outcome.ILLEGAL, ErrorCode.ILLEGAL_OPERATION, "file too large for netascii"
            try:
                readable = NetasciiReadable(readable)  # closes it if it fails
            except OSError:
                return Outcome.READ_ERROR, ErrorCode.NOT_DEFINED, _CHANGED
        self._readable = readable
        return None

    def _allocate(self) -> None:
        # The views are made once and reused; every slot's opcode is written here, once.
        self._stride = stride = self._blksize + 4
        window = self._windowsize
        # At most IOV_MAX (1024) buffers: one preadv takes no more (blksize 8 would ask 2730).
        windows = max(1, min(self.config.readahead // (window * stride), _IOV_MAX // window))
        slots = min(window * windows, self._last_block)
        self._buffer = bytearray(stride * slots)
        whole = memoryview(self._buffer)
        self._packets = [whole[i * stride : (i + 1) * stride] for i in range(slots)]
        self._payloads = [p[4:] for p in self._packets]
        for i in range(slots):
            _DATA_HEADER.pack_into(self._buffer, i * stride, Opcode.DATA, 0)

    # -- sending --------------------------------------------------------------------------------

    def _send_window(self, now: float) -> State:
        first = self._acked + 1
        count = min(self._windowsize, self._last_block - self._acked)
        last = first + count - 1
        if (first <= self._base or last > self._base + self._filled) and not self._refill(first):
            return self._finish_failed(now, Outcome.READ_ERROR, ErrorCode.NOT_DEFINED, _CHANGED)
        start = first - self._base - 1
        pack_into, buffer, stride = _DATA_HEADER.pack_into, self._buffer, self._stride
        for slot in range(start, start + count):
            pack_into(buffer, slot * stride, 3, (first - start + slot) & 0xFFFF)
        packets = self._packets
        if last < self._last_block:
            self._out.extend(packets[start : start + count])
            self._run_bytes = count * stride
        else:  # the final block is short, possibly empty
            self._out.extend(packets[start : start + count - 1])
            self._out.append(packets[start + count - 1][: 4 + self._tail()])
            self._run_bytes = (count - 1) * stride + 4 + self._tail()
        self._run_start = start * stride
        self._sent_to = last
        self.deadline = now + self._timeout
        return State.SENDING

    def _refill(self, first: int) -> bool:
        """Read the blocks from `first` on into the buffer, as many as it holds; False when the
        file read short (it shrank, or failed)."""
        assert self._readable is not None
        count = min(len(self._payloads), self._last_block - first + 1)
        payloads = self._payloads[:count]
        if first + count - 1 == self._last_block:
            payloads[-1] = payloads[-1][: self._tail()]
        wanted = _total(payloads)
        try:
            got = self._readable.readinto_at(payloads, (first - 1) * self._blksize) if wanted else 0
        except OSError:
            return False
        if got != wanted:
            return False
        self._base, self._filled = first - 1, count
        return True

    def _tail(self) -> int:
        return self._size() - (self._last_block - 1) * self._blksize

    def _size(self) -> int:
        assert self._readable is not None
        return self._readable.size

    # -- endings --------------------------------------------------------------------------------

    def _finish_completed(self, now: float) -> State:
        self.result = Completed(
            self.request.filename,
            self._size(),
            now - self._started,
            self._blksize,
            self._windowsize,
            self.retransmits,
        )
        self._close()
        return State.COMPLETED

    def _finish_failed(
        self, now: float, outcome: Outcome, code: int | None, message: str, *, send: bool = True
    ) -> State:
        if send and code is not None:
            self._out.append(encode_packet(Error(code, message)))
        sent = min(self._acked * self._blksize, self._size()) if self._readable else 0
        self.result = Failed(
            self.request.filename,
            outcome,
            code,
            message,
            sent,
            now - self._started,
            self.retransmits,
        )
        self._close()
        return State.FAILED

    def _close(self) -> None:
        self.deadline = None
        if self._readable is not None:
            self._readable.close()
            self._readable = None


def _total(buffers: list[memoryview]) -> int:
    return sum(len(b) for b in buffers)


_ENDED = frozenset({State.COMPLETED, State.FAILED})

# (state, input) -> (handler, states the handler may return). Anything missing is dropped.
TRANSITIONS: dict[tuple[State, Input], tuple[_Handler, frozenset[State]]] = {
    (State.NEGOTIATING, Input.ACK): (
        TftpTransfer._on_negotiation_ack,
        frozenset({State.NEGOTIATING, State.SENDING, State.FAILED}),
    ),
    (State.NEGOTIATING, Input.ERROR): (
        TftpTransfer._on_peer_error,
        frozenset({State.NEGOTIATING, State.FAILED}),
    ),
    (State.NEGOTIATING, Input.OTHER): (TftpTransfer._on_other, frozenset({State.NEGOTIATING})),
    (State.NEGOTIATING, Input.TIMEOUT): (
        TftpTransfer._on_timeout,
        frozenset({State.NEGOTIATING, State.FAILED}),
    ),
    # No data phase can have run outside before negotiation ended (rule 6).
    (State.NEGOTIATING, Input.EXTERNAL_END): (TftpTransfer._on_other, frozenset({State.NEGOTIATING})),
    (State.SENDING, Input.ACK): (TftpTransfer._on_data_ack, frozenset({State.SENDING}) | _ENDED),
    (State.SENDING, Input.ERROR): (
        TftpTransfer._on_peer_error,
        frozenset({State.SENDING, State.FAILED}),
    ),
    (State.SENDING, Input.OTHER): (TftpTransfer._on_other, frozenset({State.SENDING})),
    (State.SENDING, Input.TIMEOUT): (
        TftpTransfer._on_timeout,
        frozenset({State.SENDING, State.FAILED}),
    ),
    (State.SENDING, Input.EXTERNAL_END): (TftpTransfer._on_external_end, _ENDED),
}
