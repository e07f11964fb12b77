"""driver_info of the `redfish` hardware type: parsed without touching the BMC; errors name the key."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from bootforge.errors import InvalidInput

AuthType = Literal["auto", "session", "basic"]

DEFAULT_TIMEOUT = 20.0

PROPERTIES = {
    "redfish_address": "The BMC's Redfish URL, e.g. https://10.0.0.5 or https://bmc.example:8443 "
    "(https:// is assumed when no scheme is given). Required.",
    "redfish_system_id": "The ComputerSystem to drive: its path (/redfish/v1/Systems/1) or its Id. "
    "Optional when the service has exactly one system.",
    "redfish_username": "BMC user name. Required.",
    "redfish_password": "BMC password. Required.",
    "redfish_verify_ca": "true (default: verify against the system CAs), false (do not verify; "
    "lab use only), or the path of a CA bundle file or directory. Optional.",
    "redfish_auth_type": "auto (a Redfish session, basic auth if the service has none; default), "
    "session, or basic. Optional.",
    "redfish_timeout": f"Seconds each Redfish request (and its retries while the BMC is busy) may "
    f"take; default {DEFAULT_TIMEOUT:.0f}. Optional.",
}

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class RedfishInfo:
    address: str  # scheme://host[:port], no path, no trailing slash
    username: str
    password: str = field(repr=False)
    system_id: str | None = None  # a path under /redfish/v1/Systems/, or None: discover the only one
    verify_ca: bool | str = True
    auth_type: AuthType = "auto"
    timeout: float = DEFAULT_TIMEOUT

    def ssl_context(self) -> ssl.SSLContext | Literal[False]:
        """What httpx's `verify` gets: a (cached) context, or False when verification is off."""
        if self.verify_ca is False:
            return False
        return _context(self.verify_ca if isinstance(self.verify_ca, str) else None)


@functools.lru_cache(maxsize=32)
def _context(ca: str | None) -> ssl.SSLContext:
    # Building a context loads certificates from disk: do it once per CA, not per request.
    if ca is None:
        return ssl.create_default_context()
    if os.path.isdir(ca):
        return ssl.create_default_context(capath=ca)
    return ssl.create_default_context(cafile=ca)


def _invalid(key: str, why: str) -> InvalidInput:
    return InvalidInput(f"redfish driver_info {key} {why}", "driver_info")


def _text(info: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = info.get(key)
    if value is None or value == "":
        if required:
            raise _invalid(key, "is required")
        return None
    if not isinstance(value, str):
        raise _invalid(key, f"must be a string, not {type(value).__name__}")
    return value


def parse_address(value: str) -> str:
    raw = value.strip()
    if "://" not in raw:
        raw = "https://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise _invalid("redfish_address", f"is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("redfish_address", f"must be an http:// or https:// URL, not {parts.scheme}://")
    if not parts.hostname:
        raise _invalid("redfish_address", f"has no host: {value!r}")
    if parts.username or parts.password:
        raise _invalid("redfish_address", "must not carry credentials; use redfish_username/_password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _invalid(
            "redfish_address", "must be scheme://host[:port] only (the service root is /redfish/v1/)"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _system_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not value:
        return None
    if value.startswith("/"):
        if not value.startswith("/redfish/v1/Systems/"):
            raise _invalid("redfish_system_id", f"must be a path under /redfish/v1/Systems/, not {value!r}")
        return value
    if "/" in value:
        raise _invalid("redfish_system_id", f"must be a system Id or a /redfish/v1/Systems/ path: {value!r}")
    return f"/redfish/v1/Systems/{value}"


def _verify(value: Any) -> bool | str:
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _invalid("redfish_verify_ca", "must be true, false or the path of a CA bundle")
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    if not os.path.exists(value):
        raise _invalid("redfish_verify_ca", f"names no file or directory: {value}")
    return value


def _timeout(value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise _invalid("redfish_timeout", f"must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 600:
        raise _invalid("redfish_timeout", f"must be between 0 and 600 seconds, not {seconds}")
    return seconds


def parse_driver_info(info: Mapping[str, Any]) -> RedfishInfo:
    """driver_info -> RedfishInfo; reads no network and no BMC (a CA path is checked to exist)."""
    address = parse_address(_text(info, "redfish_address", True) or "")
    username = _text(info, "redfish_username", True) or ""
    password = _text(info, "redfish_password", True) or ""
    auth: AuthType
    match info.get("redfish_auth_type") or "auto":
        case "auto" | "session" | "basic" as auth:
            pass
        case other:
            raise _invalid("redfish_auth_type", f"must be auto, session or basic, not {other!r}")
    verify = _verify(info.get("redfish_verify_ca"))
    return RedfishInfo(
        address=address,
        username=username,
        password=password,
        system_id=_system_id(_text(info, "redfish_system_id", False)),
        verify_ca=verify,
        auth_type=auth,
        timeout=_timeout(info.get("redfish_timeout")),
    )
