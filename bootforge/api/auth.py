"""HTTP basic authentication against an htpasswd file of bcrypt hashes (Ironic's standalone mode).

bcrypt is deliberately slow (tens of milliseconds per check), so a verified (user, password) pair is
remembered, keyed by a SHA-256 of the pair, until the file changes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import bcrypt

from bootforge.errors import NotAuthorized


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._users: dict[str, bytes] = {}
        self._verified: set[bytes] = set()

    def _reload(self) -> None:
        mtime = os.stat(self.path).st_mtime
        if mtime == self._mtime:
            return
        users: dict[str, bytes] = {}
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            user, _, digest = line.partition(":")
            if digest.startswith(("$2y$", "$2b$", "$2a$")):
                # htpasswd -B writes $2y$, which the bcrypt library reads as $2b$.
                users[user] = b"$2b$" + digest[4:].encode()
        self._users, self._verified, self._mtime = users, set(), mtime

    def check(self, authorization: str | None) -> str:
        """The user name for a valid `Authorization: Basic ...` header; NotAuthorized otherwise."""
        if not authorization or not authorization.lower().startswith("basic "):
            raise NotAuthorized("Authentication required: use HTTP basic authentication.")
        try:
            user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise NotAuthorized("Malformed HTTP basic authorization header.") from None
        self._reload()
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if key in self._verified:
            return user
        digest = self._users.get(user)
        if digest is None or not bcrypt.checkpw(password.encode(), digest):
            raise NotAuthorized("Invalid user name or password.")
        self._verified.add(key)
        return user
