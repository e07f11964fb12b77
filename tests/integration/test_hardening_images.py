"""#11 finding 5: image sources cannot publish host files or what loopback/internal services answer.

An import's bytes are served afterwards without credentials by HTTP boot (images/<uuid>.simg), so
`POST /v1/images` must not read /etc/passwd or bootforge's own database, and must not fetch URLs on
loopback (bootforge's own API, a local admin service) or link-local addresses (cloud metadata) unless
the operator allowed that network. These go through the in-process API with the default settings
(nothing of the host, no non-public network) or with the settings named per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.service import InProcess, in_process

MiB = 1 << 20


def fault(r: httpx.Response) -> str:
    return str(json.loads(r.json()["error_message"])["faultstring"])


@dataclass
class Web:
    """A loopback HTTP server whose answers the test sets; it counts every request it gets."""

    host: str
    port: int = 0
    gets: list[str] = field(default_factory=list)
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


@pytest.fixture
def start_web() -> Iterator[Any]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(host: str) -> Web:
        web = Web(host)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                web.gets.append(f"{self.headers.get('Host')} {self.path}")
                status, headers, body = web.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status, "A SECRET REASON" if status >= 400 else None)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer((host, 0), Handler)
        web.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return web

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
async def bf(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for p in in_process(tmp_path):
        yield p


async def images(bf: InProcess) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await bf.client.get("/v1/images")).json()["images"]
    return listed


def served_files(bf: InProcess) -> list[str]:
    found = bf.conductor.images.store.dir
    return sorted(p.name for p in found.iterdir() if p.name != ".partial") if found.is_dir() else []


async def test_host_files_are_not_imported_by_default(bf: InProcess, tmp_path: Path) -> None:
    database = bf.settings.state_dir / "bootforge.sqlite"
    assert database.stat().st_size % 512 == 0  # a well-formed "raw image": the old code served it
    (tmp_path / "disk.img").write_bytes(os.urandom(MiB))
    messages = []
    for source in (str(database), "/etc/passwd", str(tmp_path / "disk.img"), "/etc/no-such-file"):
        r = await bf.client.post("/v1/images", json={"name": "x", "source": source})
        assert r.status_code == 400, r.text
        text = fault(r)
        assert "images.import_dirs" in text and "bootforge image add" in text, text
        messages.append(text.replace(source, "PATH"))
    # An existing and a missing file outside get the same answer: no probing of the host's files.
    assert len(set(messages)) == 1, messages
    assert await images(bf) == [] and served_files(bf) == []


async def test_import_dirs_confine_paths_symlinks_and_dotdot(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async for bf in in_process(tmp_path, images={"import_dirs": [str(inbox)]}):
        database = bf.settings.state_dir / "bootforge.sqlite"
        (inbox / "db.img").symlink_to(database)
        (inbox / "etc").symlink_to("/etc")
        (tmp_path / "outside.img").write_bytes(os.urandom(MiB))
        os.mkfifo(inbox / "fifo.img")
        refused = [
            str(inbox / "db.img"),
            str(inbox / "etc" / "passwd"),
            f"{inbox}/../state/bootforge.sqlite",
            f"{inbox}/../outside.img",
            str(tmp_path / "inbox-sibling" / "x.img"),  # a prefix of the directory's name is not inside
        ]
        for source in refused:
            r = await bf.client.post("/v1/images", json={"name": "x", "source": source})
            assert r.status_code == 400 and str(inbox) in fault(r) and "import_dirs" in fault(r), r.text
        r = await bf.client.post("/v1/images", json={"name": "fifo", "source": str(inbox / "fifo.img")})
        assert r.status_code == 400 and "not a regular file" in fault(r), r.text
        assert await images(bf) == [] and served_files(bf) == []

        data = os.urandom(MiB)
        (inbox / "good.img").write_bytes(data)
        r = await bf.client.post("/v1/images", json={"name": "good", "source": str(inbox / "good.img")})
        assert r.status_code == 201, r.text


async def test_url_on_loopback_is_refused_without_a_request(bf: InProcess, start_web: Any) -> None:
    web = start_web("127.0.0.1")
    web.routes["/disk.img"] = (200, {}, os.urandom(MiB))
    for url in (web.url("/disk.img"), f"http://localhost:{web.port}/disk.img", "http://[::1]:9/disk.img"):
        r = await bf.client.post("/v1/images", json={"name": "x", "source": url})
        assert r.status_code == 400 and "loopback address" in fault(r), r.text
        assert "images.allow_url_networks" in fault(r)
    assert web.gets == []
    assert await images(bf) == [] and served_files(bf) == []


async def test_redirect_from_an_allowed_host_to_loopback_is_refused(tmp_path: Path, start_web: Any) -> None:
    inner = start_web("127.0.0.1")
    inner.routes["/disk.img"] = (200, {}, os.urandom(MiB))
    mirror = start_web("127.0.0.2")
    mirror.routes["/disk.img"] = (302, {"Location": inner.url("/disk.img")}, b"")
    async for bf in in_process(tmp_path, images={"allow_url_networks": ["127.0.0.2/32"]}):
        r = await bf.client.post("/v1/images", json={"name": "x", "source": mirror.url("/disk.img")})
        assert r.status_code == 400 and "127.0.0.1 is a loopback address" in fault(r), r.text
        assert len(mirror.gets) == 1 and inner.gets == []
        assert await images(bf) == [] and served_files(bf) == []


async def test_an_allowed_network_is_fetched(tmp_path: Path, start_web: Any) -> None:
    data = os.urandom(MiB)
    mirror = start_web("127.0.0.2")
    mirror.routes["/disk.img"] = (200, {}, data)
    mirror.routes["/moved.img"] = (301, {"Location": "/disk.img"}, b"")
    async for bf in in_process(tmp_path, images={"allow_url_networks": ["127.0.0.2/32"]}):
        r = await bf.client.post("/v1/images", json={"name": "m", "source": mirror.url("/moved.img")})
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(data)
        # The connection went to the checked address, with the URL's host name in the Host header.
        assert mirror.gets == [f"127.0.0.2:{mirror.port} /moved.img", f"127.0.0.2:{mirror.port} /disk.img"]


async def test_a_failed_fetch_tells_neither_body_nor_size(tmp_path: Path, start_web: Any) -> None:
    mirror = start_web("127.0.0.2")
    mirror.routes["/api"] = (200, {"Content-Type": "application/json"}, b'{"password": "hunter2"}' * 43)
    mirror.routes["/secret"] = (403, {}, b"hunter2 is the password")
    async for bf in in_process(tmp_path, images={"allow_url_networks": ["127.0.0.2/32"]}):
        for path, status_text in (("/api", "not a whole number"), ("/secret", "HTTP 403 Forbidden")):
            r = await bf.client.post("/v1/images", json={"name": "x", "source": mirror.url(path)})
            text = fault(r)
            assert r.status_code == 400 and status_text in text, text
            assert "hunter2" not in text and "SECRET" not in text and "989" not in text, text
        assert await images(bf) == [] and served_files(bf) == []


async def test_deploy_image_source_url_goes_through_the_same_check(bf: InProcess, start_web: Any) -> None:
    web = start_web("127.0.0.1")
    web.routes["/disk.img"] = (200, {}, os.urandom(MiB))
    with pytest.raises(Exception) as info:
        await bf.conductor.images.resolve(web.url("/disk.img"), {})
    assert getattr(info.value, "field", None) == "instance_info.image_source"
    assert "loopback address" in str(info.value)
    assert web.gets == [] and await images(bf) == []


async def test_upload_is_imported_and_bounded(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB) + bytes(MiB)
    limits = {"max_image_upload_bytes": 3 * MiB}
    async for bf in in_process(tmp_path, api_limits=limits):
        r = await bf.client.put("/v1/images/up/file?filename=disk.img", content=data)
        assert r.status_code == 201, r.text
        assert (r.json()["source"], r.json()["size"], r.json()["status"]) == (
            "upload:disk.img",
            len(data),
            "ready",
        )
        r = await bf.client.put("/v1/images/up/file", content=data)
        assert r.status_code == 409
        # Over the limit: refused from Content-Length, and from a chunked body as it arrives.
        r = await bf.client.put("/v1/images/big/file", content=os.urandom(4 * MiB))
        assert r.status_code == 413, r.text

        def chunked() -> Iterator[bytes]:
            for _ in range(4):
                yield os.urandom(MiB)

        r = await bf.client.put("/v1/images/big/file", content=_aiter(chunked()))
        assert r.status_code == 413, r.text
        r = await bf.client.put("/v1/images/notes/file", content=b"root:x:0:0::/root:/bin/sh\n")
        assert r.status_code == 400 and "512-byte sectors" in fault(r), r.text
        assert [i["name"] for i in await images(bf)] == ["up"]
        assert list((bf.conductor.images.store.partial).iterdir()) == []


async def test_a_stalled_upload_is_dropped(tmp_path: Path) -> None:
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield bytes(4096)
        await never.wait()

    async for bf in in_process(tmp_path, images={"upload_idle_timeout": 0.3}):
        try:
            r = await bf.client.put("/v1/images/slow/file", content=stalls())
        finally:
            never.set()
        assert r.status_code == 408 and "images.upload_idle_timeout" in fault(r), r.text
        assert await images(bf) == [] and list(bf.conductor.images.store.partial.iterdir()) == []


async def _aiter(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in it:
        yield chunk
