"""What several agent tests share: a clock they control, skips for missing tools, a loop device."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class FakeTime:
    """sleep() and clock() for code that takes them as parameters: sleeps are recorded, not slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def needs(program: str, package: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"needs {program} (Debian package {package})")


@contextmanager
def attached_loop(backing: Path) -> Iterator[Path]:
    """`backing` as a loop device with partition scanning on, detached at the end; skips without root."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a loop device")
    needs("losetup", "mount")
    made = subprocess.run(["losetup", "-f", "-P", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"needs a free loop device (losetup: {made.stderr.strip()})")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)
