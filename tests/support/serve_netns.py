"""`bootforge serve` run inside a test's server namespace, and its API reached from there."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from support.netns import Lan

BOOTFORGE = str(Path(sys.executable).parent / "bootforge")


def api(lan: Lan, method: str, path: str, body: Any = None) -> Any:
    """Talk to the API inside the server namespace (its loopback is not the host's)."""
    argv = ["curl", "-sS", "-X", method, "-H", "X-OpenStack-Ironic-API-Version: 1.78",
            "-H", "Content-Type: application/json", f"http://127.0.0.1:6385{path}"]  # fmt: skip
    if body is not None:
        argv += ["-d", json.dumps(body)]
    out = lan.server.ns.run(argv, check=True, timeout=20).stdout
    return json.loads(out) if out.strip() else None


@contextmanager
def serve_in(lan: Lan, config: Path, log: Path, ready_tries: int = 200) -> Iterator[None]:
    """Run `bootforge serve --config CONFIG` in the server namespace until the API answers; stop it
    (by PID) on exit, whatever happened."""
    with log.open("w") as out:
        proc = lan.server.ns.popen([BOOTFORGE, "serve", "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for _ in range(ready_tries):
            if proc.poll() is not None:
                pytest.fail(f"bootforge serve exited: {log.read_text()[-3000:]}")
            if lan.server.ns.run(["curl", "-sf", "http://127.0.0.1:6385/"], check=False).returncode == 0:
                break
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
