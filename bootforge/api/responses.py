"""JSON responses in Ironic's shape, serialised with orjson (the node list is a hot path)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import Response

from bootforge.errors import BootforgeError


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NAIVE_UTC)


def error_body(message: str) -> dict[str, str]:
    """Ironic's error shape: `error_message` holds a JSON *string* with faultstring, as clients expect."""
    fault = {"faultstring": message, "faultcode": "Client", "debuginfo": None}
    return {"error_message": json.dumps(fault)}


def error_response(exc: BootforgeError) -> JSON:
    body = error_body(exc.message)
    if exc.http_status >= 500:
        fault = {"faultstring": exc.message, "faultcode": "Server", "debuginfo": None}
        body = {"error_message": json.dumps(fault)}
    headers = {"WWW-Authenticate": 'Basic realm="bootforge"'} if exc.http_status == 401 else None
    return JSON(body, status_code=exc.http_status, headers=headers)


__all__ = ["JSON", "error_body", "error_response"]
