"""HTTP basic authentication against an htpasswd file of bcrypt hashes (Ironic's standalone mode).

bcrypt is deliberately slow (tens of milliseconds per check) and the API shares its event loop with
DHCP, TFTP and the conductor, so:
- checks run on a small thread pool of their own, never on the loop, and never more than two at once;
- a verified (user, password) pair is remembered for a short while, under an HMAC of the pair keyed
  by a random per-process secret (the password itself is never kept), until the file changes;
- a client address with too many failed checks in a window is refused (429) without a check, by a
  table bounded in size, so guessing costs the guesser time and a stranger cannot grow the table.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt

from bootforge.errors import BootforgeError, Forbidden, NotAuthorized

CACHE_TTL = 30.0  # seconds a verified login is remembered
CACHE_SIZE = 1024  # verified logins remembered at once
MAX_FAILURES = 10  # failed checks per client address ...
FAILURE_WINDOW = 60.0  # ... in this many seconds before the address is refused until the window ends
MAX_CLIENTS = 4096  # client addresses the failure table tracks at once

# Shared by every Htpasswd: the bound is on CPU spent hashing, whichever file is checked.
_BCRYPT = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bootforge-bcrypt")


class TooManyFailures(BootforgeError):
    http_status = 429

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"Too many failed logins from this address; try again in {self.retry_after} s.")


class FailureLimiter:
    """Failed checks per client address in fixed windows, for at most `max_clients` addresses.

    The table is kept in window-start order, so expired windows sit at its front: making room drops
    those first and then the oldest window, which is the nearest to expiring anyway.
    """

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._table: dict[str, tuple[float, int]] = {}  # address -> (window start, failures)

    def __len__(self) -> int:
        return len(self._table)

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may be checked again; 0 when it may be now."""
        entry = self._table.get(client)
        if entry is None:
            return 0.0
        start, count = entry
        left = start + self.window - self._clock()
        return left if count >= self.max_failures and left > 0 else 0.0

    def failed(self, client: str) -> None:
        now = self._clock()
        entry = self._table.get(client)
        if entry is not None and now - entry[0] < self.window:
            self._table[client] = (entry[0], entry[1] + 1)
            return
        self._table.pop(client, None)
        while self._table:
            oldest, (start, _) = next(iter(self._table.items()))
            if now - start < self.window and len(self._table) < self.max_clients:
                break
            del self._table[oldest]
        self._table[client] = (now, 1)

    def forgive(self, client: str) -> None:
        """Take back one failure counted for a check that then succeeded."""
        entry = self._table.get(client)
        if entry is not None and entry[1] > 0:
            self._table[client] = (entry[0], entry[1] - 1)


class Htpasswd:
    def __init__(
        self,
        path: Path,
        *,
        cache_ttl: float = CACHE_TTL,
        cache_size: int = CACHE_SIZE,
        failures: FailureLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.failures = failures if failures is not None else FailureLimiter(clock=clock)
        self._clock = clock
        self._mtime = -1
        self._generation = 0
        self._users: dict[str, bytes] = {}
        self._verified: dict[bytes, float] = {}  # HMAC of user and password -> expiry
        self._secret = secrets.token_bytes(32)

    def _reload(self) -> None:
        mtime = os.stat(self.path).st_mtime_ns
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
        self._users, self._verified, self._mtime = users, {}, mtime
        self._generation += 1

    async def authenticate(self, authorization: str | None, client: str) -> str:
        """The user name for a valid `Authorization: Basic ...` header from `client` (its address).

        NotAuthorized for missing or wrong credentials, TooManyFailures while `client` is refused.
        """
        if not authorization or not authorization.lower().startswith("basic "):
            raise NotAuthorized("Authentication required: use HTTP basic authentication.")
        try:
            user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise NotAuthorized("Malformed HTTP basic authorization header.") from None
        self._reload()
        key = hmac.new(self._secret, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = self._clock()
        expiry = self._verified.get(key)
        if expiry is not None:
            if now < expiry:
                # Served even to a refused address: it costs no bcrypt check and the login is right.
                return user
            del self._verified[key]
        wait = self.failures.retry_after(client)
        if wait > 0:
            raise TooManyFailures(wait)
        digest = self._users.get(user)
        generation = self._generation
        # Counted as failed before the check, so a burst of concurrent guesses is limited too.
        self.failures.failed(client)
        ok = digest is not None and await asyncio.get_running_loop().run_in_executor(
            _BCRYPT, bcrypt.checkpw, password.encode(), digest
        )
        if not ok:
            raise NotAuthorized("Invalid user name or password.")
        self.failures.forgive(client)
        if generation == self._generation:  # the file did not change during the check
            self._remember(key)
        return user

    def _remember(self, key: bytes) -> None:
        now = self._clock()
        if len(self._verified) >= self.cache_size:
            self._verified = {k: t for k, t in self._verified.items() if t > now}
        while len(self._verified) >= self.cache_size:
            del self._verified[next(iter(self._verified))]
        self._verified[key] = now + self.cache_ttl


NOAUTH_FOREIGN_HOST = (
    "auth_strategy noauth answers only requests addressed to a loopback name (127.0.0.1, ::1, "
    "localhost): another Host is what a web page that rebinds its own name to 127.0.0.1 sends. "
    "Serve other names with auth_strategy http_basic"
)


def loopback_host(host: str | None) -> bool:
    """Whether `host` (a hostname, or a Host header with its port) names this machine's loopback.

    noauth listens on loopback only, but a web page the operator opens can point a name of its own
    at 127.0.0.1 (DNS rebinding) and then use the API or the dashboard as its own origin, reading the
    answers. The browser sends that name as Host, so without authentication only loopback names are
    answered.
    """
    if not host:
        return False
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_noauth_host(host: str | None) -> None:
    """Raise Forbidden unless a request without authentication came for a loopback name.

    A request without a Host header (HTTP/1.0 tools) passes: browsers always send one.
    """
    if host is not None and not loopback_host(host):
        raise Forbidden(NOAUTH_FOREIGN_HOST)
