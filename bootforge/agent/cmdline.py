"""What the agent knows about itself at start: the kernel command line and its NICs' MACs.

bootforge's iPXE script boots the ramdisk with ``bootforge.api=URL bootforge.node=UUID
bootforge.boot_token=HEX BOOTIF=MAC``; lookup sends BOOTIF and every other MAC of the machine, and the
boot token, which proves to the conductor that the caller is the machine it handed this boot to.
This module is on the path to the first lookup call, so it imports nothing heavy.
"""

from __future__ import annotations

import os

API = "bootforge.api"
NODE = "bootforge.node"
BOOT_TOKEN = "bootforge.boot_token"
# The CA bundle `bootforge ramdisk build --ca-bundle` puts into the initrd: an https bootforge.api
# is verified against it.
CA_BUNDLE = "etc/bootforge/ca.pem"
BOOTIF = "BOOTIF"

_HEX = frozenset("0123456789abcdef")


def parse(text: str) -> dict[str, str]:
    """Split a kernel command line into {name: value}; a bare word maps to "".

    Follows the kernel's own rule: words are split on whitespace, and double quotes group a value
    with spaces (``name="a b"``); the quotes are dropped. A later word wins over an earlier one.
    """
    params: dict[str, str] = {}
    for word in _words(text):
        name, sep, value = word.partition("=")
        if name:
            params[name] = value if sep else ""
    return params


def _words(text: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    return words


def read(path: str = "/proc/cmdline") -> dict[str, str]:
    """Parse the command line at ``path``; a missing or unreadable file is an empty command line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse(f.read())
    except OSError:
        return {}


def read_under(root: str) -> dict[str, str]:
    """The command line of the machine whose /proc is under ``root`` (a fake tree in tests)."""
    return read(os.path.join(root, "proc", "cmdline"))


def normalise_mac(value: str) -> str | None:
    """``aa:bb:cc:dd:ee:ff`` from any of the spellings a boot loader passes; None if it is no MAC.

    PXELINUX and iPXE pass ``BOOTIF=01-aa-bb-cc-dd-ee-ff``: the leading ``01`` is the ARP hardware
    type (Ethernet), not part of the address. Colons or dashes, either case, are accepted.
    """
    parts = value.strip().lower().replace("-", ":").split(":")
    if len(parts) == 7 and parts[0] == "01":
        parts = parts[1:]
    if len(parts) != 6 or any(len(p) != 2 or not set(p) <= _HEX for p in parts):
        return None
    return ":".join(parts)


def boot_mac(params: dict[str, str]) -> str | None:
    """The MAC the machine booted from (BOOTIF), normalised, or None."""
    return normalise_mac(params.get(BOOTIF, ""))


def interface_names(root: str) -> list[str]:
    """Network interfaces under ``root``/sys/class/net, sorted, without lo."""
    try:
        return sorted(n for n in os.listdir(os.path.join(root, "sys", "class", "net")) if n != "lo")
    except OSError:
        return []


def interface_macs(root: str) -> list[str]:
    """Every interface's MAC (lower case), leaving out lo and interfaces with no or an all-zero MAC."""
    macs = []
    for name in interface_names(root):
        try:
            with open(os.path.join(root, "sys", "class", "net", name, "address")) as f:
                mac = f.read().strip().lower()
        except OSError:
            continue
        if mac.strip("0:"):
            macs.append(mac)
    return macs
