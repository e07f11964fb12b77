"""The conductor's secret key: one file of random bytes from which every purpose gets its own key.

Secrets at rest (BMC passwords in driver_info) and per-boot agent tokens both need a key that is
not in the database: a copy of the SQLite file, or read access to PostgreSQL, must not be enough
to read a password or forge an agent token. One file keeps the operator's job simple (back it up
beside the database; give every conductor of a PostgreSQL fleet the same file); each purpose
derives its own subkey so that, say, a leaked agent-token key says nothing about the encryption key.

The file is created on first use (32 random bytes, mode 0600, written atomically so that two
conductors starting at once on a shared directory end up with one key, not two).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 32
KEY_FILE_NAME = "secret.key"


class KeyFileError(Exception):
    """The key file exists but cannot be used (wrong size, unreadable, too open)."""


class SecretKey:
    """A master key and the purpose-bound subkeys derived from it (HMAC-SHA256 as the KDF)."""

    def __init__(self, master: bytes, source: str = "memory") -> None:
        if len(master) != KEY_BYTES:
            raise KeyFileError(f"{source}: a secret key is {KEY_BYTES} bytes, this one is {len(master)}")
        self._master = master
        self.source = source

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose ("driver-info-encryption", "agent-boot-token", ...)."""
        return hmac.new(self._master, b"bootforge:" + purpose.encode(), hashlib.sha256).digest()

    def fingerprint(self) -> str:
        """A short, non-secret name of this key, to tell whether two conductors share one."""
        return self.derive("fingerprint").hex()[:16]

    def __repr__(self) -> str:  # never the bytes, even in a traceback's locals
        return f"SecretKey(source={self.source!r}, fingerprint={self.fingerprint()})"

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(KEY_BYTES))


def load_or_create(path: Path) -> SecretKey:
    """The key in `path`, created (0600, parent 0700) if the file does not exist yet."""
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if another process created the key meanwhile: theirs wins, ours is dropped.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _load(path)


def _load(path: Path) -> SecretKey:
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        data = f.read(KEY_BYTES + 1)
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"{path} holds {len(data)} bytes, a bootforge key is {KEY_BYTES}")
    return SecretKey(data, str(path))
