"""The agent as a process against a scripted conductor on loopback, over the contract's three endpoints.

The conductor is stdlib http.server with a queue of commands. The agent is `python -m bootforge.agent`
with a fake /proc + /sys tree: it looks its node up by MAC, long-polls, runs commands and posts
results. One run covers: the lookup, the token on every later call, an inspect result that matches
the fake tree, an unknown command reported failed, a 401 that sends the agent back to lookup, and a
command offered again after its result that does not run twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

NODE = "9f0c4a4e-5b7f-4d43-9d1e-2a7e1c0c0a01"
MAC = "52:54:00:12:34:56"
DEADLINE = 60.0


@dataclass
class Offer:
    """A command in the queue; ``extra_offers``: times it is offered again after its result."""

    id: str
    name: str
    args: dict[str, Any]
    extra_offers: int = 0
    revoke_token_after: bool = False
    answered: bool = False


@dataclass
class Conductor:
    """Just enough conductor: lookup hands out tokens, polls offer the queue's head, posts record."""

    queue: list[Offer]
    poll_timeout: int = 1
    tokens: list[str] = field(default_factory=list)
    token: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closing: bool = False
    # Polls that found the queue empty: the agent has nothing left to do.
    empty_polls: int = 0

    def lookup(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        addresses = query.get("addresses", [""])[0].split(",")
        if MAC not in addresses or query.get("node_uuid") != [NODE]:
            return 404, {"error": "no such node"}
        self.token = f"token-{len(self.tokens) + 1}"
        self.tokens.append(self.token)
        config = {"agent_token": self.token, "poll_timeout": self.poll_timeout, "progress_interval": 0.2}
        return 200, {"node": {"uuid": NODE, "name": "vm-1", "properties": {}}, "config": config}

    def poll(self, wait: float) -> tuple[int, Any]:
        self.empty_polls += not self.queue
        end = time.monotonic() + min(wait, self.poll_timeout)
        while not self.queue and not self.closing and (left := end - time.monotonic()) > 0:
            self.cond.wait(left)
        if not self.queue:
            return 204, None
        head = self.queue[0]
        if head.answered:  # offered once more after its result, as a confused conductor might
            head.extra_offers -= 1
            if head.extra_offers == 0:
                self.queue.pop(0)
        return 200, {"id": head.id, "name": head.name, "args": head.args}

    def post(self, command_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.results.setdefault(command_id, []).append(body)
        if body.get("status") == "running":
            return 200, {"accepted": True}
        if self.queue and self.queue[0].id == command_id and not self.queue[0].answered:
            head = self.queue[0]
            head.answered = True
            if not head.extra_offers:
                self.queue.pop(0)
            if head.revoke_token_after:
                self.token = None
            self.cond.notify_all()
        return 200, {"accepted": True}

    def handle(self, method: str, url: str, token: str | None, body: Any) -> tuple[int, Any]:
        """Route one request (under the lock); records it first."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        self.requests.append({"method": method, "path": parts.path, "query": query, "token": token})
        if parts.path == "/v1/lookup":
            return self.lookup(query)
        if token is None or token != self.token:
            return 401, {"error": "bad token"}
        prefix = f"/v1/nodes/{NODE}/agent/command"
        if method == "GET" and parts.path == prefix:
            return self.poll(float(query["wait"][0]))
        if method == "POST" and parts.path.startswith(prefix + "/"):
            return self.post(parts.path[len(prefix) + 1 :], body)
        return 404, {"error": f"no route {method} {parts.path}"}

    def wait_for(self, what: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + DEADLINE
        with self.cond:
            while not what():
                assert proc.poll() is None, f"agent exited with {proc.returncode}"
                assert time.monotonic() < deadline, "the agent did not get there in time"
                self.cond.wait(0.2)


@pytest.fixture
def conductor() -> Iterator[tuple[Conductor, str]]:
    state = Conductor(queue=[])

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with state.cond:
                status, reply = state.handle(self.command, self.path, self.headers.get("X-Agent-Token"), body)
                state.cond.notify_all()
            data = b"" if reply is None else json.dumps(reply).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent was stopped during a long poll

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        with state.cond:
            state.closing = True
            state.cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def fake_machine(root: Path) -> Path:
    files = {
        # BOOTIF as PXELINUX and iPXE spell it: ARP type 01, dashes, upper case.
        "proc/cmdline": f"console=ttyS0 bootforge.node={NODE} BOOTIF=01-{MAC.replace(':', '-').upper()}\n",
        "proc/cpuinfo": "".join(
            f"processor\t: {i}\nmodel name\t: Fake CPU\nflags\t\t: fpu sse2\n\n" for i in range(2)
        ),
        "proc/meminfo": "MemTotal:        2017536 kB\n",
        "proc/sys/kernel/hostname": "bf-ramdisk\n",
        "sys/class/net/eth0/address": MAC + "\n",
        "sys/class/net/eth0/speed": "1000\n",
        "sys/class/net/eth0/carrier": "1\n",
        "sys/class/net/eth0/flags": "0x1003\n",
        "sys/class/net/lo/address": "00:00:00:00:00:00\n",
        "sys/class/dmi/id/sys_vendor": "QEMU\n",
        "sys/class/dmi/id/product_name": "Standard PC (i440FX + PIIX, 1996)\n",
        "sys/class/dmi/id/product_serial": "SN-0001\n",
        "sys/block/vda/size": "4194304\n",  # 2 GiB in 512-byte sectors
        "sys/block/vda/queue/rotational": "1\n",
        "sys/block/vda/serial": "vd-serial\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def start_agent(api: str, root: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    argv = [sys.executable, "-m", "bootforge.agent", "--api", api, "--sys-root", str(root), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out


@pytest.mark.slow
def test_agent_serves_a_conductor(conductor: tuple[Conductor, str], tmp_path: Path) -> None:
    state, api = conductor
    state.queue = [
        Offer("c1", "inspect", {"lldp_wait": 0}),
        Offer("c2", "frobnicate", {}, revoke_token_after=True),
        Offer("c3", "inspect", {"lldp_wait": 0}, extra_offers=1),
    ]
    proc = start_agent(api, fake_machine(tmp_path))
    try:
        # Done when the agent, after c3 was offered again, came back for more (it would have
        # posted a second result of c3 before that, had it run it again).
        state.wait_for(lambda: state.empty_polls > 0, proc)
    finally:
        out = stop(proc)
        print(out)

    lookups = [r for r in state.requests if r["path"] == "/v1/lookup"]
    assert len(lookups) == 2, out
    assert lookups[0]["query"]["addresses"] == [MAC] and lookups[0]["query"]["node_uuid"] == [NODE]
    assert all(r["token"] is None for r in lookups)
    # Every other call carries the token of the lookup before it.
    issued = iter(state.tokens)
    current = None
    for r in state.requests:
        if r["path"] == "/v1/lookup":
            current = next(issued)
        else:
            assert r["token"] == current, f"{r} should carry {current}"
    posted_with = [r["token"] for r in state.requests if r["method"] == "POST"]
    assert posted_with == ["token-1", "token-1", "token-2"], out

    (inspected,) = state.results["c1"]
    assert inspected["status"] == "succeeded"
    inv = inspected["result"]["inventory"]
    assert (inv["cpu"]["count"], inv["cpu"]["model_name"], inv["cpu"]["flags"]) == (
        2,
        "Fake CPU",
        ["fpu", "sse2"],
    )
    assert inv["memory"] == {"total": 2017536 * 1024, "physical_mb": 2048}
    assert [(i["name"], i["mac_address"], i["speed_mbps"], i["has_carrier"]) for i in inv["interfaces"]] == [
        ("eth0", MAC, 1000, True)
    ]
    assert inv["system_vendor"] == {
        "manufacturer": "QEMU",
        "product_name": "Standard PC (i440FX + PIIX, 1996)",
        "serial_number": "SN-0001",
    }
    assert inv["boot"] == {"current_boot_mode": "bios", "pxe_interface": MAC}
    assert inv["hostname"] == "bf-ramdisk"
    assert [(d["name"], d["size"], d["serial"], d["rotational"]) for d in inv["disks"]] == [
        ("/dev/vda", 2 * 1024**3, "vd-serial", True)
    ]
    assert inspected["result"]["plugin_data"]["lldp_raw"] == {}

    (unknown,) = state.results["c2"]
    assert unknown["status"] == "failed" and "'frobnicate'" in unknown["error"]
    # c3 was offered again after its result was accepted: it ran once, and one result was posted.
    assert [b["status"] for b in state.results["c3"]] == ["succeeded"]
    assert out.count("running command c3") == 1
    assert all(line.startswith("bootforge-agent: ") for line in out.splitlines()), out


@pytest.mark.slow
def test_once_exits_after_the_first_result(conductor: tuple[Conductor, str], tmp_path: Path) -> None:
    state, api = conductor
    state.queue = [Offer("c1", "inspect", {"lldp_wait": 0}), Offer("c2", "inspect", {"lldp_wait": 0})]
    proc = start_agent(api, fake_machine(tmp_path), "--once", "--node", NODE, "--mac", "01-52-54-00-12-34-56")
    try:
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        out = stop(proc)
    assert list(state.results) == ["c1"], out
    assert [r["path"] for r in state.requests if r["method"] == "POST"] == [
        f"/v1/nodes/{NODE}/agent/command/c1"
    ]
