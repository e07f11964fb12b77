"""Issue #11 finding 7 on the TFTP server (127.0.0.1 and other 127/8 addresses only).

netascii was converted whole in memory: 50 unacknowledged RRQs for a 3 MB file added 146 MiB of
RSS. Now it is converted as the transfer goes, clients still get byte-identical files, and one
client address holds a bounded number of transfers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import shutil
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bootforge.netboot.tftp import Error as ErrorPacket
from bootforge.netboot.tftp import FileSystemSource, Opcode, Request, encode_packet, parse_packet
from bootforge.servers.tftp import TftpEvent, TftpServer

REPLY_TIMEOUT = 10.0


def _have(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            pytest.skip(f"needs {address} on the loopback interface ({exc})")


def tricky_text(size: int, seed: int) -> bytes:
    """Line endings of every kind, NULs, CRs right at the 16 KiB chunk edges, high bytes."""
    rng = random.Random(seed)
    pieces = [b"set timeout=5\n", b"\r\n", b"\r", b"\n", b"\0", b"\r\0", b"x" * 37, b"\xff\x80", b"\t"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(pieces)
    del out[size:]
    for edge in range(16384 - 1, size, 16384):
        out[edge] = 13  # a CR as the last byte of a chunk
        if edge + 1 < size:
            out[edge + 1] = 10  # ... and the LF it pairs with in the next one
    out[-1] = 13  # and a file that ends in a bare CR
    return bytes(out)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    www = tmp_path / "root"
    www.mkdir()
    lines = b"".join(f"menuentry {i} {{ linux /vmlinuz-{i} }}\n".encode() for i in range(100_000))
    (www / "big.cfg").write_bytes(lines[: 3 * 1024 * 1024])
    (www / "tricky.cfg").write_bytes(tricky_text(200_000, 7))
    (www / "small.cfg").write_bytes(b"a\r\nb\rc\n\0")
    return www


@pytest.fixture
async def server(root: Path) -> AsyncIterator[tuple[TftpServer, list[TftpEvent]]]:
    events: list[TftpEvent] = []
    async with TftpServer(FileSystemSource(root), "127.0.0.1", port=0, on_event=events.append) as srv:
        yield srv, events


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _client(sockets: list[socket.socket], address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((address, 0))
    sockets.append(sock)
    return sock


def netascii_rrq(name: str, **options: str) -> bytes:
    return encode_packet(Request(Opcode.RRQ, name, "netascii", dict(options)))


async def test_unacknowledged_netascii_requests_do_not_hold_the_file(
    server: tuple[TftpServer, list[TftpEvent]], sockets: list[socket.socket]
) -> None:
    """50 clients ask for a 3 MB file in netascii and never ACK: the server must not hold 50
    converted copies (the old code kept about 3 MB, plus a copy while converting, per request)."""
    srv, _ = server
    sources = [f"127.0.0.{i}" for i in range(2, 52)]
    _have(sources[-1])
    loop = asyncio.get_running_loop()
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        clients = [_client(sockets, source) for source in sources]
        for sock in clients:
            await loop.sock_sendto(sock, netascii_rrq("big.cfg"), srv.local_address)
        for sock in clients:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 600), REPLY_TIMEOUT)
            assert data[:4] == b"\0\x03\0\x01"  # DATA 1, which nobody acknowledges
        assert srv.active_transfers == 50
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = held - before
    print(f"50 netascii transfers of a 3 MiB file hold {grown / 2**20:.2f} MiB")
    assert grown < 16 * 1024 * 1024, f"{grown / 2**20:.1f} MiB held by 50 transfers"


async def test_one_client_address_holds_a_bounded_number_of_transfers(
    root: Path, sockets: list[socket.socket]
) -> None:
    _have("127.0.0.2")
    loop = asyncio.get_running_loop()
    async with TftpServer(FileSystemSource(root), "127.0.0.1", port=0, max_transfers_per_client=4) as srv:
        for _ in range(10):  # ten source ports of one address, none of them ACKs
            sock = _client(sockets, "127.0.0.1")
            await loop.sock_sendto(sock, netascii_rrq("big.cfg"), srv.local_address)
        other = _client(sockets, "127.0.0.2")
        await loop.sock_sendto(other, netascii_rrq("small.cfg"), srv.local_address)
        data, tid = await asyncio.wait_for(loop.sock_recvfrom(other, 600), REPLY_TIMEOUT)
        assert data == b"\0\x03\0\x01a\r\0\r\nb\r\0c\r\n\0"
        await loop.sock_sendto(other, b"\0\x04\0\x01", tid)
        await _until(lambda: srv.counters.completed == 1)
        assert srv.active_transfers == 4
        assert srv.counters.client_limited == 6
        # The limit is per address and transfers, not for ever: once one ends, another may start.
        first = sockets[0]
        data, tid = await asyncio.wait_for(loop.sock_recvfrom(first, 600), REPLY_TIMEOUT)
        await loop.sock_sendto(first, encode_packet(ErrorPacket(0, "enough")), tid)
        await _until(lambda: srv.active_transfers == 3)
        late = _client(sockets, "127.0.0.1")
        await loop.sock_sendto(late, netascii_rrq("small.cfg"), srv.local_address)
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(late, 600), REPLY_TIMEOUT)
        assert parse_packet(data) is not None and data[:4] == b"\0\x03\0\x01"


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 10 s")


async def _run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), 120)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"needs {binary} (Debian package {package})")
    return path


@pytest.mark.parametrize("name", ["tricky.cfg", "big.cfg", "small.cfg"])
async def test_tftp_hpa_netascii_gets_identical_bytes(
    server: tuple[TftpServer, list[TftpEvent]], root: Path, tmp_path: Path, name: str
) -> None:
    tftp = _need("tftp", "tftp-hpa")
    srv, _ = server
    out = tmp_path / "out"
    host, port = srv.local_address
    rc, text = await _run([tftp, "-m", "netascii", host, str(port), "-c", "get", name, str(out)])
    assert rc == 0, text
    assert out.read_bytes() == (root / name).read_bytes()


@pytest.mark.parametrize("blksize", [None, "1468", "8"])
@pytest.mark.parametrize("name", ["tricky.cfg", "small.cfg"])
async def test_atftp_netascii_gets_identical_bytes(
    server: tuple[TftpServer, list[TftpEvent]], root: Path, tmp_path: Path, name: str, blksize: str | None
) -> None:
    atftp = _need("atftp", "atftp")
    srv, _ = server
    out = tmp_path / "out"
    host, port = srv.local_address
    script = "mode netascii\n" + (f"option blksize {blksize}\n" if blksize else "")
    script += f"get {name} {out}\nquit\n"
    rc, text = await _run([atftp, host, str(port)], script.encode())
    assert rc == 0, text
    assert out.exists(), text
    assert out.read_bytes() == (root / name).read_bytes(), text


def test_tricky_text_has_what_it_promises() -> None:
    data = tricky_text(200_000, 7)
    assert data[16383:16385] == b"\r\n" and data.endswith(b"\r")
    assert len(data) == 200_000 and b"\r\0" in data and b"\xff" in data
