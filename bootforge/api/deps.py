"""What every route needs: the services, the negotiated microversion, the base URL and the JSON body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from bootforge.api.limits import check_json
from bootforge.api.versions import MIN, Version
from bootforge.conductor.allocations import AllocationService
from bootforge.conductor.conductor import Conductor
from bootforge.conductor.ports import PortgroupService, PortService
from bootforge.conductor.service import NodeService
from bootforge.config import Settings
from bootforge.errors import InvalidInput, NotFound


@dataclass
class Services:
    settings: Settings
    conductor: Conductor
    nodes: NodeService
    ports: PortService
    portgroups: PortgroupService
    allocations: AllocationService

    @classmethod
    def build(cls, settings: Settings, conductor: Conductor) -> Services:
        return cls(
            settings,
            conductor,
            NodeService(conductor),
            PortService(conductor),
            PortgroupService(conductor),
            conductor.allocations,
        )


@dataclass
class Ctx:
    services: Services
    version: Version
    base: str
    params: dict[str, str]


def ctx(request: Request) -> Ctx:
    version: Version = request.scope.get("state", {}).get("version", MIN)
    base = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return Ctx(request.app.state.services, version, base, dict(request.query_params))


def require(c: Ctx, minor: int) -> None:
    """Resources newer than the requested microversion do not exist for that client (404)."""
    if c.version.minor < minor:
        raise NotFound(f"The resource could not be found at API version {c.version} (needs 1.{minor}).")


async def json_body(request: Request, kind: type = dict, *, large: tuple[str, ...] = ()) -> Any:
    """The request's JSON body, of type `kind`, within the JSON limits (limits.check_json).

    `large` names fields bounded only by the route's body limit (the config drive).
    """
    raw = await request.body()
    if not raw:
        raise InvalidInput("The request body is empty; a JSON document is expected", "body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"The request body is not valid JSON: {e}", "body") from None
    if not isinstance(body, kind):
        raise InvalidInput(f"The request body must be a JSON {'object' if kind is dict else 'list'}", "body")
    services: Services = request.app.state.services
    check_json(body, services.settings.api_limits, large)
    return body
