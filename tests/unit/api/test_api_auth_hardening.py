"""Finding 8 of #11: bcrypt checks run off the event loop, good checks are cached briefly, and repeated
failures from one client address are refused for a while (429) by a bounded limiter."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import bcrypt
import httpx
import pytest
from support.service import LATEST, InProcess

from bootforge.api import auth
from bootforge.api.app import create_app
from bootforge.api.auth import FailureLimiter, Htpasswd
from bootforge.errors import NotAuthorized

GOOD = ("admin", "correct horse")


def _write(path: Path, password: bytes) -> None:
    digest = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"admin:{digest}\n")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt check auth makes, by password."""
    calls: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def checkpw(password: bytes, digest: bytes) -> bool:
        calls.append(password)
        return real(password, digest)

    monkeypatch.setattr(auth.bcrypt, "checkpw", checkpw)
    return calls


@pytest.fixture
async def secured(bf: InProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "htpasswd"
    _write(path, GOOD[1].encode())
    app = create_app(bf.services, Htpasswd(path))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
        yield c


async def test_wrong_passwords_do_not_stall_other_requests(
    secured: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While wrong-password checks are in progress, the public route and a known login still answer.

    Each wrong-password check is held inside bcrypt until the good requests have been answered; a check
    made on the event loop would hold the loop too, so the good requests could only finish afterwards.
    """
    assert (await secured.get("/v1/nodes", auth=GOOD)).status_code == 200  # now cached
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw
    entered, release = threading.Event(), threading.Event()

    def held_checkpw(password: bytes, digest: bytes) -> bool:
        entered.set()
        release.wait(3)  # bounded: on the loop (the bug) this stalls, then the test fails below
        return real(password, digest)

    monkeypatch.setattr(auth.bcrypt, "checkpw", held_checkpw)
    bad = [asyncio.create_task(secured.get("/v1/nodes", auth=("admin", f"guess{i}"))) for i in range(4)]
    try:
        assert await asyncio.to_thread(entered.wait, 10), "no wrong-password check started"
        public = await secured.get("/v1")
        known = await secured.get("/v1/nodes", auth=GOOD)
        finished_bad = sum(t.done() for t in bad)
        released_early = release.is_set()
    finally:
        release.set()
        answers = await asyncio.gather(*bad)
    assert public.status_code == 200 and known.status_code == 200
    assert not released_early
    assert finished_bad == 0, f"{finished_bad} wrong-password requests finished before the good ones"
    assert [r.status_code for r in answers] == [401] * 4


async def test_repeated_failures_from_one_address_get_429(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/v1/nodes", auth=GOOD)).status_code == 200  # cached before the attack
    for i in range(auth.MAX_FAILURES):
        assert (await secured.get("/v1/nodes", auth=("admin", f"guess{i}"))).status_code == 401
    r = await secured.get("/v1/nodes", auth=("admin", "one more"))
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= auth.FAILURE_WINDOW
    assert r.headers["X-OpenStack-Ironic-API-Maximum-Version"]
    # An operator whose login is cached keeps working from that address; the public route too.
    assert (await secured.get("/v1/nodes", auth=GOOD)).status_code == 200
    assert (await secured.get("/v1")).status_code == 200


async def test_cache_hit_skips_bcrypt(tmp_path: Path, counted: list[bytes]) -> None:
    path = tmp_path / "htpasswd"
    _write(path, b"pw")
    h = Htpasswd(path)
    for _ in range(3):
        assert await h.authenticate(_basic("admin", "pw"), "a") == "admin"
    assert counted == [b"pw"]
    assert all(b"pw" not in key for key in h._verified), "the cache holds keyed hashes only"


async def test_wrong_passwords_are_not_cached(tmp_path: Path, counted: list[bytes]) -> None:
    path = tmp_path / "htpasswd"
    _write(path, b"pw")
    h = Htpasswd(path)
    for _ in range(2):
        with pytest.raises(NotAuthorized):
            await h.authenticate(_basic("admin", "nope"), "a")
    assert counted == [b"nope", b"nope"]


async def test_cache_expires(tmp_path: Path, counted: list[bytes]) -> None:
    path = tmp_path / "htpasswd"
    _write(path, b"pw")
    clock = Clock()
    h = Htpasswd(path, cache_ttl=30, clock=clock)
    await h.authenticate(_basic("admin", "pw"), "a")
    clock.now += 29
    await h.authenticate(_basic("admin", "pw"), "a")
    assert len(counted) == 1
    clock.now += 2
    await h.authenticate(_basic("admin", "pw"), "a")
    assert len(counted) == 2


async def test_changed_htpasswd_file_invalidates_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    _write(path, b"old")
    h = Htpasswd(path)
    assert await h.authenticate(_basic("admin", "old"), "a") == "admin"
    _write(path, b"new")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a change within one tick
    with pytest.raises(NotAuthorized):
        await h.authenticate(_basic("admin", "old"), "a")
    assert await h.authenticate(_basic("admin", "new"), "a") == "admin"


async def test_cache_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    lines = []
    for i in range(5):
        lines.append(f"u{i}:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}")
    path.write_text("\n".join(lines) + "\n")
    h = Htpasswd(path, cache_size=3)
    for i in range(5):
        await h.authenticate(_basic(f"u{i}", "pw"), "a")
    assert len(h._verified) == 3


def test_limiter_is_per_address() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window=60, max_clients=100, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(60)
    assert limiter.retry_after("10.0.0.2") == 0
    clock.now += 59
    assert limiter.retry_after("10.0.0.1") == pytest.approx(1)
    clock.now += 1.5
    assert limiter.retry_after("10.0.0.1") == 0  # the window is over


def test_limiter_table_is_bounded() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window=60, max_clients=8, clock=clock)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.01
        assert len(limiter) <= 8
    # The newest addresses are the ones still tracked.
    for _ in range(2):
        limiter.failed("10.0.3.231")
    assert limiter.retry_after("10.0.3.231") > 0


async def test_limited_address_is_refused_without_a_bcrypt_check(
    tmp_path: Path, counted: list[bytes]
) -> None:
    path = tmp_path / "htpasswd"
    _write(path, b"pw")
    h = Htpasswd(path, failures=FailureLimiter(max_failures=2, window=60))
    for _ in range(2):
        with pytest.raises(NotAuthorized):
            await h.authenticate(_basic("admin", "nope"), "a")
    with pytest.raises(auth.TooManyFailures) as caught:
        await h.authenticate(_basic("admin", "pw"), "a")  # not cached yet: refused without a check
    assert caught.value.retry_after > 0
    assert len(counted) == 2
    assert await h.authenticate(_basic("admin", "pw"), "b") == "admin"  # another address


async def test_a_concurrent_burst_of_guesses_is_limited(secured: httpx.AsyncClient) -> None:
    """Guesses in flight count: a burst sent at once does not get past the limit before any fails."""
    burst = [secured.get("/v1/nodes", auth=("admin", f"guess{i}")) for i in range(3 * auth.MAX_FAILURES)]
    codes = [r.status_code for r in await asyncio.gather(*burst)]
    assert codes.count(401) == auth.MAX_FAILURES
    assert codes.count(429) == 2 * auth.MAX_FAILURES


async def test_successful_checks_do_not_count_as_failures(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    _write(path, b"pw")
    clock = Clock()
    h = Htpasswd(
        path, cache_ttl=0, failures=FailureLimiter(max_failures=2, window=60, clock=clock), clock=clock
    )
    for _ in range(5):
        assert await h.authenticate(_basic("admin", "pw"), "a") == "admin"
    with pytest.raises(NotAuthorized):
        await h.authenticate(_basic("admin", "nope"), "a")
    assert h.failures.retry_after("a") == 0
