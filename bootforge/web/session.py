"""The dashboard's session cookie and CSRF tokens.

The cookie is `<payload>.<mac>`: the payload (base64url JSON: user, expiry, a random nonce) is readable
by whoever holds the cookie but carries nothing secret, and the HMAC-SHA256 under the key's
"web-session" subkey makes any change to it (another user, a later expiry) a cookie that is refused.
It is set HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and Secure when
bootforge serves HTTPS.

Every POST carries a CSRF token: an HMAC of the session's nonce under the same subkey, so it is bound to
the session it was issued with, changes when a login starts a new session, and a token read from one
session is worthless in another. Checked with a constant-time compare.

Sessions are not stored server-side: a logout ends the browser's copy; a copied cookie stays valid
until its expiry (SESSION_TTL), which is why that is hours, not days.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

COOKIE = "bootforge_session"
SESSION_TTL = 8 * 3600.0  # seconds a session lasts from its login (one on-call shift)
MAX_COOKIE = 1024  # bytes of cookie value looked at; a real one is about 150


@dataclass(frozen=True)
class Session:
    user: str | None  # None: not logged in (a login form's session); "" in noauth mode
    expires: float
    nonce: str

    @property
    def logged_in(self) -> bool:
        return self.user is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, key: bytes, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the session key must be at least 16 bytes")
        self._key = key
        self.ttl = ttl
        self._clock = clock

    def new(self, user: str | None) -> Session:
        """A fresh session (a new nonce, so a login never keeps the pre-login session's CSRF token)."""
        return Session(user, self._clock() + self.ttl, secrets.token_urlsafe(18))

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + data, hashlib.sha256).digest()

    def encode(self, session: Session) -> str:
        payload = orjson.dumps({"u": session.user, "e": int(session.expires), "n": session.nonce})
        return f"{_b64(payload)}.{_b64(self._mac(b'cookie', payload))}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session a cookie carries; None when it is missing, altered, malformed or expired."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(given, self._mac(b"cookie", payload)):
            return None
        try:
            data = orjson.loads(payload)
            user, expires, nonce = data["u"], data["e"], data["n"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not (user is None or isinstance(user, str)) or not isinstance(expires, int):
            return None
        if not isinstance(nonce, str) or expires <= self._clock():
            return None
        return Session(user, float(expires), nonce)

    def csrf(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.nonce.encode()))

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf(session).encode())
