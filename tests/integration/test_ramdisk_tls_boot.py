"""The deploy ramdisk in QEMU inspects its node through a real `bootforge serve` over HTTPS (#11 finding 2).

`bootforge ramdisk build --ca-bundle` puts the test CA (made by `cryptography`) into the initrd; the
VM boots it directly (-kernel/-initrd/-append) with the command line bootforge's boot script gives
the node (bootforge.api=https://..., the node, this boot's token, BOOTIF). User-mode networking in
restrict mode: the guest reaches only 10.0.2.100:6385, which QEMU relays to the serve on 127.0.0.1
(support.guestfwd); the certificate names 10.0.2.100, the address the agent connects to. The relay
copies bytes, so TLS runs from the agent in the VM to bootforge's API.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.guestfwd import guest_forward
from support.tls_serve import inspect_until_script, tls_serve, wait_state

from bootforge.drivers.qemu_machine import detect_accel
from bootforge.ramdisk import DEFAULT_CACHE, RamdiskError, build
from bootforge.ramdisk.builder import AGENT_DIR

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU = "qemu-system-x86_64"
MAC = "52:54:00:b0:07:51"
GUEST_API = "https://10.0.2.100:6385"
TIMEOUT = 180.0  # TCG on a busy 2-core machine: generous, never a measurement


@pytest.mark.parametrize("with_ca", [True, False], ids=["ca-in-initrd", "no-ca"])
def test_the_ramdisk_agent_inspects_over_https_against_the_ca_in_its_initrd(
    tmp_path: Path, with_ca: bool
) -> None:
    """Without the CA bundle the agent cannot verify the API and sends nothing: the node keeps waiting."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU} (Debian: qemu-system-x86)")
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get to download the ramdisk's Debian packages")
    agent_copy = tmp_path / "agent"
    shutil.copytree(AGENT_DIR, agent_copy, ignore=shutil.ignore_patterns("__pycache__"))
    with tls_serve(tmp_path, cert_address="10.0.2.100", public_url=GUEST_API) as served, served.client() as c:
        try:
            ca = served.ca if with_ca else None
            built = build(tmp_path / "boot", DEFAULT_CACHE, agent_dir=agent_copy, ca_bundle=ca)
        except RamdiskError as e:
            if "apt" in str(e):
                pytest.skip(f"needs apt downloads of Debian packages: {e}")
            raise
        print(f"\nramdisk ({'with' if with_ca else 'without'} the CA bundle) built in {built.seconds:.1f} s")
        node, want, script = inspect_until_script(c, served, MAC)
        # The kernel arguments bootforge's script gives this node, as iPXE would pass them.
        line = next(ln for ln in script.splitlines() if ln.startswith("kernel "))
        words = [w for w in line.split() if w.startswith(("bootforge.", "BOOTIF="))]
        assert f"bootforge.api={GUEST_API}" in words and f"bootforge.boot_token={want}" in words
        argv = [
            QEMU, "-machine", "q35", "-accel", detect_accel(), "-smp", "1", "-m", "768",
            "-nodefaults", "-display", "none", "-vga", "none", "-serial", "stdio",
            "-kernel", str(built.kernel), "-initrd", str(built.initrd),
            "-append", " ".join(["console=ttyS0", *words]),
            "-netdev", f"user,id=n0,restrict=on,{guest_forward(tmp_path, served.port)}",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        ]  # fmt: skip
        lines: list[str] = []
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        reader = threading.Thread(
            target=lambda: lines.extend(
                r.decode(errors="replace").rstrip() for r in iter(proc.stdout.readline, b"")
            ),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        try:
            if not with_ca:
                deadline = time.monotonic() + TIMEOUT
                while not any("CERTIFICATE_VERIFY_FAILED" in ln for ln in lines):
                    assert time.monotonic() < deadline, "\n".join(lines[-60:])
                    time.sleep(0.2)
                history = [e["event"] for e in c.get(f"/v1/nodes/{node}/history").json()["history"]]
                assert not any("agent lookup" in e or "agent looked up" in e for e in history), history
                assert c.get(f"/v1/nodes/{node}").json()["provision_state"] == "inspect wait"
                return
            inspected = wait_state(c, node, "manageable", TIMEOUT)
            print(f"QEMU start -> inspected over HTTPS: {time.monotonic() - t0:.1f} s ({detect_accel()})")
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + "\n".join(lines[-60:])) from None
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # QEMU and the relays it started, by process group
            proc.wait()
            reader.join(10)
            proc.stdout.close()
        assert inspected["properties"]["memory_mb"] == 768, inspected  # type: ignore[index]
        history = [e["event"] for e in c.get(f"/v1/nodes/{node}/history").json()["history"]]
        assert any(e.startswith("agent looked up from ") for e in history), history
