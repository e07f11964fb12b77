"""Host tools a test needs: skip (saying which Debian package provides it) when one is missing."""

from __future__ import annotations

import shutil

import pytest


def need(binary: str, package: str) -> str:
    """The path of `binary`, or skip the test naming the Debian `package` that provides it."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"needs {binary} (Debian package {package})")
    return path
