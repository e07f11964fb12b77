"""Per-boot agent tokens: what a node's boot configuration carries and a stranger's lookup lacks.

A ramdisk boot of a node has an id (driver_internal_info["agent_boot"], new at every boot). Its boot
token is HMAC-SHA256 over the node's UUID and that id, under the "agent-boot-token" subkey of the
conductor's secret key (bootforge/keys.py). Nothing is stored: the conductor that renders the boot
script (or builds the virtual-media ISO) and the conductor that answers the lookup compute the same
value from the key file, which every conductor of a fleet shares. A token is worth one boot of one
node: the next boot has a new id, and so a new token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from pathlib import Path

from bootforge.keys import SecretKey, load_or_create

PURPOSE = "agent-boot-token"
# The kernel parameter (bootforge/agent/cmdline.py reads the same name) and the lookup's header.
KERNEL_ARG = "boot_token"  # rendered as bootforge.boot_token=
HEADER = "X-Agent-Boot-Token"
# Anything longer than a hex SHA-256 is no token; compared only after this cheap check.
TOKEN_CHARS = 64


def derive(key: SecretKey, node_uuid: str, boot_id: str) -> str:
    """The token of `node_uuid`'s ramdisk boot `boot_id`: 64 hex digits (safe on a kernel command line)."""
    message = f"{node_uuid}\n{boot_id}".encode()
    return hmac.new(key.derive(PURPOSE), message, hashlib.sha256).hexdigest()


@functools.cache
def _key(path: Path) -> SecretKey:
    # Read once per process: the file is created once and never rotated while a conductor runs.
    return load_or_create(path)


def for_boot(key_path: Path, node_uuid: str, boot_id: str) -> str:
    """The token under the key in `key_path` (created on first use, see keys.load_or_create)."""
    return derive(_key(key_path), node_uuid, boot_id)


def matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    if given is None or len(given) != TOKEN_CHARS:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
