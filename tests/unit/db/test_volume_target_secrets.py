"""CHAP secrets of volume targets at rest: sealed in the database file, opened by the conductor, and
re-encrypted by `bootforge secrets rotate` with the nodes' secrets."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from support.service import BOOTFORGE, InProcess, in_process

from bootforge.conductor.task import load_node
from bootforge.conductor.volumes import boot_volumes

V = {"X-OpenStack-Ironic-API-Version": "1.78"}
SECRET = "Vol-CHAP-secret-9981"


@asynccontextmanager
async def service(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for bf in in_process(tmp_path):
        yield bf


def stored_properties(state: Path) -> str:
    with sqlite3.connect(state / "bootforge.sqlite") as conn:
        (value,) = conn.execute("SELECT properties FROM volume_targets").fetchone()
    conn.close()
    return str(value)


async def chap_password(bf: InProcess, node_uuid: str) -> Any:
    node = await load_node(bf.conductor, node_uuid)
    return (await boot_volumes(bf.conductor.db, node.id))[node_uuid].iscsi().password


async def test_rotate_reencrypts_volume_target_secrets(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        node = (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware"})).json()["uuid"]
        props = {
            "target_iqn": "iqn.2026-12.org.bootforge:v",
            "target_portal": "192.0.2.1",
            "target_lun": 0,
            "auth_method": "CHAP",
            "auth_username": "u",
            "auth_password": SECRET,
        }
        body = {
            "node_uuid": node,
            "volume_type": "iscsi",
            "boot_index": 0,
            "volume_id": "v",
            "properties": props,
        }
        assert (await bf.client.post("/v1/volume/targets", json=body, headers=V)).status_code == 201
        state = bf.settings.state_dir
        before = stored_properties(state)
        assert SECRET not in before and "bfenc:v1:" in before
        assert await chap_password(bf, node) == SECRET
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    argv = [BOOTFORGE, "secrets", "rotate", "--new-key", str(tmp_path / "new.key"), "--state-dir", str(state)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    after = stored_properties(state)
    assert after != before and SECRET not in after
    async with service(tmp_path) as bf:
        assert await chap_password(bf, node) == SECRET
