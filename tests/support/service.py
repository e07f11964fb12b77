"""A bootforge under test: in-process (ASGI, fast) or as a real `bootforge serve` process on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bootforge.api.app import create_app
from bootforge.cli.serve import build
from bootforge.config import Settings

BOOTFORGE = str(Path(sys.executable).parent / "bootforge")
LATEST = {"X-OpenStack-Ironic-API-Version": "1.78"}
# The default types plus fake-hardware, which is off unless the settings enable it: tests enrol fakes.
TEST_HARDWARE_TYPES = ["ipmi", "redfish", "qemu", "fake-hardware"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class InProcess:
    """The API app and conductor in the test's own event loop; `client` talks ASGI, no socket."""

    settings: Settings
    client: httpx.AsyncClient
    services: Any
    app: Any

    @property
    def conductor(self) -> Any:
        return self.services.conductor


async def in_process(tmp_path: Path, **overrides: Any) -> AsyncIterator[InProcess]:
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "host": "test-conductor",
            "power_sync_interval": 0,
            "timeout_check_interval": 0,
            "conductor_heartbeat_interval": 0,
            "enabled_hardware_types": TEST_HARDWARE_TYPES,
            **overrides,
        }
    )
    db, conductor, services = await build(settings)
    app = create_app(services)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
            yield InProcess(settings, c, services, app)
    finally:
        await conductor.stop(grace=5)
        await db.close()


@dataclass
class Served:
    """A `bootforge serve` process; restartable, killable, always stopped at the end."""

    state_dir: Path
    port: int
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.log = self.state_dir.parent / f"serve-{self.port}.log"
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    BOOTFORGE,
                    "serve",
                    "--state-dir",
                    str(self.state_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bootforge serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"bootforge serve did not answer in {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the crash a conductor must survive."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def served(
    tmp_path: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Iterator[Served]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    base_env["BOOTFORGE_ENABLED_HARDWARE_TYPES"] = json.dumps(TEST_HARDWARE_TYPES)
    s = Served(tmp_path / "state", free_port(), {**base_env, **(env or {})}, list(args or []))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def bf(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for x in in_process(tmp_path):
        yield x


@pytest.fixture
def bf_server(tmp_path: Path) -> Iterator[Served]:
    yield from served(tmp_path)
