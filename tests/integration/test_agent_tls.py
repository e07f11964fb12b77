"""The agent channel over HTTPS on loopback (#11 finding 2): a real `bootforge serve` with a certificate,
the real agent process verifying it against a CA bundle, the boot token taken from the boot script.

The certificate is made with the `cryptography` package (the lab BMC's make_tls: a self-signed
certificate for 127.0.0.1 that is its own CA). A client holding another CA is refused at the
handshake, before a byte of the lookup (and so of its boot token) is sent.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.service import BOOTFORGE, LATEST, free_port

from bootforge import boot_token
from bootforge.agent.client import Client, TransportError
from bootforge.lab.redfish_bmc import make_tls

MAC = "52:54:00:12:34:77"


@dataclass
class TlsServe:
    url: str
    ca: Path
    state_dir: Path
    http_port: int


@pytest.fixture
def tls_serve(tmp_path: Path) -> Iterator[TlsServe]:
    pytest.importorskip("cryptography", reason="needs the cryptography package for the test CA")
    cert, key = make_tls(tmp_path / "tls", "127.0.0.1")
    boot = tmp_path / "state" / "boot" / "bootforge"
    boot.mkdir(parents=True)
    (boot / "vmlinuz").write_bytes(b"not booted in this test")
    (boot / "initrd").write_bytes(b"not booted in this test")
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    env |= {
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": '["fake-hardware"]',
        "BOOTFORGE_TLS_CERT_FILE": str(cert),
        "BOOTFORGE_TLS_KEY_FILE": str(key),
        "BOOTFORGE_NETBOOT__ADDRESS": "127.0.0.1",
        "BOOTFORGE_NETBOOT__HTTP": "true",
        "BOOTFORGE_NETBOOT__HTTP_PORT": str(http_port),
        "BOOTFORGE_AGENT__LLDP_WAIT": "0",
        "BOOTFORGE_AGENT__POLL_TIMEOUT": "5",
    }
    state = tmp_path / "state"
    argv = [BOOTFORGE, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"]
    url = f"https://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if (
                    httpx.get(
                        url + "/", verify=ssl.create_default_context(cafile=cert), timeout=1
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
        yield TlsServe(url, cert, state, http_port)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_state(c: httpx.Client, node: str, want: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        n = c.get(f"/v1/nodes/{node}").json()
        if n["provision_state"] == want and n["reservation"] is None:
            return dict(n)
        assert time.monotonic() < deadline, f"node is {n['provision_state']}: {n['last_error']}"
        time.sleep(0.2)


def test_the_agent_inspects_over_https_verifying_the_api_against_its_ca(
    tls_serve: TlsServe, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * 1024**2)
    with httpx.Client(
        base_url=tls_serve.url,
        headers=LATEST,
        verify=ssl.create_default_context(cafile=tls_serve.ca),
        timeout=30,
    ) as c:
        body = {"driver": "fake-hardware", "boot_interface": "pxe", "inspect_interface": "agent"}
        node = c.post("/v1/nodes", json=body).json()["uuid"]
        assert c.post("/v1/ports", json={"node_uuid": node, "address": MAC}).status_code == 201
        for target in ("manage", "inspect"):
            assert c.put(f"/v1/nodes/{node}/states/provision", json={"target": target}).status_code == 202
        shown = wait_state(c, node, "inspect wait")
        internal = shown["driver_internal_info"]
        assert isinstance(internal, dict)
        want = boot_token.for_boot(tls_serve.state_dir / "secret.key", node, internal["agent_boot"])

        # What the machine's iPXE gets: the API as https (public_url follows the TLS setting) and
        # this boot's token. Fetched until the netboot view has read the boot id (its refresh).
        script_url = f"http://127.0.0.1:{tls_serve.http_port}/boot/ipxe?mac={MAC}"
        deadline = time.monotonic() + 20
        while f"bootforge.boot_token={want}" not in (script := httpx.get(script_url, timeout=10).text):
            assert time.monotonic() < deadline, script
            time.sleep(0.2)
        assert f"bootforge.api={tls_serve.url}" in script

        # A client that trusts another CA is refused at the handshake: no lookup, no token sent.
        other, _ = make_tls(tmp_path / "other", "127.0.0.1")
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            Client(tls_serve.url, cafile=str(other)).lookup([MAC], node, want)

        argv = [sys.executable, "-m", "bootforge.agent", "--api", tls_serve.url, "--node", node]
        argv += ["--mac", MAC, "--boot-token", want, "--ca-file", str(tls_serve.ca), "--disk", str(disk)]
        agent = subprocess.run([*argv, "--once"], capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, agent.stdout[-3000:] + agent.stderr[-3000:]
        inspected = wait_state(c, node, "manageable")
        assert inspected["properties"]["cpus"] == os.cpu_count(), inspected  # type: ignore[index]
        history = [e["event"] for e in c.get(f"/v1/nodes/{node}/history").json()["history"]]
        assert any("agent looked up from 127.0.0.1" in e for e in history), history
