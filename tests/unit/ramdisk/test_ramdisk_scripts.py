"""The ramdisk's shell scripts parse, and the udhcpc hook configures what a lease says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bootforge.ramdisk.scripts import INIT, UDHCPC_SCRIPT


@pytest.mark.parametrize("script", [INIT, UDHCPC_SCRIPT], ids=["init", "udhcpc"])
def test_scripts_parse(script: str, tmp_path: Path) -> None:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("needs a POSIX sh")
    path = tmp_path / "script"
    path.write_text(script)
    proc = subprocess.run([sh, "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_udhcpc_hook_sets_address_route_and_resolver(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("needs a POSIX sh")
    log = tmp_path / "ip.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(f'#!/bin/sh\necho "ip $*" >> {log}\n')
    (bin_dir / "ip").chmod(0o755)
    # The hook writes /etc/resolv.conf and /run/ipv4: run a copy that writes under tmp_path instead.
    hook = UDHCPC_SCRIPT.replace("/etc/resolv.conf", str(tmp_path / "resolv.conf"))
    hook = hook.replace("/run/ipv4", str(tmp_path / "ipv4"))
    (tmp_path / "hook").write_text(hook)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "interface": "eth0", "ip": "10.0.2.15", "mask": "24",
        "router": "10.0.2.2 10.0.2.3", "dns": "10.0.2.3 10.0.2.4", "domain": "lab",
    }  # fmt: skip
    subprocess.run([sh, str(tmp_path / "hook"), "bound"], env=env, check=True)
    assert log.read_text().splitlines() == [
        "ip -4 addr flush dev eth0",
        "ip addr add 10.0.2.15/24 dev eth0",
        "ip route replace default via 10.0.2.2 dev eth0",
    ]
    assert (tmp_path / "resolv.conf").read_text() == "search lab\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n"
    # A renewal of the same lease leaves the interface alone.
    subprocess.run([sh, str(tmp_path / "hook"), "renew"], env=env, check=True)
    assert len(log.read_text().splitlines()) == 3
