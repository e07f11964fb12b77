"""Fixtures the agent's disk-writing tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_fakes import ImageServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ImageServer]:
    """An ImageServer on 127.0.0.1 serving tmp_path/served, stopped at the end."""
    root = tmp_path / "served"
    root.mkdir()
    srv = ImageServer(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
