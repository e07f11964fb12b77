"""HTTP boot server on 127.0.0.1 against real clients (curl, httpx) and hand-written requests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bootforge.netboot.boot.scripts import RamdiskBoot, RefuseBoot
from bootforge.servers.http_boot import (
    HttpBootConfig,
    HttpBootServer,
    HttpFetchEvent,
    StaticBootScripts,
    Unsatisfiable,
    parse_range,
)

GiB = 1 << 30
SPARSE_MARK_AT = 4 * GiB + 123  # past 32-bit offsets
MARK = b"bootforge-sparse-mark"
DEBIAN_IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
PLAN = RamdiskBoot(
    "http://127.0.0.1:8080/vmlinuz",
    "http://127.0.0.1:8080/initrd.img",
    (("ipa-api-url", "http://127.0.0.1:6385"),),
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    (www / "deploy").mkdir(parents=True)
    (www / "deploy" / "vmlinuz").write_bytes(os.urandom(300_000))
    (www / "shimx64.efi").write_bytes(b"MZ" + os.urandom(1000))
    (www / "empty.bin").write_bytes(b"")
    with open(www / "sparse.img", "wb") as f:
        f.truncate(5 * GiB)
        f.seek(SPARSE_MARK_AT)
        f.write(MARK)
    (tmp_path / "secret").write_text("outside the root\n")
    os.symlink(tmp_path / "secret", www / "escape")
    os.symlink("deploy/vmlinuz", www / "inside-link")
    return www


@pytest.fixture
async def server(root: Path) -> AsyncIterator[tuple[HttpBootServer, list[HttpFetchEvent]]]:
    events: list[HttpFetchEvent] = []
    config = HttpBootConfig(max_request_bytes=4096, idle_timeout=5.0)
    srv = HttpBootServer(root, port=0, scripts=StaticBootScripts(PLAN), on_event=events.append, config=config)
    async with srv:
        yield srv, events


def _read_if_present(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _url(srv: HttpBootServer, path: str) -> str:
    host, port = srv.local_address
    return f"http://{host}:{port}{path}"


async def _raw(srv: HttpBootServer, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*srv.local_address)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_curl_fetches_file_intact(
    server: tuple[HttpBootServer, list[HttpFetchEvent]], root: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    srv, events = server
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--fail", _url(srv, "/deploy/vmlinuz"), stdout=asyncio.subprocess.PIPE
    )
    body, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert hashlib.sha256(body).digest() == hashlib.sha256((root / "deploy/vmlinuz").read_bytes()).digest()
    assert events[-1].status == 200 and events[-1].bytes_sent == 300_000
    assert events[-1].path == "/deploy/vmlinuz" and events[-1].client[0] == "127.0.0.1"


async def test_curl_head_and_range(server: tuple[HttpBootServer, list[HttpFetchEvent]], root: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    srv, _ = server
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-r", "100-199", _url(srv, "/deploy/vmlinuz"), stdout=asyncio.subprocess.PIPE
    )
    body, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert body == (root / "deploy/vmlinuz").read_bytes()[100:200]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-I", _url(srv, "/shimx64.efi"), stdout=asyncio.subprocess.PIPE
    )
    head, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert b"content-type: application/efi" in head.lower()
    assert b"content-length: 1002" in head.lower()


async def test_httpx_get_head_ranges_keepalive(
    server: tuple[HttpBootServer, list[HttpFetchEvent]], root: Path
) -> None:
    srv, _ = server
    data = (root / "deploy/vmlinuz").read_bytes()
    async with httpx.AsyncClient() as client:
        full = await client.get(_url(srv, "/deploy/vmlinuz"))
        assert full.status_code == 200 and full.content == data
        assert full.headers["accept-ranges"] == "bytes"
        head = await client.head(_url(srv, "/deploy/vmlinuz"))
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        assert head.headers["etag"] == full.headers["etag"]
        cases = {"bytes=10-19": data[10:20], "bytes=299990-": data[299990:], "bytes=-5": data[-5:]}
        for spec, expected in cases.items():
            part = await client.get(_url(srv, "/deploy/vmlinuz"), headers={"Range": spec})
            assert part.status_code == 206 and part.content == expected, spec
        clipped = await client.get(_url(srv, "/deploy/vmlinuz"), headers={"Range": "bytes=299999-999999"})
        assert clipped.headers["content-range"] == "bytes 299999-299999/300000"
        several = await client.get(_url(srv, "/deploy/vmlinuz"), headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and several.content == data  # multi-range: ignored
        stale = await client.get(
            _url(srv, "/deploy/vmlinuz"), headers={"Range": "bytes=0-1", "If-Range": '"other"'}
        )
        assert stale.status_code == 200
        fresh = await client.get(
            _url(srv, "/deploy/vmlinuz"), headers={"Range": "bytes=0-1", "If-Range": full.headers["etag"]}
        )
        assert fresh.status_code == 206 and fresh.content == data[:2]
    assert srv.counters.connections == 1  # one kept-alive connection carried every request
    assert srv.counters.requests == 9


async def test_unsatisfiable_ranges(server: tuple[HttpBootServer, list[HttpFetchEvent]]) -> None:
    srv, _ = server
    async with httpx.AsyncClient() as client:
        for path, spec, size in [
            ("/deploy/vmlinuz", "bytes=300000-", 300000),
            ("/deploy/vmlinuz", "bytes=-0", 300000),
            ("/empty.bin", "bytes=0-", 0),
        ]:
            reply = await client.get(_url(srv, path), headers={"Range": spec})
            assert reply.status_code == 416, spec
            assert reply.headers["content-range"] == f"bytes */{size}"
        ok = await client.get(_url(srv, "/deploy/vmlinuz"))  # the connection survived the 416s
        assert ok.status_code == 200
    assert srv.counters.connections == 1


async def test_multi_gigabyte_offsets_on_sparse_file(
    server: tuple[HttpBootServer, list[HttpFetchEvent]],
) -> None:
    srv, _ = server
    async with httpx.AsyncClient() as client:
        spec = f"bytes={SPARSE_MARK_AT - 2}-{SPARSE_MARK_AT + len(MARK) + 1}"
        reply = await client.get(_url(srv, "/sparse.img"), headers={"Range": spec})
        assert reply.status_code == 206
        assert reply.content == b"\0\0" + MARK + b"\0\0"
        end = SPARSE_MARK_AT + len(MARK) + 1
        assert reply.headers["content-range"] == f"bytes {SPARSE_MARK_AT - 2}-{end}/{5 * GiB}"
        head = await client.head(_url(srv, "/sparse.img"))
        assert head.headers["content-length"] == str(5 * GiB)
        tail = await client.get(_url(srv, "/sparse.img"), headers={"Range": "bytes=-3"})
        assert tail.content == b"\0\0\0" and tail.headers["content-range"].startswith(f"bytes {5 * GiB - 3}-")


@pytest.mark.parametrize(
    "target",
    [
        b"/../secret",
        b"/deploy/../../secret",
        b"/%2e%2e/secret",
        b"/deploy%2f..%2f..%2fsecret",
        b"//etc/passwd",
        b"/escape",
        b"/deploy",
        b"/",
        b"/nul%00byte",
        b"/missing.efi",
    ],
)
async def test_paths_outside_or_missing_are_404(
    server: tuple[HttpBootServer, list[HttpFetchEvent]], target: bytes
) -> None:
    srv, _ = server
    reply = await _raw(srv, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 "), reply[:80]
    assert b"outside the root" not in reply
    assert srv.counters.internal_errors == 0


async def test_symlink_inside_root_is_served(server: tuple[HttpBootServer, list[HttpFetchEvent]]) -> None:
    srv, _ = server
    async with httpx.AsyncClient() as client:
        assert (await client.get(_url(srv, "/inside-link"))).status_code == 200


async def test_ipxe_script_route_and_events(server: tuple[HttpBootServer, list[HttpFetchEvent]]) -> None:
    srv, events = server
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            _url(srv, "/boot/ipxe"), params={"mac": "52:54:00:12:34:56", "arch": "x86_64", "platform": "efi"}
        )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text.startswith("#!ipxe\n")
    assert "ipa-api-url=http://127.0.0.1:6385" in reply.text
    event = events[-1]
    assert event.mac == "52:54:00:12:34:56" and event.query["platform"] == "efi"
    assert event.status == 200 and event.bytes_sent == len(reply.content)


async def test_refusal_counts_attempts_from_the_query(root: Path) -> None:
    plan = RefuseBoot("not enrolled", "http://127.0.0.1:8080/boot/ipxe?mac=aa", retry_delay=3, max_attempts=2)
    async with (
        HttpBootServer(root, port=0, scripts=StaticBootScripts(plan)) as srv,
        httpx.AsyncClient() as client,
    ):
        first = await client.get(_url(srv, "/boot/ipxe?mac=aa"))
        last = await client.get(_url(srv, "/boot/ipxe?mac=aa&attempt=2"))
        grub = await client.get(_url(srv, "/grub/grub.cfg"))
    assert "attempt=2" in first.text and "chain" in first.text
    assert "chain" not in last.text and last.text.rstrip().endswith("reboot")
    assert "configfile" in grub.text


async def test_published_loader_map(root: Path) -> None:
    expected = _read_if_present(DEBIAN_IPXE_EFI)
    if expected is None:
        pytest.skip("needs Debian's ipxe package (apt-get install -y ipxe)")
    files = {"ipxe.efi": str(DEBIAN_IPXE_EFI)}
    async with HttpBootServer(root, port=0, files=files) as srv, httpx.AsyncClient() as client:
        reply = await client.get(_url(srv, "/ipxe.efi"))
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/efi"
    assert reply.content == expected


async def test_bad_requests_are_answered_and_counted(
    server: tuple[HttpBootServer, list[HttpFetchEvent]],
) -> None:
    srv, _ = server
    assert (await _raw(srv, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    assert (await _raw(srv, huge)).startswith(b"HTTP/1.1 431 ")
    post = b"POST /deploy/vmlinuz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    assert (await _raw(srv, post)).startswith(b"HTTP/1.1 405 ")
    body = b"GET /deploy/vmlinuz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert (await _raw(srv, body)).startswith(b"HTTP/1.1 413 ")
    assert srv.counters.bad_requests == 4
    async with httpx.AsyncClient() as client:
        assert (await client.get(_url(srv, "/shimx64.efi"))).status_code == 200


async def test_pipelined_requests_on_one_connection(
    server: tuple[HttpBootServer, list[HttpFetchEvent]],
) -> None:
    srv, _ = server
    one = b"GET /shimx64.efi HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"HEAD /shimx64.efi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await _raw(srv, one + one + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 3


async def test_idle_connection_is_closed_after_timeout(root: Path) -> None:
    config = HttpBootConfig(idle_timeout=0.2)
    async with HttpBootServer(root, port=0, config=config) as srv:
        reader, writer = await asyncio.open_connection(*srv.local_address)
        writer.write(b"GET /shimx64.efi HTTP/1.1\r\n")  # never finished
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert srv.counters.timeouts == 1


def test_parse_range_rules() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("bytes=3-100", 10) == (3, 9)
    for ignored in ("items=0-1", "bytes=5-2", "bytes=-", "bytes=a-b", "bytes=0-1,3-4", "bytes=\u0661-2"):
        assert parse_range(ignored, 10) is None, ignored
    for unsatisfiable in ("bytes=10-", "bytes=-0", "bytes=11-20"):
        with pytest.raises(Unsatisfiable):
            parse_range(unsatisfiable, 10)
