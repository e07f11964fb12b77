"""The network-boot side of discovery: which unknown machine gets the ramdisk, with what token.

A discovery boot's script carries `bootforge.discovery=<boot id>` and `bootforge.boot_token=<token>`:
the token is HMAC-SHA256 under the "discovery-boot-token" subkey of the conductor's key over the MAC and
the boot id (issue time + 64 random bits), so any conductor of the fleet verifies it and nothing is
stored. The agent sees `bootforge.discovery=` and inspects, reports and powers the machine off instead
of looking a node up (bootforge/agent/discover.py). Known nodes never get one (bootforge/boot_token.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from bootforge.conductor.discovery_settings import DiscoverySettings
from bootforge.keys import SecretKey, load_or_create
from bootforge.netboot.boot import scripts

PURPOSE = "discovery-boot-token"
KERNEL_ARG = "bootforge.discovery"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def new_boot_id(now: float | None = None) -> str:
    return f"{int(now if now is not None else time.time()):010d}.{secrets.token_hex(8)}"


def token_for(key: SecretKey, mac: str, boot_id: str) -> str:
    return hmac.new(key.derive(PURPOSE), f"{mac}\n{boot_id}".encode(), hashlib.sha256).hexdigest()


@functools.cache
def _key(path: Path) -> SecretKey:
    return load_or_create(path)


@dataclass(frozen=True)
class DiscoveryOffer:
    """Discovery as the netboot view needs it: the settings and the key file tokens derive from."""

    settings: DiscoverySettings
    key_path: Path

    def allows(self, address: str | None) -> bool:
        return self.settings.allows(address)

    def kernel_args(self, api_url: str, mac: str, extra: tuple[str, ...]) -> scripts.KernelArgs:
        boot_id = new_boot_id()
        token = token_for(_key(self.key_path), mac, boot_id)
        args: list[tuple[str, str | None]] = [
            ("bootforge.api", api_url),
            (KERNEL_ARG, boot_id),
            ("bootforge.boot_token", token),
            ("BOOTIF", mac),
        ]
        for word in extra:
            key, sep, value = word.partition("=")
            args.append((key, value if sep else None))
        return tuple(args)
