"""The agent channel over HTTPS on loopback (#11 finding 2): a real `bootforge serve` with a certificate,
the real agent process verifying it against a CA bundle, the boot token taken from the boot script.

The certificate is made with the `cryptography` package (support.tls_serve). A client holding
another CA is refused at the handshake, before a byte of the lookup (and its boot token) is sent.
The same over a VM: tests/integration/test_ramdisk_tls_boot.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.tls_serve import inspect_until_script, tls_serve, wait_state

from bootforge.agent.client import Client, TransportError
from bootforge.lab.redfish_bmc import make_tls

MAC = "52:54:00:12:34:77"


def test_the_agent_inspects_over_https_verifying_the_api_against_its_ca(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * 1024**2)
    with tls_serve(tmp_path) as served, served.client() as c:
        # What the machine's iPXE gets: the API as https (public_url follows the TLS setting) and
        # this boot's token.
        node, want, script = inspect_until_script(c, served, MAC)
        assert f"bootforge.api={served.url}" in script

        # A client that trusts another CA is refused at the handshake: no lookup, no token sent.
        other, _ = make_tls(tmp_path / "other", "127.0.0.1")
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            Client(served.url, cafile=str(other)).lookup([MAC], node, want)

        argv = [sys.executable, "-m", "bootforge.agent", "--api", served.url, "--node", node]
        argv += ["--mac", MAC, "--boot-token", want, "--ca-file", str(served.ca), "--disk", str(disk)]
        agent = subprocess.run([*argv, "--once"], capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, agent.stdout[-3000:] + agent.stderr[-3000:]
        inspected = wait_state(c, node, "manageable")
        assert inspected["properties"]["cpus"] == os.cpu_count(), inspected  # type: ignore[index]
        history = [e["event"] for e in c.get(f"/v1/nodes/{node}/history").json()["history"]]
        assert any("agent looked up from 127.0.0.1" in e for e in history), history
