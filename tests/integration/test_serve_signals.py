"""`bootforge serve` stopped by SIGTERM (systemd's stop, a container's) or SIGINT shuts down cleanly:
work in flight gets its grace period and the conductor marks itself offline, so other conductors and
`bootforge secrets rotate` need not wait for its heartbeat to age."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from support.service import served


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_runs_the_conductors_shutdown(tmp_path: Path, sig: signal.Signals) -> None:
    gen = served(tmp_path)
    server = next(gen)
    try:
        db = server.state_dir / "bootforge.sqlite"
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT online FROM conductors").fetchall() == [(1,)]
        assert server.proc is not None
        server.proc.send_signal(sig)
        code = server.proc.wait(30)
        # A process killed by its signal's default action reports -signal: shutdown never ran.
        assert code == 0, f"serve exited {code}: {server.log.read_text()[-2000:] if server.log else ''}"
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT online FROM conductors").fetchall() == [(0,)]
    finally:
        gen.close()
