"""/v1/images and `bootforge image ...` against an in-process bootforge (API app + conductor + SQLite).

bootforge here imports host files from the test's directory (images.import_dirs) and fetches URLs from
loopback (images.allow_url_networks): the refusals of everything else are test_hardening_images.py's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from support.service import in_process
from typer.testing import CliRunner

from bootforge.cli.images import image_app
from bootforge.images.catalogue import ImageCatalogue

MiB = 1 << 20


@dataclass
class Bf:
    client: httpx.AsyncClient
    app: Any
    images: ImageCatalogue


@pytest.fixture
async def bf(tmp_path: Path) -> AsyncIterator[Bf]:
    images = {"import_dirs": [str(tmp_path)], "allow_url_networks": ["127.0.0.0/8"]}
    async for p in in_process(tmp_path, images=images):
        yield Bf(p.client, p.app, p.conductor.images)


def qemu_img_create(fmt: str, path: Path, size: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)


def fault(r: httpx.Response) -> str:
    return str(json.loads(r.json()["error_message"])["faultstring"])


async def test_image_lifecycle(bf: Bf, tmp_path: Path) -> None:
    data = os.urandom(MiB) + bytes(3 * MiB)
    (tmp_path / "disk.img").write_bytes(data)
    r = await bf.client.post("/v1/images", json={"name": "base", "source": str(tmp_path / "disk.img")})
    assert r.status_code == 201, r.text
    image = r.json()
    assert r.headers["location"].endswith(f"/v1/images/{image['uuid']}")
    assert {
        k: image[k] for k in ("name", "disk_format", "size", "virtual_size", "stream_format", "status")
    } == {
        "name": "base",
        "disk_format": "raw",
        "size": len(data),
        "virtual_size": len(data),
        "stream_format": "simg",
        "status": "ready",
    }
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    assert image["sha512"] == hashlib.sha512(data).hexdigest()
    assert image["source"] == str(tmp_path / "disk.img") and image["created_at"]

    listed = (await bf.client.get("/v1/images")).json()["images"]
    assert [i["uuid"] for i in listed] == [image["uuid"]]
    for ident in ("base", image["uuid"]):
        shown = await bf.client.get(f"/v1/images/{ident}")
        assert shown.status_code == 200 and shown.json()["sha256"] == image["sha256"]

    # Served as an Android sparse stream, which the peer expands to the original.
    served = bf.images.root / "images" / f"{image['uuid']}.simg"
    stream = served.read_bytes()
    assert stream[:4] == b"\x3a\xff\x26\xed" and image["stream_size"] == len(stream)
    if shutil.which("simg2img"):
        expand = ["simg2img", str(served), str(tmp_path / "expanded")]
        await asyncio.to_thread(subprocess.run, expand, check=True)
        assert (tmp_path / "expanded").read_bytes() == data
    assert (await bf.client.delete("/v1/images/base")).status_code == 204
    assert not served.exists()
    r = await bf.client.get("/v1/images/base")
    assert r.status_code == 404 and "base" in fault(r)


async def test_qcow2_import_over_the_api(bf: Bf, tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img (Debian package qemu-utils)")
    path = tmp_path / "disk.qcow2"
    qemu_img_create("qcow2", path, "16M")
    r = await bf.client.post("/v1/images", json={"name": "q", "source": str(path)})
    assert r.status_code == 201, r.text
    image = r.json()
    assert (image["disk_format"], image["stream_format"], image["virtual_size"]) == (
        "qcow2",
        "simg+zstd",
        16 * MiB,
    )
    assert image["stream_size"] < MiB


async def test_api_refusals(bf: Bf, tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(MiB))
    cases: list[tuple[Any, int, str]] = [
        ({"name": "x"}, 400, "Mandatory field missing: 'source'"),
        ({"name": "x", "source": "/d", "extra": 1}, 400, "Unknown attribute for argument image: extra"),
        ({"name": "bad name", "source": str(tmp_path / "disk.img")}, 400, "Cannot use 'bad name'"),
        ({"name": "x", "source": "disk.img"}, 400, "neither an absolute file path"),
        ({"name": "x", "source": str(tmp_path / "none.img")}, 400, "No such file"),
    ]
    for body, status, message in cases:
        r = await bf.client.post("/v1/images", json=body)
        assert r.status_code == status and message in fault(r), (body, r.text)
    vmdk = tmp_path / "disk.vmdk"
    if shutil.which("qemu-img"):
        qemu_img_create("vmdk", vmdk, "8M")
        r = await bf.client.post("/v1/images", json={"name": "v", "source": str(vmdk)})
        assert r.status_code == 400 and "VMDK" in fault(r)
    first = await bf.client.post("/v1/images", json={"name": "dup", "source": str(tmp_path / "disk.img")})
    assert first.status_code == 201
    again = await bf.client.post("/v1/images", json={"name": "dup", "source": str(tmp_path / "disk.img")})
    assert again.status_code == 409 and "dup already exists" in fault(again)
    assert [i["name"] for i in (await bf.client.get("/v1/images")).json()["images"]] == ["dup"]
    assert (await bf.client.delete("/v1/images/nope")).status_code == 404


class HeldImage(BaseHTTPRequestHandler):
    """Serves a 2 MiB raw image, holding back its second half until the test releases it."""

    release = threading.Event()
    body = os.urandom(2 * MiB)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[:MiB])
        self.wfile.flush()
        if self.release.wait(60):
            self.wfile.write(self.body[MiB:])

    def log_message(self, *args: object) -> None:
        pass


async def test_api_keeps_answering_during_an_import(bf: Bf) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HeldImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    HeldImage.release.clear()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/disk.img"
        post = asyncio.create_task(bf.client.post("/v1/images", json={"name": "held", "source": url}))
        # The download is stuck half-way in its thread; the event loop still answers, and the image is
        # listed as importing (its name is taken from the start).
        statuses: list[str] = []
        while statuses != ["importing"]:
            assert not post.done(), post.result().text
            statuses = [i["status"] for i in (await bf.client.get("/v1/images")).json()["images"]]
            await asyncio.sleep(0.01)
        taken = await bf.client.post("/v1/images", json={"name": "held", "source": url})
        assert taken.status_code == 409
        HeldImage.release.set()
        r = await post
        assert r.status_code == 201, r.text
        assert r.json()["sha256"] == hashlib.sha256(HeldImage.body).hexdigest()
    finally:
        HeldImage.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_cli_commands(bf: Bf, tmp_path: Path) -> None:
    """The CLI over real HTTP: uvicorn serves the same app in this loop, the CLI runs in a thread."""
    # Listening before uvicorn runs: the CLI's connections wait in the backlog, no start-up polling.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(bf.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{port}"
    try:
        data = os.urandom(MiB)
        (tmp_path / "disk.img").write_bytes(data)
        runner = CliRunner()

        def cli(*args: str) -> str:
            result = runner.invoke(image_app, [*args, "--url", url], env={"COLUMNS": "300"})
            assert result.exit_code == 0, result.output
            return result.output

        old = Path.cwd()
        os.chdir(tmp_path)  # a relative FILE is read where the CLI runs, and uploaded
        try:
            out = await asyncio.to_thread(cli, "add", "cli-img", "disk.img")
        finally:
            os.chdir(old)
        assert "added image cli-img" in out and hashlib.sha256(data).hexdigest() in out
        out = await asyncio.to_thread(cli, "list")
        assert "cli-img" in out and "raw" in out and "upload:disk.img" in out
        out = await asyncio.to_thread(cli, "show", "cli-img")
        assert "upload:disk.img" in out and hashlib.sha512(data).hexdigest()[:40] in out
        # A taken name is refused before any byte is sent.
        taken = await asyncio.to_thread(
            runner.invoke, image_app, ["add", "cli-img", str(tmp_path / "disk.img"), "--url", url]
        )
        assert taken.exit_code == 1 and "already exists" in taken.output
        # --on-server: the server reads the path itself, inside its images.import_dirs only.
        out = await asyncio.to_thread(cli, "add", "on-server", str(tmp_path / "disk.img"), "--on-server")
        assert "added image on-server" in out
        refused = await asyncio.to_thread(
            runner.invoke, image_app, ["add", "etc", "/etc/passwd", "--on-server", "--url", url]
        )
        assert refused.exit_code == 1 and "images.import_dirs" in refused.output
        out = await asyncio.to_thread(cli, "delete", "cli-img")
        assert "deleted image cli-img" in out
        failed = await asyncio.to_thread(runner.invoke, image_app, ["show", "cli-img", "--url", url])
        assert failed.exit_code == 1 and "could not be found" in failed.output
    finally:
        server.should_exit = True
        await serving
        sock.close()
