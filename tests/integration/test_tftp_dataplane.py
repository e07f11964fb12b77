"""The native TFTP data plane (bootforge/servers/_tftp_dataplane.c) as a client sees it.

Lockstep transfers of real files run their data phase in a C thread; these tests fetch over
127.0.0.1 with a bare UDP client (blocking, in a worker thread) and check bytes, events and
counters: file sizes around blksize, block number rollover, retransmission, timeouts, client
errors, strangers, and shutdown while transfers run.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bootforge.netboot.tftp import FileSystemSource, TransferConfig
from bootforge.servers.tftp import TftpEvent, TftpServer

NATIVE = "bootforge.servers._tftp_dataplane"
REPLY_TIMEOUT = 10.0  # a hang guard, not a speed check


def need_native() -> None:
    try:
        importlib.import_module(NATIVE)
    except ImportError as exc:
        pytest.skip(
            f"needs the native TFTP data plane built ({exc}): pip install -e . with gcc and Python headers"
        )


@dataclass
class Served:
    server: TftpServer
    root: Path
    events: list[TftpEvent] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.local_address

    async def settle(self, events: int = 0) -> None:
        """Wait (bounded) until no transfer runs and at least `events` events came."""
        for _ in range(1000):
            if self.server.active_transfers == 0 and len(self.events) >= events:
                return
            await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(root: Path, address: str = "127.0.0.1", **config: Any) -> AsyncIterator[Served]:
    need_native()
    events: list[TftpEvent] = []
    server = TftpServer(
        FileSystemSource(root),
        address,
        port=0,
        config=TransferConfig(**config),
        on_event=events.append,
        dataplane="native",
    )
    async with server:
        yield Served(server, root, events)


class Client:
    """A bare blocking UDP client; run it with asyncio.to_thread."""

    def __init__(self, server: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.server = server
        self.tid: Any = None

    def rrq(self, name: str, **options: str) -> None:
        fields = [name, "octet", *(x for kv in options.items() for x in kv)]
        self.sock.sendto(b"\0\x01" + b"".join(f.encode() + b"\0" for f in fields), self.server)

    def recv(self) -> bytes:
        data, source = self.sock.recvfrom(70000)
        if self.tid is None:
            self.tid = source
        assert source == self.tid
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.tid)

    def ack(self, block: int) -> None:
        self.send(struct.pack("!HH", 4, block & 0xFFFF))

    def quiet(self, seconds: float) -> bytes | None:
        """The next datagram within `seconds`, or None."""
        self.sock.settimeout(seconds)
        try:
            return self.recv()
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(REPLY_TIMEOUT)

    def close(self) -> None:
        self.sock.close()


def start(client: Client, name: str, blksize: int | None) -> bytes:
    """Send the RRQ (with blksize when given), ACK an OACK, and return DATA block 1."""
    client.rrq(name, **({"blksize": str(blksize)} if blksize else {}))
    packet = client.recv()
    if packet[:2] == b"\0\x06":
        client.ack(0)
        packet = client.recv()
    return packet


def fetch(server: tuple[str, int], name: str, blksize: int | None = None) -> bytes:
    client = Client(server)
    try:
        size, got, expected = blksize or 512, bytearray(), 1
        packet = start(client, name, blksize)
        while True:
            assert packet[:4] == struct.pack("!HH", 3, expected & 0xFFFF), (packet[:4], expected)
            got += packet[4:]
            client.ack(expected)
            if len(packet) - 4 < size:
                return bytes(got)
            expected += 1
            packet = client.recv()
    finally:
        client.close()


def write(root: Path, name: str, size: int) -> bytes:
    data = os.urandom(size)
    (root / name).write_bytes(data)
    return data


SIZES = {  # in blocks and bytes: (blocks, extra) -> blocks * blksize + extra
    "0": (0, 0),
    "1": (0, 1),
    "blksize-1": (1, -1),
    "blksize": (1, 0),
    "3xblksize": (3, 0),
    "3xblksize+5": (3, 5),
}


@pytest.mark.parametrize("blksize", [None, 1468])
@pytest.mark.parametrize("size", list(SIZES))
async def test_files_arrive_byte_exact(tmp_path: Path, blksize: int | None, size: str) -> None:
    blocks, extra = SIZES[size]
    length = blocks * (blksize or 512) + extra
    data = write(tmp_path, "f.bin", length)
    async with serving(tmp_path) as served:
        got = await asyncio.to_thread(fetch, served.address, "f.bin", blksize)
        await served.settle()
        counters = served.server.counters
    assert got == data
    (event,) = served.events
    assert (event.outcome, event.bytes_sent, event.retransmits) == ("completed", length, 0)
    assert (event.blksize, event.windowsize) == (blksize or 512, 1)
    assert counters.native == 1 and counters.completed == 1


async def test_block_numbers_roll_over_past_65535(tmp_path: Path) -> None:
    data = write(tmp_path, "big.bin", 8 * 65536 + 8 * 20 + 3)  # 65557 blocks of 8 bytes
    async with serving(tmp_path) as served:
        got = await asyncio.to_thread(fetch, served.address, "big.bin", 8)
        await served.settle()
    assert got == data
    assert [(e.outcome, e.bytes_sent) for e in served.events] == [("completed", len(data))]


def fetch_dropping_one_ack(server: tuple[str, int], name: str, dropped: int) -> tuple[bytes, int]:
    """Lockstep without options; the first ACK of block `dropped` is not sent. Returns the file
    and how often that block arrived."""
    client = Client(server)
    try:
        got, seen, expected = bytearray(), 0, 1
        packet = start(client, name, None)
        while True:
            block = struct.unpack_from("!H", packet, 2)[0]
            if block == expected:
                got += packet[4:]
                expected += 1
            if block == dropped:
                seen += 1
                if seen == 1:
                    packet = client.recv()  # the retransmission, after the server's timeout
                    continue
            client.ack(block)
            if len(packet) - 4 < 512:
                return bytes(got), seen
            packet = client.recv()
    finally:
        client.close()


async def test_a_lost_ack_is_recovered_by_retransmission(tmp_path: Path) -> None:
    data = write(tmp_path, "f.bin", 512 * 6 + 9)
    async with serving(tmp_path, timeout=0.2) as served:
        got, seen = await asyncio.to_thread(fetch_dropping_one_ack, served.address, "f.bin", 3)
        await served.settle()
    assert (got, seen) == (data, 2)
    (event,) = served.events
    assert (event.outcome, event.retransmits) == ("completed", 1)
    assert served.server.counters.retransmits == 1


def listen_silently(server: tuple[str, int], name: str, junk: bool, stop: threading.Event) -> list[bytes]:
    """Take DATA 1, never ACK; optionally keep sending junk from the client's TID until `stop`."""
    client = Client(server)
    try:
        received = [start(client, name, None)]
        for _ in range(500):  # bounded: 500 x 20 ms
            if stop.is_set():
                break
            if junk:
                client.send(b"\0\x09junk")
            packet = client.quiet(0.02)
            if packet is not None:
                received.append(packet)
        return received
    finally:
        client.close()


@pytest.mark.parametrize("junk", [False, True], ids=["silent", "junk-stream"])
async def test_a_silent_client_times_out_after_max_retries(tmp_path: Path, junk: bool) -> None:
    write(tmp_path, "f.bin", 5000)
    async with serving(tmp_path, timeout=0.1, max_retries=2) as served:
        stop = threading.Event()
        listener = asyncio.create_task(
            asyncio.to_thread(listen_silently, served.address, "f.bin", junk, stop)
        )
        await served.settle(events=1)
        ended_while_listening = not listener.done()
        stop.set()
        received = await listener
    assert received == [received[0]] * 3  # DATA 1, then 2 retransmissions of it
    (event,) = served.events
    assert (event.outcome, event.message) == ("timed_out", "no answer after 2 retransmissions")
    assert (event.retransmits, event.bytes_sent) == (2, 0)
    # The junk (counted as dropped) did not keep the transfer alive past its deadline.
    assert ended_while_listening
    assert (served.server.counters.dropped > 0) is junk


def abort_at(server: tuple[str, int], name: str, block: int) -> None:
    client = Client(server)
    try:
        packet = start(client, name, None)
        while struct.unpack_from("!H", packet, 2)[0] < block:
            client.ack(struct.unpack_from("!H", packet, 2)[0])
            packet = client.recv()
        client.send(b"\0\x05\0\x00user abort\0")
    finally:
        client.close()


async def test_a_client_error_ends_the_transfer(tmp_path: Path) -> None:
    write(tmp_path, "f.bin", 512 * 10)
    async with serving(tmp_path) as served:
        await asyncio.to_thread(abort_at, served.address, "f.bin", 4)
        await served.settle()
    (event,) = served.events
    assert (event.outcome, event.error_code, event.message) == ("client_error", 0, "user abort")
    assert event.bytes_sent == 3 * 512


def fetch_with_a_stranger(server: tuple[str, int], name: str) -> tuple[bytes, bytes]:
    client, stranger = Client(server), Client(server)
    try:
        got, block = bytearray(), 1
        packet = start(client, name, None)
        stranger.tid = client.tid
        answer = b""
        while True:
            got += packet[4:]
            if block == 2:
                stranger.ack(2)  # a duplicate of the real ACK, from another port
                answer = stranger.recv()
            client.ack(block)
            if len(packet) - 4 < 512:
                return bytes(got), answer
            block += 1
            packet = client.recv()
    finally:
        client.close()
        stranger.close()


async def test_a_stranger_gets_error_5_and_the_transfer_goes_on(tmp_path: Path) -> None:
    data = write(tmp_path, "f.bin", 512 * 5 + 1)
    async with serving(tmp_path) as served:
        got, answer = await asyncio.to_thread(fetch_with_a_stranger, served.address, "f.bin")
        await served.settle()
        counters = served.server.counters
    assert got == data
    assert answer == b"\0\x05\0\x05unknown transfer ID\0"
    assert [e.outcome for e in served.events] == ["completed"]
    assert (counters.foreign_tid, counters.stale_acks) == (1, 0)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_aclose_stops_running_transfers_and_leaks_nothing(tmp_path: Path) -> None:
    need_native()
    write(tmp_path, "f.bin", 512 * 100)
    loop = asyncio.get_running_loop()
    fds, tasks = open_fds(), threads()
    server = TftpServer(FileSystemSource(tmp_path), "127.0.0.1", port=0, dataplane="native")
    await server.start()
    clients = []
    for _ in range(4):  # each takes DATA 1 and 2, then goes quiet: the server waits for an ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        clients.append(sock)
        await loop.sock_sendto(sock, b"\0\x01f.bin\0octet\0", server.local_address)
        data, tid = await asyncio.wait_for(loop.sock_recvfrom(sock, 600), REPLY_TIMEOUT)
        await loop.sock_sendto(sock, b"\0\x04\0\x01", tid)
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 600), REPLY_TIMEOUT)
        assert data[:4] == b"\0\x03\0\x02"
    assert server.active_transfers == 4 and server.counters.native == 4
    assert threads() >= tasks + 4
    await server.aclose()
    for sock in clients:
        sock.close()
    assert server.active_transfers == 0
    assert open_fds() == fds
    assert threads() == tasks
    counters = server.counters
    assert (counters.completed, counters.failed) == (0, 0)  # cancelled silently, like Python's


async def test_auto_falls_back_to_python_when_the_module_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = write(tmp_path, "f.bin", 3000)
    monkeypatch.setitem(sys.modules, NATIVE, None)  # import raises ImportError
    with pytest.raises(RuntimeError, match="not built"):
        TftpServer(FileSystemSource(tmp_path), "127.0.0.1", dataplane="native")
    with caplog.at_level(logging.INFO, logger="bootforge.tftp"):
        server = TftpServer(FileSystemSource(tmp_path), "127.0.0.1", port=0)
    assert server.dataplane == "python"
    assert any("native data plane not available" in r.getMessage() for r in caplog.records)
    async with server:
        got = await asyncio.to_thread(fetch, server.local_address, "f.bin")
    assert got == data
    assert (server.counters.native, server.counters.completed) == (0, 1)


class RefusingPlane:
    """The real data plane, except that it cannot make a thread (pthread_create failed)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def start(self, *args: Any) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_refused_hand_off_is_served_in_python(tmp_path: Path) -> None:
    data = write(tmp_path, "f.bin", 512 * 30 + 1)
    async with serving(tmp_path) as served:
        served.server._plane = RefusingPlane(served.server._plane)  # type: ignore[assignment]
        got = await asyncio.to_thread(fetch, served.address, "f.bin", 1468)
        await served.settle()
        counters = served.server.counters
    assert got == data
    assert [e.outcome for e in served.events] == ["completed"]
    assert (counters.native, counters.native_fallbacks) == (0, 1)


async def test_windows_netascii_and_virtual_files_stay_in_python(tmp_path: Path) -> None:
    write(tmp_path, "f.bin", 20000)
    async with serving(tmp_path) as served:
        client = Client(served.address)
        try:
            client.rrq("f.bin", windowsize="4")
            assert (await asyncio.to_thread(client.recv))[:2] == b"\0\x06"
            client.send(b"\0\x05\0\x00enough\0")
        finally:
            client.close()
        client = Client(served.address)
        try:
            client.sock.sendto(b"\0\x01f.bin\0netascii\0", served.address)
            assert (await asyncio.to_thread(client.recv))[:4] == b"\0\x03\0\x01"
            client.send(b"\0\x05\0\x00enough\0")
        finally:
            client.close()
        await served.settle()
        assert served.server.counters.native == 0
    assert [e.outcome for e in served.events] == ["client_error", "client_error"]


async def test_ipv6_loopback(tmp_path: Path) -> None:
    data = write(tmp_path, "f.bin", 512 * 7 + 3)
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"needs IPv6 on lo ({exc})")
    async with serving(tmp_path, "::1") as served:
        got = await asyncio.to_thread(fetch, served.address, "f.bin")
        await served.settle()
    assert got == data
    assert served.server.counters.native == 1
