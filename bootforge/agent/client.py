"""The agent's side of the conductor's three agent endpoints: JSON over HTTP with the standard library.

Exceptions (the loop decides what each means for the agent's state)::

    AgentApiError                 any call that did not give the agent what it asked for
    ├── TransportError            no HTTP answer: refused, reset, timed out, not HTTP     (retry)
    ├── BadReply                  a 2xx whose body is not the JSON the contract promises  (retry)
    └── HttpError                 an HTTP error status
        ├── Unauthorized          401: the token is gone -> back to lookup
        ├── NotFound              404: no node expects an agent with these MACs (yet)
        ├── Conflict              409: token already issued / the command is no longer current
        └── ServerError           5xx                                                     (retry)

This module is on the path to the first lookup call: it imports http.client and json, nothing else
that is not already loaded by them.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

# typing costs an import on the way to the first call; annotations need it only for mypy.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# A reply larger than this is not something the contract sends; refuse instead of buffering it.
MAX_REPLY = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0
# Long polls ask the server to wait; the socket waits this much longer before calling it dead.
POLL_GRACE = 15.0
# Final results: the contract's "retry with backoff for up to 10 minutes".
FINAL_PATIENCE = 600.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
TOKEN_HEADER = "X-Agent-Token"
# The lookup's proof that the caller booted with this boot's configuration (bootforge.boot_token=).
BOOT_TOKEN_HEADER = "X-Agent-Boot-Token"


class AgentApiError(Exception):
    """A call to the conductor did not give the agent what it asked for."""


class TransportError(AgentApiError):
    """No usable HTTP answer: the connection failed, was reset or timed out."""


class BadReply(AgentApiError):
    """A success status whose body is not what the contract promises."""


class HttpError(AgentApiError):
    """The server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.detail = detail


class Unauthorized(HttpError):
    """401: the token is not (or no longer) valid."""


class NotFound(HttpError):
    """404."""


class Conflict(HttpError):
    """409."""


class ServerError(HttpError):
    """5xx: worth retrying."""


_BY_STATUS: dict[int, type[HttpError]] = {401: Unauthorized, 404: NotFound, 409: Conflict}


class Lookup:
    """What lookup returns: the node and how to talk to the conductor from now on."""

    __slots__ = ("node_name", "node_uuid", "poll_timeout", "progress_interval", "token")

    def __init__(
        self, node_uuid: str, node_name: str | None, token: str, poll_timeout: int, progress_interval: float
    ) -> None:
        self.node_uuid = node_uuid
        self.node_name = node_name
        self.token = token
        self.poll_timeout = poll_timeout
        self.progress_interval = progress_interval

    @classmethod
    def from_json(cls, body: Any) -> Lookup:
        try:
            node, config = body["node"], body["config"]
            uuid, name, token = node["uuid"], node.get("name"), config["agent_token"]
            poll, interval = config["poll_timeout"], config["progress_interval"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise BadReply(f"lookup reply lacks {exc}") from None
        if not (isinstance(uuid, str) and uuid and isinstance(token, str) and token):
            raise BadReply("lookup reply has no node uuid or no agent token")
        if not _is_number(poll) or not _is_number(interval) or poll < 0 or interval < 0:
            raise BadReply(f"lookup reply has a bad poll_timeout {poll!r} or progress_interval {interval!r}")
        return cls(uuid, name if isinstance(name, str) else None, token, int(poll), float(interval))


class Command:
    """One command the conductor asks for. Only the id must be sound: the rest is reported on."""

    __slots__ = ("args", "id", "name")

    def __init__(self, id: str, name: str, args: object) -> None:
        self.id = id
        self.name = name
        self.args = args

    @classmethod
    def from_json(cls, body: Any) -> Command:
        ident = body.get("id") if isinstance(body, dict) else None
        if not isinstance(ident, str) or not ident:
            raise BadReply(f"command without an id: {str(body)[:200]}")
        name = body.get("name")
        return cls(ident, name if isinstance(name, str) else repr(name), body.get("args", {}))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Client:
    """Calls the conductor. Not thread-safe: only the agent's main loop uses it."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = "bootforge-agent",
        cafile: str | None = None,
    ) -> None:
        """`cafile`: the CA bundle an https API's certificate is verified against (else the
        system's CAs, which a ramdisk has none of); the certificate is always verified."""
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API URL must be http:// or https://, not {base_url!r}")
        self.base_url = base_url
        self._https = parts.scheme == "https"
        self._tls: Any = None
        if self._https:
            import ssl  # only an https API pays for it

            try:
                self._tls = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot use the CA bundle {cafile}: {exc}") from None
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.user_agent = user_agent
        # Kept in memory only; never logged.
        self.token: str | None = None

    # -- the contract's calls -----------------------------------------------------------------

    def lookup(self, macs: list[str], node_uuid: str | None, boot_token: str | None = None) -> Lookup:
        query = {"addresses": ",".join(macs)}
        if node_uuid:
            query["node_uuid"] = node_uuid
        path = "/v1/lookup?" + urllib.parse.urlencode(query, safe=",:")
        headers = {BOOT_TOKEN_HEADER: boot_token} if boot_token else None
        _, body = self.call("GET", path, auth=False, headers=headers)
        return Lookup.from_json(body)

    def next_command(self, node_uuid: str, wait: int) -> Command | None:
        """Long-poll for a command; None when the server had nothing within ``wait`` seconds."""
        path = f"{self._node_path(node_uuid)}/agent/command?wait={int(wait)}"
        status, body = self.call("GET", path, timeout=wait + POLL_GRACE)
        return None if status == 204 else Command.from_json(body)

    def post(self, node_uuid: str, command_id: str, body: dict[str, Any]) -> None:
        """One attempt to post progress or a result."""
        self.call("POST", self._command_path(node_uuid, command_id), body)

    def post_final(
        self,
        node_uuid: str,
        command_id: str,
        body: dict[str, Any],
        on_retry: Callable[[AgentApiError, float], None] = lambda exc, delay: None,
        patience: float = FINAL_PATIENCE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Post a final result, retrying what may heal (no connection, 5xx) for ``patience`` seconds.

        401 and 409 are raised at once: the result can never be accepted, retrying cannot help.
        """
        deadline = clock() + patience
        delay = BACKOFF_FIRST
        while True:
            try:
                self.post(node_uuid, command_id, body)
                return
            except (TransportError, ServerError, BadReply) as exc:
                left = deadline - clock()
                if left <= 0:
                    raise
                pause = min(delay, left)
                on_retry(exc, pause)
                sleep(pause)
                delay = min(delay * 2, BACKOFF_MAX)

    # -- plumbing -----------------------------------------------------------------------------

    def _node_path(self, node_uuid: str) -> str:
        return "/v1/nodes/" + urllib.parse.quote(node_uuid, safe="")

    def _command_path(self, node_uuid: str, command_id: str) -> str:
        return f"{self._node_path(node_uuid)}/agent/command/{urllib.parse.quote(command_id, safe='')}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        auth: bool = True,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON or None) for 2xx, raises otherwise."""
        headers = {
            "Accept": "application/json",
            "User-Agent": self.user_agent,
            "Connection": "close",
            **(headers or {}),
        }
        if auth and self.token is not None:
            headers[TOKEN_HEADER] = self.token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, raw = self._exchange(method, self._prefix + path, data, headers, timeout or self.timeout)
        if 200 <= status < 300:
            return status, _parse_json(method, path, raw) if raw.strip() else None
        detail = _error_detail(raw)
        if status >= 500:
            raise ServerError(method, path, status, detail)
        raise _BY_STATUS.get(status, HttpError)(method, path, status, detail)

    def _exchange(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._netloc, timeout=timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._netloc, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_REPLY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{method} {self.base_url}{path}: {_describe(exc)}") from exc
        finally:
            conn.close()
        if len(raw) > MAX_REPLY:
            raise BadReply(f"{method} {path}: reply larger than {MAX_REPLY} bytes")
        return resp.status, raw


def _parse_json(method: str, path: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadReply(f"{method} {path}: reply is not JSON ({exc})") from None


def _error_detail(raw: bytes) -> str:
    """The server's own words from an error body: {"error": ...}, Ironic's shape, or the text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        for key in ("error", "error_message", "detail", "faultstring"):
            if key in body:
                return str(body[key])[:200]
    return str(body)[:200]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
