"""A real `bootforge serve` over HTTPS on loopback, with a certificate made by `cryptography`.

The certificate (bootforge.lab.redfish_bmc.make_tls: self-signed, its own CA) names the address the
agent connects to, which is 127.0.0.1 for an agent on the host and QEMU's guestfwd address for one
in a VM. The fake-hardware node's netboot HTTP server runs too: its boot script carries the token.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bootforge import boot_token

from .service import BOOTFORGE, LATEST, free_port


@dataclass
class TlsServe:
    url: str  # where the host reaches it: https://127.0.0.1:PORT
    port: int
    ca: Path
    state_dir: Path
    http_port: int
    cert_address: str

    def client(self) -> httpx.Client:
        """An API client for the test itself. It checks the chain; not the name when the certificate
        names a VM's view of the API (the agent checks both)."""
        context = ssl.create_default_context(cafile=self.ca)
        context.check_hostname = self.cert_address == "127.0.0.1"
        return httpx.Client(base_url=self.url, headers=LATEST, verify=context, timeout=30)


@contextmanager
def tls_serve(tmp_path: Path, cert_address: str = "127.0.0.1", public_url: str = "") -> Iterator[TlsServe]:
    pytest.importorskip("cryptography", reason="needs the cryptography package for the test CA")
    from bootforge.lab.redfish_bmc import make_tls

    cert, key = make_tls(tmp_path / "tls", cert_address)
    boot = tmp_path / "state" / "boot" / "bootforge"
    boot.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initrd"):
        if not (boot / name).exists():  # the pxe boot interface checks that a ramdisk exists
            (boot / name).write_bytes(b"not booted from here")
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
    if public_url:
        env["BOOTFORGE_PUBLIC_URL"] = public_url
    state = tmp_path / "state"
    argv = [BOOTFORGE, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"]
    served = TlsServe(f"https://127.0.0.1:{port}", port, cert, state, http_port, cert_address)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        with served.client() as c:
            while True:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    if c.get("/").status_code == 200:
                        break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, log.read_text()[-2000:]
                    time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def boot_script_token(served: TlsServe, mac: str, want: str, timeout: float = 20.0) -> str:
    """The node's iPXE script once it carries the boot token `want` (the netboot view reads the
    new boot id within its refresh)."""
    url = f"http://127.0.0.1:{served.http_port}/boot/ipxe?mac={mac}"
    deadline = time.monotonic() + timeout
    while f"bootforge.boot_token={want}" not in (script := httpx.get(url, timeout=10).text):
        assert time.monotonic() < deadline, script
        time.sleep(0.2)
    return script


def wait_state(c: httpx.Client, node: str, want: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        n = c.get(f"/v1/nodes/{node}").json()
        if n["provision_state"] == want and n["reservation"] is None:
            return dict(n)
        assert time.monotonic() < deadline, f"node is {n['provision_state']}: {n['last_error']}"
        time.sleep(0.2)


def inspect_until_script(c: httpx.Client, served: TlsServe, mac: str) -> tuple[str, str, str]:
    """Enrol a fake-hardware node booting `pxe` with port `mac`, start its inspection, and wait for
    `inspect wait` and for the boot script that carries this boot's token: (node, token, script)."""
    body = {"driver": "fake-hardware", "boot_interface": "pxe", "inspect_interface": "agent"}
    node = str(c.post("/v1/nodes", json=body).json()["uuid"])
    assert c.post("/v1/ports", json={"node_uuid": node, "address": mac}).status_code == 201
    for target in ("manage", "inspect"):
        assert c.put(f"/v1/nodes/{node}/states/provision", json={"target": target}).status_code == 202
    internal = wait_state(c, node, "inspect wait")["driver_internal_info"]
    assert isinstance(internal, dict)
    want = boot_token.for_boot(served.state_dir / "secret.key", node, internal["agent_boot"])
    return node, want, boot_script_token(served, mac, want)
