"""`lab up --ipv6` parts: the serve config it writes (loaded by the real Settings), the VM definition,
the router advertisement's layout."""

from __future__ import annotations

import tomllib
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from bootforge.config import Settings
from bootforge.lab import lab as lab_mod
from bootforge.lab.lab import LabError, LabState, VmRecord
from bootforge.lab.ra import advertisement


def test_serve_config_is_ipv6_only_and_valid(tmp_path: Path) -> None:
    state = LabState(str(tmp_path), "bflab-1-0-", ipv6=True)
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "htpasswd").write_text("lab:x\n")
    raw = tomllib.loads(lab_mod.serve_config(state, tmp_path / "boot"))
    settings = Settings.model_validate(raw)
    nb = settings.netboot
    assert (nb.dhcp, nb.dhcp6, nb.address6) == ("off", "full", "fd77::1")
    assert settings.public_url == "http://[fd77::1]:6385" == nb.public_url6
    assert settings.listen_host_port == ("fd77::1", 6385)
    assert state.api_in_lab == "http://[fd77::1]:6385"


def test_ipv4_lab_config_has_no_ipv6(tmp_path: Path) -> None:
    text = lab_mod.serve_config(LabState(str(tmp_path), "bflab-1-0-"), tmp_path / "boot")
    assert "dhcp6" not in text and 'dhcp = "full"' in text


def test_uefi_vm_in_an_ipv6_lab_skips_pxe_over_ipv4(tmp_path: Path) -> None:
    rec = VmRecord("vm1", "uefi", "52:54:00:77:00:01", "tap0", str(tmp_path))
    v6 = lab_mod.vm_definition(rec, 512, "ns", ipv6=True)["extra_args"]
    assert "name=opt/org.tianocore/IPv4PXESupport,string=no" in v6
    assert "name=opt/org.tianocore/IPv6PXESupport,string=no" not in v6
    assert lab_mod.vm_definition(rec, 512, "ns")["extra_args"] == []


def test_ipv6_lab_refuses_what_it_cannot_boot(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="--ipv6"):
        lab_mod.Lab.up(tmp_path / "lab", 1, "uefi", dhcp="off", ipv6=True)
    with pytest.raises(LabError, match="Secure Boot"):
        lab_mod.Lab.up(tmp_path / "lab", 1, "uefi-sb", ipv6=True)
    assert not (tmp_path / "lab").exists()


def test_router_advertisement_layout() -> None:
    """Offsets from RFC 4861 4.2 and 4.6.2 (the lab tests show the kernel and OVMF act on it)."""
    mac = bytes.fromhex("020000770001")
    packet = advertisement(mac, IPv6Network("fd77::/64"))
    assert packet[0] == 134 and packet[5] == 0xC0  # type; M and O set
    assert packet[6:8] == b"\x00\x00"  # router lifetime 0: not a default router
    assert packet[16:24] == b"\x01\x01" + mac  # source link-layer address option
    prefix = packet[24:]
    assert (prefix[0], prefix[1], prefix[2], prefix[3]) == (3, 4, 64, 0xC0)  # on-link, autonomous
    assert prefix[16:32] == bytes.fromhex("fd770000000000000000000000000000")
    quiet = advertisement(mac)
    assert quiet[5] == 0 and len(quiet) == 24  # no flags, no prefix
