"""Rescue through the agent: the conductor's half is real, the agent's half is played by the test.

A deployed fake-hardware node with the `agent` rescue interface network-boots the ramdisk; the agent
is sent only the crypt SHA-512 hash of the rescue password, and the node is `rescue` when it reports;
`unrescue` boots the instance again.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api, api_with
from test_api_agent import MAC, lookup, poll, report

from bootforge.drivers.rescue import hash_password

PASSWORD = "correct horse battery staple"
NODE = {"boot_interface": "pxe", "rescue_interface": "agent"}


async def rescue_api(tmp_path: Path, **settings: Any) -> AsyncIterator[Api]:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    async for api in api_with(tmp_path, **settings):
        yield api


async def deployed(api: Api) -> str:
    node = await api.node(name="r1", **NODE)
    await api.port(node["uuid"], MAC)
    shown = await api.drive(node["uuid"], "manage", "provide", "active")
    assert shown["provision_state"] == "active", shown["last_error"]
    return str(node["uuid"])


def openssl_crypt(password: str, salt: str) -> str:
    argv = ["openssl", "passwd", "-6", "-salt", salt, "-stdin"]
    return subprocess.run(
        argv, input=password, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


async def history(api: Api, node: str) -> list[str]:
    return [e["event"] for e in (await api.c.get(f"/v1/nodes/{node}/history")).json()["history"]]


async def test_rescue_sends_only_the_hash_and_unrescue_boots_the_instance(tmp_path: Path) -> None:
    async for api in rescue_api(tmp_path):
        node = await deployed(api)
        r = await api.verb(node, "rescue", rescue_password=PASSWORD)
        assert r.status_code == 202, r.text
        await api.bf.conductor.wait_idle()
        shown = await api.get(node)
        assert shown["provision_state"] == "rescue wait", shown["last_error"]
        assert shown["power_state"] == "power on"
        # The plaintext is gone from the node once hashed; the queued command's hash is masked.
        assert "rescue_password" not in shown["instance_info"]
        queued = shown["driver_internal_info"]["agent_command"]["args"]
        assert queued["hashed_rescue_password"] == "******"

        token = await lookup(api)
        command = await poll(api, node, token)
        assert command is not None and command["name"] == "finalize_rescue"
        hashed = command["args"]["hashed_rescue_password"]
        assert PASSWORD not in str(command)
        assert hashed.startswith("$6$") and command["args"]["authorized_keys"] == []
        salt = hashed.split("$")[2]
        assert hash_password(PASSWORD, salt) == hashed
        assert hash_password(PASSWORD + "x", salt) != hashed
        if shutil.which("openssl"):
            # A peer that is not bootforge: OpenSSL's SHA-512 crypt of the same password and salt.
            assert openssl_crypt(PASSWORD, salt) == hashed

        result = {"ssh_port": 22, "user": "root", "authorized_keys": 0, "server": "dropbear"}
        assert await report(api, node, token, command["id"], status="succeeded", result=result) == 200
        shown = await api.get(node)
        assert shown["provision_state"] == "rescue", shown["last_error"]
        assert shown["power_state"] == "power on"
        # The rescued machine's agent keeps its session (it is the rescue system): no new command.
        assert await poll(api, node, token, wait=0.1) is None

        assert (await api.drive(node, "unrescue"))["provision_state"] == "active"
        shown = await api.get(node)
        assert shown["power_state"] == "power on" and shown["last_error"] is None
        # The ramdisk boot is over: its agent can no longer act on the node.
        r = await api.c.get(f"/v1/nodes/{node}/agent/command", headers={"X-Agent-Token": token})
        assert r.status_code == 401
        events = await history(api, node)
        assert any("the rescue ramdisk is ready" in e for e in events)
        assert any("unrescued" in e for e in events)
        assert not any(PASSWORD in e or hashed in e for e in events)


async def test_a_failed_finalize_rescue_fails_the_rescue_and_unrescue_recovers(tmp_path: Path) -> None:
    async for api in rescue_api(tmp_path):
        node = await deployed(api)
        assert (await api.verb(node, "rescue", rescue_password=PASSWORD)).status_code == 202
        await api.bf.conductor.wait_idle()
        token = await lookup(api)
        command = await poll(api, node, token)
        assert command is not None
        error = "finalize_rescue: dropbear exited 1: cannot bind port 22"
        assert await report(api, node, token, command["id"], status="failed", error=error) == 200
        shown = await api.get(node)
        assert shown["provision_state"] == "rescue failed"
        assert shown["last_error"] == f"the agent's finalize_rescue failed: {error}"
        assert (await api.drive(node, "unrescue"))["provision_state"] == "active"


async def test_a_silent_rescue_ramdisk_times_out(tmp_path: Path) -> None:
    async for api in rescue_api(tmp_path, rescue_callback_timeout=0.0):
        node = await deployed(api)
        assert (await api.verb(node, "rescue", rescue_password=PASSWORD)).status_code == 202
        await api.bf.conductor.wait_idle()
        await api.bf.conductor.check_wait_timeouts()
        shown = await api.get(node)
        assert shown["provision_state"] == "rescue failed"
        assert "no agent called from the ramdisk" in shown["last_error"]


@pytest.mark.parametrize(
    ("key", "ok"), [("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1 op@desk", True), ("hello\nroot", False)]
)
async def test_rescue_ssh_key_is_checked_and_sent(tmp_path: Path, key: str, ok: bool) -> None:
    async for api in rescue_api(tmp_path):
        node = await deployed(api)
        patch = [{"op": "add", "path": "/instance_info/rescue_ssh_key", "value": key}]
        assert (await api.c.patch(f"/v1/nodes/{node}", json=patch)).status_code == 200
        r = await api.verb(node, "rescue", rescue_password=PASSWORD)
        if not ok:
            assert r.status_code == 400 and "rescue_ssh_key" in r.text, r.text
            assert (await api.get(node))["provision_state"] == "active"
            continue
        assert r.status_code == 202, r.text
        await api.bf.conductor.wait_idle()
        command = await poll(api, node, await lookup(api))
        assert command is not None and command["args"]["authorized_keys"] == [key]
