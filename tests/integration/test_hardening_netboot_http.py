"""Issue #11 findings 6 and 13 on the HTTP boot server (127.0.0.1 and other 127/8 addresses only).

6: a slow client trickling its request head one byte at a time held a connection for ever (the
idle timer restarted on every byte), and 1,024 such connections starved every boot client.
13: a Range value of 4,300 digits and a path part over 255 bytes closed the connection without a
reply (and logged a traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootforge.servers.http_boot import HttpBootConfig, HttpBootServer, Unsatisfiable, parse_range

BODY = os.urandom(5000)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "vmlinuz").write_bytes(BODY)
    return www


def _url(srv: HttpBootServer, path: str) -> str:
    host, port = srv.local_address
    return f"http://{host}:{port}{path}"


def _have(address: str) -> None:
    """Linux answers on all of 127/8; skip where the loopback is only 127.0.0.1."""
    with socket.socket() as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            pytest.skip(f"needs {address} on the loopback interface ({exc})")


class Slowloris:
    """Connections from one source address that send a request head one byte at a time."""

    def __init__(self, srv: HttpBootServer, source: str) -> None:
        self.srv, self.source = srv, source
        self.socks: list[socket.socket] = []

    async def open(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((self.source, 0))
            self.socks.append(sock)
            await asyncio.wait_for(loop.sock_connect(sock, self.srv.local_address), 5)

    def trickle(self) -> None:
        """One more byte of a head that never ends; sockets the server closed are skipped."""
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.send(b"G")

    def open_count(self) -> int:
        """Sockets the server has not closed (a closed one reads EOF or a reset)."""
        alive = 0
        for sock in self.socks:
            try:
                alive += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.fixture
async def attackers() -> AsyncIterator[list[Slowloris]]:
    made: list[Slowloris] = []
    yield made
    for attacker in made:
        attacker.close()


async def _wait_for(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_slowloris_from_one_address_does_not_starve_boot_clients(
    root: Path, attackers: list[Slowloris]
) -> None:
    _have("127.0.0.2")
    config = HttpBootConfig(max_connections=64)
    async with HttpBootServer(root, port=0, config=config) as srv:
        attacker = Slowloris(srv, "127.0.0.2")
        attackers.append(attacker)
        await attacker.open(80)
        attacker.trickle()
        counters = srv.counters
        await _wait_for(
            lambda: counters.connections + counters.rejected_connections + counters.rejected_per_client >= 80
        )
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(3):
                attacker.trickle()
                reply = await client.get(_url(srv, "/vmlinuz"))
                assert reply.status_code == 200 and reply.content == BODY
        limit = srv.config.max_connections_per_client
        assert srv.counters.rejected_per_client >= 80 - limit
        assert attacker.open_count() <= limit


async def test_a_request_head_has_one_deadline_however_it_trickles(
    root: Path, attackers: list[Slowloris]
) -> None:
    config = HttpBootConfig(idle_timeout=30.0, head_timeout=0.5)
    async with HttpBootServer(root, port=0, config=config) as srv:
        attacker = Slowloris(srv, "127.0.0.1")
        attackers.append(attacker)
        await attacker.open(3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while attacker.open_count() and loop.time() - started < 10:
            attacker.trickle()  # a byte every 50 ms: the old idle timer never fired
            await asyncio.sleep(0.05)
        assert attacker.open_count() == 0
        assert loop.time() - started < 3
        assert srv.counters.head_timeouts == 3
        # A keep-alive connection may idle between requests for idle_timeout, not head_timeout.
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(_url(srv, "/vmlinuz"))).status_code == 200
            await asyncio.sleep(0.8)
            assert (await client.get(_url(srv, "/vmlinuz"))).status_code == 200
        assert srv.counters.connections == 4


async def test_slowloris_from_many_addresses_gives_way_to_a_real_client(
    root: Path, attackers: list[Slowloris]
) -> None:
    """Every slot taken by heads that never finish: the oldest one is dropped for a newcomer."""
    sources = [f"127.0.0.{i}" for i in range(2, 10)]
    _have(sources[-1])
    config = HttpBootConfig(max_connections=32, max_connections_per_client=4, head_timeout=30.0)
    async with HttpBootServer(root, port=0, config=config) as srv:
        for source in sources:
            attacker = Slowloris(srv, source)
            attackers.append(attacker)
            await attacker.open(4)
            attacker.trickle()
        await _wait_for(lambda: srv.counters.connections == 32)
        async with httpx.AsyncClient(timeout=5) as client:
            reply = await client.get(_url(srv, "/vmlinuz"))
            assert reply.status_code == 200 and reply.content == BODY
        assert srv.counters.evicted == 1
        assert srv.counters.rejected_connections == 0


async def test_huge_range_numbers_are_answered_without_a_traceback(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    digits = "9" * 4300
    cases = {
        f"bytes={digits}-": 416,  # starts past any end
        f"bytes=0-{digits}": 206,  # ends past the end: clamped
        f"bytes=-{digits}": 206,  # a suffix longer than the file: all of it
        f"bytes={'0' * 4300}1-2": 206,  # leading zeros are still small numbers
        f"bytes={digits}-1": 200,  # last before first: not a valid range, ignored
    }
    async with HttpBootServer(root, port=0) as srv, httpx.AsyncClient(timeout=5) as client:
        for spec, status in cases.items():
            with caplog.at_level(logging.WARNING, "bootforge.http_boot"):
                reply = await client.get(_url(srv, "/vmlinuz"), headers={"Range": spec})
            assert reply.status_code == status, spec[:20]
        assert srv.counters.internal_errors == 0
    assert not [r for r in caplog.records if r.exc_info]


async def test_overlong_paths_are_414_not_a_dropped_connection(root: Path) -> None:
    async with HttpBootServer(root, port=0) as srv, httpx.AsyncClient(timeout=5) as client:
        for path in ("/" + "a" * 256, "/x/" + "b" * 300 + "/vmlinuz", "/" + "%41" * 300):
            reply = await client.get(_url(srv, path))
            assert reply.status_code == 414, path[:20]
        assert (await client.get(_url(srv, "/" + "a" * 255))).status_code == 404
        assert (await client.get(_url(srv, "/vmlinuz"))).status_code == 200
        assert srv.counters.internal_errors == 0
        assert srv.counters.too_long == 3


_NUMBER = st.one_of(
    st.integers(0, 2**70).map(str),
    st.text("0123456789", min_size=0, max_size=40),
    # Python refuses int() of more than 4,300 digits (CVE-2020-10735): the parser must not ask.
    st.builds(lambda n, digit: digit * n, st.integers(4000, 6000), st.sampled_from("019")),
)


@settings(max_examples=400, deadline=None)
@given(
    first=_NUMBER,
    last=_NUMBER,
    size=st.integers(0, 2**63),
    noise=st.sampled_from(["", " ", "bytes=", "items=", ",0-1", "\u0661", "-"]),
)
def test_parse_range_is_total(first: str, last: str, size: int, noise: str) -> None:
    """Whatever the digits, parse_range answers None, a span inside the file, or Unsatisfiable."""
    for value in (f"bytes={first}-{last}", f"{noise}{first}-{last}", f"bytes={first}-{last}{noise}"):
        try:
            span = parse_range(value, size)
        except Unsatisfiable:
            continue
        if span is not None:
            start, end = span
            assert 0 <= start <= end < size
            if first and last and len(first) < 30 and len(last) < 30 and noise == "":
                assert start == int(first) and end == min(int(last), size - 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_range_takes_any_latin1_header(raw: bytes) -> None:
    try:
        span = parse_range(raw.decode("latin-1"), 1000)
    except Unsatisfiable:
        return
    assert span is None or 0 <= span[0] <= span[1] < 1000
