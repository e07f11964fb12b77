"""`lab up --dhcp proxy`: the site dnsmasq's configuration (dnsmasq itself checks its syntax), and
the firmware matrix's proxy mode running the signed chains beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootforge.lab import lab as lab_mod
from bootforge.lab.lab import LabState

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import firmware_matrix as fm  # bench/, found through the path above


def _lines(tmp_path: Path) -> list[str]:
    return lab_mod.dnsmasq_config(LabState(str(tmp_path), "bflab-1-0-", dhcp="proxy")).splitlines()


def test_site_dnsmasq_names_bootforge_as_next_server_and_no_boot_file(tmp_path: Path) -> None:
    lines = _lines(tmp_path)
    boot = [line for line in lines if line.startswith("dhcp-boot=")]
    # Empty file and server name: only siaddr is set, so the site's offer stays a plain one that
    # firmware passes over for bootforge's proxy offer.
    assert boot == [f"dhcp-boot=,,{lab_mod.ADDRESS}"]
    assert not any(line.startswith(("dhcp-option", "pxe-", "enable-tftp")) for line in lines), lines
    assert "port=0" in lines  # no DNS server in the lab
    assert f"dhcp-leasefile={tmp_path / 'dnsmasq.leases'}" in lines


def test_dnsmasq_accepts_the_config(tmp_path: Path) -> None:
    dnsmasq = shutil.which("dnsmasq")
    if dnsmasq is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("\n".join(_lines(tmp_path)) + "\n")
    done = subprocess.run(
        [dnsmasq, "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=10, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "syntax check OK" in done.stderr + done.stdout


def test_matrix_runs_the_signed_chains_in_proxy_mode() -> None:
    """Proxy beside dnsmasq is no longer a skip for Secure Boot and arm64; over IPv6 it still is."""
    proxy4 = {fw.lab: fw.skip.get(("proxy", False)) for fw in fm.FIRMWARES}
    assert proxy4["uefi-sb"] is None and proxy4["arm64"] is None
    for fw in fm.FIRMWARES:
        if fw.lab in ("uefi-sb", "arm64"):
            assert fw.skip.get(("proxy", True)) and fw.skip.get(("full", True))
