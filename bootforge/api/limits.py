"""Request limits: body size per route (413), header count and size (431), JSON depth and field size (400).

Two layers, because the API can be served by anything ASGI:
- RequestLimits, an ASGI middleware: refuses a declared Content-Length over the route's limit before
  reading a byte, counts a chunked body as it arrives, and checks the headers the server parsed;
- LimitedHttpToolsProtocol, for `bootforge serve` (uvicorn + httptools, which bound neither): stops
  reading a request head once it has too many headers or bytes, so memory stays bounded too.

Answers keep Ironic's error shape; each says which limit was passed and which setting raises it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bootforge.api.responses import error_response
from bootforge.conductor.patching import check_field, depth
from bootforge.config import ApiLimits
from bootforge.errors import BootforgeError, InvalidInput

__all__ = [
    "HeadersTooLarge",
    "RequestLimits",
    "RequestTooLarge",
    "body_limit",
    "check_json",
    "limited_protocol",
]

# (method, path) -> the ApiLimits field giving the route's body limit; max_body_bytes otherwise.
ROUTE_LIMITS = (
    ("PUT", re.compile(r"^/v1/nodes/[^/]+/states/provision$"), "max_provision_body_bytes"),
    ("POST", re.compile(r"^/v1/nodes/[^/]+/agent/command/[^/]+$"), "max_agent_body_bytes"),
    ("PUT", re.compile(r"^/v1/images/[^/]+/file$"), "max_image_upload_bytes"),
)


class RequestTooLarge(BootforgeError):
    http_status = 413


class HeadersTooLarge(BootforgeError):
    http_status = 431


def body_limit(limits: ApiLimits, method: str, path: str) -> tuple[int, str]:
    """The body limit of a route and the setting that gives it."""
    for m, pattern, setting in ROUTE_LIMITS:
        if method == m and pattern.match(path):
            return int(getattr(limits, setting)), setting
    return limits.max_body_bytes, "max_body_bytes"


def _too_large(size: int | None, limit: int, setting: str) -> RequestTooLarge:
    told = f"of {size} bytes " if size is not None else ""
    return RequestTooLarge(
        f"The request body {told}is larger than this route accepts ({limit} bytes; "
        f"setting api_limits.{setting})."
    )


def check_headers(limits: ApiLimits, scope: Scope) -> None:
    headers = scope["headers"]
    if len(headers) > limits.max_headers:
        raise HeadersTooLarge(
            f"The request has {len(headers)} header fields; the limit is {limits.max_headers} "
            "(setting api_limits.max_headers)."
        )
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    size += sum(len(k) + len(v) for k, v in headers)
    if size > limits.max_header_bytes:
        raise HeadersTooLarge(
            f"The request's target and header fields are {size} bytes; the limit is "
            f"{limits.max_header_bytes} (setting api_limits.max_header_bytes)."
        )


class RequestLimits:
    """ASGI middleware enforcing ApiLimits on every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: ApiLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = body_limit(self.limits, scope["method"], scope["path"])
        try:
            check_headers(self.limits, scope)
            declared = _content_length(scope["headers"])
            if declared is not None and declared > limit:
                raise _too_large(declared, limit, setting)
        except BootforgeError as exc:
            await error_response(exc)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's read of the body: the app's error handler answers.
                    raise _too_large(None, limit, setting)
            return message

        await self.app(scope, counted, send)


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            text = value.strip()
            if not text.isdigit() or len(text) > 18:
                raise InvalidInput("Content-Length must be a number of bytes", "Content-Length")
            return int(text)
    return None


def check_json(body: Any, limits: ApiLimits, large: Iterable[str] = ()) -> None:
    """A parsed JSON body within the depth and per-field size limits, or InvalidInput naming the field.

    Fields of an object body are named by key; the values of a JSON-PATCH list by their path.
    `large` names fields bounded by the route's body limit only (the config drive).
    """
    if isinstance(body, dict):
        fields = [(str(k), v) for k, v in body.items()]
    elif isinstance(body, list):
        fields = [
            (_op_name(i, op), op.get("value") if isinstance(op, dict) else op) for i, op in enumerate(body)
        ]
    else:
        return
    exempt = set(large)
    for name, value in fields:
        if name in exempt:
            # Bounded by the route's body limit alone; its depth still counts.
            if isinstance(value, dict | list) and depth(value, limits.max_json_depth) > limits.max_json_depth:
                check_field(name, value, limits)
            continue
        check_field(name, value, limits)


def _op_name(i: int, op: Any) -> str:
    path = op.get("path") if isinstance(op, dict) else None
    return str(path)[:200] if isinstance(path, str) else f"patch[{i}]"


def limited_protocol(limits: ApiLimits) -> type[Any] | None:
    """uvicorn's httptools protocol with a bounded request head, for `uvicorn.Config(http=...)`.

    None when httptools is not installed (uvicorn then uses h11, bounded by its
    h11_max_incomplete_event_size).
    """
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return None

    # Raw bytes of a head: what the limits count, plus ": " and CRLF per field and a request line.
    raw_cap = limits.max_header_bytes + 4 * limits.max_headers + 1024

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _head_refused: str | None = None
        # Raw bytes of the current head received so far. httptools calls on_header only once a
        # field is complete, buffering an unfinished one without bound: so the bytes are counted
        # as they arrive, up to the blank line that ends the head.
        _head_raw = 0
        _head_done = False
        _tail = b""

        def data_received(self, data: bytes) -> None:
            if not self._head_done:
                end = (self._tail + data).find(b"\r\n\r\n")
                self._head_raw += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                self._tail = data[-3:]
                if self._head_raw > raw_cap:
                    self._head_refused = (
                        f"request head over {raw_cap} bytes (setting api_limits.max_header_bytes)"
                    )
                    self.send_400_response(self._head_refused)
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            self._head_refused = None
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._head_done, self._head_raw, self._tail = False, 0, b""
            super().on_message_complete()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            if len(self.headers) >= limits.max_headers:
                self._refuse(f"more than {limits.max_headers} header fields (setting api_limits.max_headers)")
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > limits.max_header_bytes:
                self._refuse(
                    f"request target and header fields over {limits.max_header_bytes} bytes "
                    "(setting api_limits.max_header_bytes)"
                )

        def _refuse(self, why: str) -> None:
            self._head_refused = why
            # httptools turns an exception in a callback into HttpParserCallbackError, which
            # uvicorn answers with send_400_response (below): the rest of the head is never read.
            raise httptools.HttpParserCallbackError(why)

        def send_400_response(self, msg: str) -> None:
            if self._head_refused is None:
                super().send_400_response(msg)
                return
            body = orjson.dumps(
                {
                    "error_message": orjson.dumps(
                        {
                            "faultstring": f"Request head refused: {self._head_refused}",
                            "faultcode": "Client",
                            "debuginfo": None,
                        }
                    ).decode()
                }
            )
            head = [STATUS_LINE[431]]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head += [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
            self.transport.write(b"".join(head))
            self.transport.close()

    return LimitedHttpToolsProtocol
