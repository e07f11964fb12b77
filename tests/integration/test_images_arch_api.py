"""Image architectures over /v1/images and `bootforge image add --arch`, against an in-process bootforge;
and migration 0011 (images.cpu_arch) both ways on SQLite with an image row in the table."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import inspect, text
from support.service import in_process
from typer.testing import CliRunner

from bootforge.cli.images import image_app
from bootforge.db.engine import downgrade, make_engine, migrate

sys.path.insert(0, str(Path(__file__).parent.parent / "unit" / "images"))
from esp_util import AA64, MISSING, NEEDS, X64, MiB, disk

pytestmark = pytest.mark.skipif(bool(MISSING), reason=NEEDS)


@dataclass
class Bf:
    client: httpx.AsyncClient
    app: Any


@pytest.fixture
async def bf(tmp_path: Path) -> AsyncIterator[Bf]:
    async for p in in_process(tmp_path, images={"import_dirs": [str(tmp_path)]}):
        yield Bf(p.client, p.app)


def fault(r: httpx.Response) -> str:
    return str(json.loads(r.json()["error_message"])["faultstring"])


async def test_api_field(bf: Bf, tmp_path: Path) -> None:
    arm = disk(tmp_path / "arm.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64})
    plain = tmp_path / "plain.raw"
    plain.write_bytes(os.urandom(MiB))
    r = await bf.client.put("/v1/images/arm/file", content=arm.read_bytes())
    assert r.status_code == 201 and r.json()["cpu_arch"] == "aarch64", r.text
    r = await bf.client.post("/v1/images", json={"name": "p", "source": str(plain), "cpu_arch": "arm64"})
    assert r.status_code == 201 and r.json()["cpu_arch"] == "aarch64", r.text
    r = await bf.client.put("/v1/images/q/file", params={"cpu_arch": "x86_64"}, content=plain.read_bytes())
    assert r.status_code == 201 and r.json()["cpu_arch"] == "x86_64", r.text
    r = await bf.client.post("/v1/images", json={"name": "n", "source": str(plain), "cpu_arch": None})
    assert r.status_code == 201 and r.json()["cpu_arch"] is None, r.text
    listed = {i["name"]: i["cpu_arch"] for i in (await bf.client.get("/v1/images")).json()["images"]}
    assert listed == {"arm": "aarch64", "p": "aarch64", "q": "x86_64", "n": None}
    assert (await bf.client.get("/v1/images/arm")).json()["cpu_arch"] == "aarch64"

    for body in ({"cpu_arch": "sparc"}, {"cpu_arch": 64}):
        r = await bf.client.post("/v1/images", json={"name": "bad", "source": str(plain), **body})
        assert r.status_code == 400 and "cpu_arch" in fault(r) and "x86_64, aarch64" in fault(r), r.text
    r = await bf.client.put("/v1/images/bad/file", params={"cpu_arch": "sparc"}, content=b"\0" * 1024)
    assert r.status_code == 400 and "cpu_arch 'sparc'" in fault(r), r.text
    r = await bf.client.post("/v1/images", json={"name": "bad", "source": str(arm), "cpu_arch": "x86_64"})
    assert r.status_code == 400 and "cpu_arch x86_64 was given, but the image boots aarch64" in fault(r)
    assert (await bf.client.get("/v1/images/bad")).status_code == 404


async def test_cli_arch_flag(bf: Bf, tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(
        uvicorn.Config(bf.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(image_app, [*args, "--url", url], env={"COLUMNS": "300"})
        assert result.exit_code == code, result.output
        return result.output

    try:
        x86 = disk(tmp_path / "x.raw", {"EFI/BOOT/BOOTX64.EFI": X64})
        plain = tmp_path / "plain.raw"
        plain.write_bytes(os.urandom(MiB))
        out = await asyncio.to_thread(cli, "add", "up", str(plain), "--arch", "arm64")
        assert "added image up" in out and "aarch64" in out
        out = await asyncio.to_thread(cli, "add", "srv", str(plain), "--on-server", "--arch", "x86_64")
        assert "x86_64" in out
        out = await asyncio.to_thread(cli, "add", "found", str(x86))
        assert "x86_64" in out
        out = await asyncio.to_thread(cli, "add", "none", str(plain))
        assert "any architecture" in out
        out = await asyncio.to_thread(cli, "add", "bad", str(plain), "--arch", "sparc", code=2)
        assert "--arch 'sparc'" in out and "x86_64, aarch64" in out
        out = await asyncio.to_thread(cli, "add", "clash", str(x86), "--arch", "aarch64", code=1)
        assert "the image boots x86_64" in out
        table = await asyncio.to_thread(cli, "list")
        lines = [line.replace("┃", "│") for line in table.splitlines()]  # rich: ┃ heads, │ rows
        cells = [[c.strip() for c in line.split("│")] for line in lines if "│" in line]
        header = next(row for row in cells if "Arch" in row)
        rows = {row[header.index("Name")]: row[header.index("Arch")] for row in cells if row is not header}
        assert rows == {"up": "aarch64", "srv": "x86_64", "found": "x86_64", "none": "any"}, rows
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def test_migration_0011_both_ways(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite'}")
    try:
        await migrate(engine, "0010")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO images (uuid, name, source, disk_format, size, virtual_size, sha256, sha512,"
                    " stream_path, stream_format, stream_size, stream_sha256, stream_sha512, status,"
                    " created_at) VALUES ('u-1', 'old', '/x', 'raw', 1, 1, '', '', 'images/u-1.simg',"
                    " 'simg', 1, '', '', 'ready', '2026-12-07 00:00:00')"
                )
            )
        await migrate(engine)
        async with engine.begin() as conn:
            # Images from before the column are "any architecture".
            assert (await conn.execute(text("SELECT cpu_arch FROM images"))).scalar_one() is None
            await conn.execute(text("UPDATE images SET cpu_arch = 'aarch64'"))
        await downgrade(engine, "0010")
        async with engine.begin() as conn:
            columns = await conn.run_sync(lambda c: {x["name"] for x in inspect(c).get_columns("images")})
            assert "cpu_arch" not in columns and "stream_format" in columns
            assert (await conn.execute(text("SELECT name FROM images"))).scalar_one() == "old"
        await migrate(engine)
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT name, cpu_arch FROM images"))).one() == ("old", None)
    finally:
        await engine.dispose()
