"""Kernel command line parsing, BOOTIF spellings, the MACs lookup sends, and the CLI's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootforge.agent.__main__ import settings_from
from bootforge.agent.cmdline import (
    boot_mac,
    interface_macs,
    normalise_mac,
    parse,
    read,
    read_under,
)

NODE = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"


def test_parse_splits_words_and_values() -> None:
    text = "BOOT_IMAGE=/vmlinuz console=ttyS0,115200n8 quiet bootforge.api=http://10.77.0.1:6385"
    text += f" bootforge.node={NODE}\n"
    assert parse(text) == {
        "BOOT_IMAGE": "/vmlinuz",
        "console": "ttyS0,115200n8",
        "quiet": "",
        "bootforge.api": "http://10.77.0.1:6385",
        "bootforge.node": NODE,
    }


def test_parse_keeps_quoted_spaces_and_equals_in_values() -> None:
    assert parse('a="x y  z" b=c=d "e=f g"') == {"a": "x y  z", "b": "c=d", "e": "f g"}


def test_parse_later_word_wins_and_blank_input_is_empty() -> None:
    assert parse("console=tty0 console=ttyS0") == {"console": "ttyS0"}
    assert parse("  \n\t ") == {}
    assert parse('=x ""') == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("01-52-54-00-AB-cd-EF", "52:54:00:ab:cd:ef"),  # PXELINUX / iPXE: ARP type 01 first
        ("52:54:00:ab:cd:ef", "52:54:00:ab:cd:ef"),
        ("52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef"),
        (" 52:54:00:ab:cd:ef\n", "52:54:00:ab:cd:ef"),
        ("02-52-54-00-ab-cd-ef", None),  # 7 groups but not Ethernet
        ("52:54:00:ab:cd", None),
        ("52:54:00:ab:cd:eg", None),
        ("5254:00:ab:cd:ef:00", None),
        ("", None),
    ],
)
def test_normalise_mac(value: str, expected: str | None) -> None:
    assert normalise_mac(value) == expected


def test_boot_mac_reads_bootif() -> None:
    assert boot_mac(parse("BOOTIF=01-52-54-00-12-34-56")) == "52:54:00:12:34:56"
    assert boot_mac(parse("BOOTIF=garbage")) is None
    assert boot_mac({}) is None


def test_read_missing_file_is_empty(tmp_path: Path) -> None:
    assert read(str(tmp_path / "nope")) == {}
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cmdline").write_text("x=1 y\n")
    assert read_under(str(tmp_path)) == {"x": "1", "y": ""}


def _nic(root: Path, name: str, mac: str | None) -> None:
    d = root / "sys" / "class" / "net" / name
    d.mkdir(parents=True)
    if mac is not None:
        (d / "address").write_text(mac + "\n")


def test_interface_macs_skip_lo_zero_and_missing(tmp_path: Path) -> None:
    _nic(tmp_path, "lo", "00:00:00:00:00:00")
    _nic(tmp_path, "eth1", "52:54:00:00:00:02")
    _nic(tmp_path, "eth0", "52:54:00:00:00:01")
    _nic(tmp_path, "tun0", None)
    _nic(tmp_path, "dummy0", "00:00:00:00:00:00")
    _nic(tmp_path, "eno1", "AA:BB:CC:DD:EE:FF")
    assert interface_macs(str(tmp_path)) == ["aa:bb:cc:dd:ee:ff", "52:54:00:00:00:01", "52:54:00:00:00:02"]
    assert interface_macs(str(tmp_path / "absent")) == []


def _root_with_cmdline(tmp_path: Path, text: str) -> str:
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc" / "cmdline").write_text(text)
    return str(tmp_path)


def test_settings_come_from_the_command_line_with_bootif_first(tmp_path: Path) -> None:
    root = _root_with_cmdline(
        tmp_path, f"bootforge.api=http://10.77.0.1:6385 bootforge.node={NODE} BOOTIF=01-52-54-00-00-00-02\n"
    )
    _nic(tmp_path, "eth0", "52:54:00:00:00:01")
    _nic(tmp_path, "eth1", "52:54:00:00:00:02")
    settings, params = settings_from(["--sys-root", root])
    assert settings.api == "http://10.77.0.1:6385"
    assert settings.node == NODE
    assert settings.macs == ["52:54:00:00:00:02", "52:54:00:00:00:01"]
    assert settings.disks is None and not settings.once
    assert params["BOOTIF"] == "01-52-54-00-00-00-02"


def test_options_override_the_command_line(tmp_path: Path) -> None:
    root = _root_with_cmdline(
        tmp_path, "bootforge.api=http://a:1 bootforge.node=old BOOTIF=01-52-54-00-00-00-02"
    )
    argv = ["--sys-root", root, "--api", "http://b:2", "--node", NODE, "--mac", "AA-BB-CC-DD-EE-FF"]
    settings, params = settings_from([*argv, "--disk", "/tmp/d1", "--disk", "/tmp/d2", "--once"])
    assert (settings.api, settings.node, settings.macs) == ("http://b:2", NODE, ["aa:bb:cc:dd:ee:ff"])
    assert settings.disks == ["/tmp/d1", "/tmp/d2"] and settings.once
    # Commands see the effective values (inspect reports BOOTIF as the PXE interface).
    assert params["bootforge.api"] == "http://b:2" and params["BOOTIF"] == "aa:bb:cc:dd:ee:ff"


def test_settings_refuse_without_api_or_anything_to_look_up_by(tmp_path: Path) -> None:
    root = _root_with_cmdline(tmp_path, "quiet")
    with pytest.raises(SystemExit, match="no API URL"):
        settings_from(["--sys-root", root])
    with pytest.raises(SystemExit, match="nothing to look the node up by"):
        settings_from(["--sys-root", root, "--api", "http://x:1"])
    with pytest.raises(SystemExit):
        settings_from(["--sys-root", root, "--api", "http://x:1", "--mac", "nope"])


def test_the_boot_token_and_the_ca_bundle_come_from_the_ramdisk(tmp_path: Path) -> None:
    token = "ab" * 32
    root = _root_with_cmdline(tmp_path, f"bootforge.api=https://10.77.0.1:6385 bootforge.boot_token={token}")
    _nic(tmp_path, "eth0", "52:54:00:00:00:01")
    settings, _ = settings_from(["--sys-root", root])
    assert settings.boot_token == token and settings.cafile is None
    # `bootforge ramdisk build --ca-bundle` puts the bundle at etc/bootforge/ca.pem.
    (tmp_path / "etc" / "bootforge").mkdir(parents=True)
    (tmp_path / "etc" / "bootforge" / "ca.pem").write_text("pem")
    settings, _ = settings_from(["--sys-root", root])
    assert settings.cafile == str(tmp_path / "etc" / "bootforge" / "ca.pem")
    settings, _ = settings_from(["--sys-root", root, "--boot-token", "cd" * 32, "--ca-file", "/x.pem"])
    assert (settings.boot_token, settings.cafile) == ("cd" * 32, "/x.pem")
