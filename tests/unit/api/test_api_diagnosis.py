"""GET /v1/nodes/{ident}/diagnosis and /progress, over a conductor whose half of the agent protocol is
real (fake-hardware with pxe boot, direct deploy, agent inspect; the test plays the agent, as in
test_api_agent.py)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from apihelp import Api, api_with, boot_token_header
from rich.console import Console
from support.service import LATEST

from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.cli.progress import LineDisplay, RichDisplay

MAC = "52:54:00:aa:bb:31"
AGENT = {"boot_interface": "pxe", "deploy_interface": "direct", "inspect_interface": "agent"}
MiB = 1024**2


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    async for a in api_with(tmp_path, agent={"lldp_wait": 0}):
        yield a


async def cleaning_node(api: Api) -> tuple[str, str, dict[str, Any]]:
    """A node in clean wait whose agent looked up and polled its erase command: (uuid, token, command)."""
    node = await api.node(name="n1", **AGENT)
    uuid = str(node["uuid"])
    await api.port(uuid, MAC)
    assert (await api.drive(uuid, "manage", "provide"))["provision_state"] == "clean wait"
    headers = await boot_token_header(api, uuid)
    r = await api.c.get("/v1/lookup", params={"addresses": MAC}, headers=headers)
    assert r.status_code == 200, r.text
    token = str(r.json()["config"]["agent_token"])
    r = await api.c.get(
        f"/v1/nodes/{uuid}/agent/command", params={"wait": 0.5}, headers={"X-Agent-Token": token}
    )
    assert r.status_code == 200, r.text
    return uuid, token, r.json()


async def report(api: Api, uuid: str, token: str, command: str, **body: Any) -> None:
    r = await api.c.post(
        f"/v1/nodes/{uuid}/agent/command/{command}", json=body, headers={"X-Agent-Token": token}
    )
    assert r.status_code == 200, r.text
    await api.bf.conductor.wait_idle()


async def test_a_healthy_node_has_nothing_wrong(api: Api) -> None:
    node = await api.available(name="fine")
    r = await api.c.get("/v1/nodes/fine/diagnosis")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["node_uuid"] == node["uuid"] and d["status"] == "ok" and d["wrong"] is False
    assert d["summary"] == "nothing wrong: the node is available, power off"
    assert d["failing_event"] is None
    p = (await api.c.get("/v1/nodes/fine/progress")).json()
    assert p["provision_state"] == "available" and p["step"] is None and p["agent"] is None


async def test_progress_shows_the_step_and_what_the_agent_reported(api: Api) -> None:
    uuid, token, command = await cleaning_node(api)
    p = (await api.c.get(f"/v1/nodes/{uuid}/progress")).json()
    assert p["step"] == {"kind": "clean", "name": "deploy.erase_devices_metadata", "number": 1, "count": 1}
    assert p["agent"]["command"] == "erase" and p["agent"]["status"] == "waiting"
    progress = {"done": 300 * MiB, "total": 1024 * MiB, "message": "erasing metadata on vda"}
    await report(api, uuid, token, command["id"], status="running", progress=progress)
    p = (await api.c.get(f"/v1/nodes/{uuid}/progress")).json()
    assert p["agent"]["status"] == "running"
    assert (p["agent"]["done"], p["agent"]["total"], p["agent"]["message"]) == (
        300 * MiB,
        1024 * MiB,
        "erasing metadata on vda",
    )
    d = (await api.c.get(f"/v1/nodes/{uuid}/diagnosis")).json()
    assert d["status"] == "in progress" and d["wrong"] is False
    assert d["summary"].startswith("clean wait: waiting for the agent since ")
    assert d["summary"].endswith("the agent runs erase: erasing metadata on vda (29 %)")


async def test_a_failed_agent_command_is_the_diagnosis_with_its_event(api: Api) -> None:
    uuid, token, command = await cleaning_node(api)
    error = "wipefs -a /dev/vda: Device or resource busy"
    await report(api, uuid, token, command["id"], status="failed", error=error)
    d = (await api.c.get(f"/v1/nodes/{uuid}/diagnosis")).json()
    assert d["provision_state"] == "clean failed"
    assert d["wrong"] is True and d["stage"] == "agent-command-failed"
    assert d["cause"] == f"the agent said: {error}"
    failing = d["failing_event"]
    assert failing["event_type"] == "agent" and failing["severity"] == "error" and error in failing["event"]
    # The failing event is a real timeline row, so a dashboard can find and highlight it.
    row = await api.c.get(f"/v1/nodes/{uuid}/history/{failing['uuid']}")
    assert row.status_code == 200 and row.json()["event"] == failing["event"]
    assert failing["uuid"] in [e["uuid"] for e in d["evidence"]]


async def test_unknown_nodes_and_missing_credentials(api: Api, tmp_path: Path) -> None:
    assert (await api.c.get("/v1/nodes/nope/diagnosis")).status_code == 404
    assert (await api.c.get("/v1/nodes/nope/progress")).status_code == 404
    await api.node(name="guarded")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("admin:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    app = create_app(api.bf.services, Htpasswd(htpasswd))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
        for path in ("diagnosis", "progress"):
            assert (await c.get(f"/v1/nodes/guarded/{path}")).status_code == 401
            assert (await c.get(f"/v1/nodes/guarded/{path}", auth=("admin", "pw"))).status_code == 200


async def test_the_progress_displays_show_the_step_and_the_bytes(api: Api) -> None:
    """What `--wait` shows of a running agent command: a rich bar on a terminal, lines when piped."""
    uuid, token, command = await cleaning_node(api)
    frames = []
    for done in (0, 100, 130, 300, 1024):
        progress = {"done": done * MiB, "total": 1024 * MiB, "message": "erasing vda"}
        await report(api, uuid, token, command["id"], status="running", progress=progress)
        frames.append((await api.c.get(f"/v1/nodes/{uuid}/progress")).json())

    tty = Console(file=io.StringIO(), force_terminal=True, width=160)
    with RichDisplay(tty) as rich:
        for frame in frames[:4]:
            rich.update("n1", frame)
        shown = rich.progress.tasks[0]
        assert (shown.completed, shown.total) == (300 * MiB, 1024 * MiB)
        assert shown.fields["amount"] == "300 of 1024 MiB"
    text = tty.file.getvalue()  # type: ignore[attr-defined]
    assert "clean step 1/1 deploy.erase_devices_metadata" in text and "agent erase: erasing vda" in text
    assert "300 of 1024 MiB" in text and "\x1b[" in text

    piped = Console(file=io.StringIO(), width=1000)
    lines = LineDisplay(piped)
    for frame in frames:
        lines.update("n1", frame)
    printed = piped.file.getvalue().splitlines()  # type: ignore[attr-defined]
    # 0 and 100 MiB of 1024 are in the same tenth: one line for both.
    doing = (
        "n1: clean wait -> available  clean step 1/1 deploy.erase_devices_metadata  agent erase: erasing vda"
    )
    assert printed == [
        f"{doing} ({pct} %, {mib} of 1024 MiB)" for pct, mib in ((0, 0), (12, 130), (29, 300), (100, 1024))
    ]


async def test_a_silent_wait_is_stalled_after_the_configured_quiet_period(tmp_path: Path) -> None:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    async for api in api_with(tmp_path, agent={"lldp_wait": 0}, diagnosis_quiet=2.0):
        uuid, _, _ = await cleaning_node(api)
        d = (await api.c.get(f"/v1/nodes/{uuid}/diagnosis")).json()
        assert d["status"] == "in progress", d
        # The node's last word (the agent's poll) ages past diagnosis_quiet; polled, bounded.
        deadline = asyncio.get_running_loop().time() + 30
        while d["status"] == "in progress" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            d = (await api.c.get(f"/v1/nodes/{uuid}/diagnosis")).json()
        assert d["status"] == "stalled" and d["wrong"] is True, d
        assert d["summary"].startswith("clean wait: waiting for the agent since "), d
