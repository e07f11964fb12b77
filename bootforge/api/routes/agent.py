"""The deploy agent's endpoints: lookup by MAC (public), then its command long-poll and reports, which
authenticate with the per-boot agent token instead of the operators' credentials."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi
from bootforge.api.deps import ctx, json_body
from bootforge.api.responses import JSON
from bootforge.boot_token import HEADER as BOOT_TOKEN_HEADER
from bootforge.errors import InvalidInput

router = APIRouter()

TOKEN_HEADER = "x-agent-token"


@router.get("/v1/lookup", openapi_extra=openapi.query(*openapi.LOOKUP))
async def lookup(request: Request) -> JSON:
    c = ctx(request)
    addresses = c.params.get("addresses", "")
    client = request.client.host if request.client else "unknown"
    body = await c.services.conductor.agent.lookup(
        addresses.split(","), c.params.get("node_uuid"), client, request.headers.get(BOOT_TOKEN_HEADER)
    )
    return JSON(body)


@router.get("/v1/nodes/{ident}/agent/command", openapi_extra=openapi.query(*openapi.AGENT_POLL))
async def next_command(request: Request, ident: str) -> Response:
    c = ctx(request)
    try:
        wait = float(c.params.get("wait", "0"))
    except ValueError:
        raise InvalidInput("wait must be a number of seconds", "wait") from None
    command = await c.services.conductor.agent.next_command(ident, request.headers.get(TOKEN_HEADER), wait)
    if command is None:
        return Response(status_code=204)
    return JSON(command)


@router.post(
    "/v1/nodes/{ident}/agent/command/{command_id}",
    openapi_extra={**openapi.body(openapi.AGENT_REPORT), **openapi.query(openapi.AGENT_TOKEN)},
)
async def report(request: Request, ident: str, command_id: str) -> JSON:
    c = ctx(request)
    # An inspection inventory can pass the per-field limit (many disks, NICs, LLDP data): the
    # route's own body limit (api_limits.max_agent_body_bytes) bounds it.
    body = await json_body(request, large=("result",))
    await c.services.conductor.agent.report(ident, request.headers.get(TOKEN_HEADER), command_id, body)
    return JSON({"accepted": True})
