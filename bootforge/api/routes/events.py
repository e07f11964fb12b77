"""Prometheus metrics (/metrics) and server-sent event streams (/v1/events/stream, a node's timeline).

/metrics sits behind the API's authentication unless `metrics.public` is set (api/app.py): node counts
and state rates say a lot about a fleet, and Prometheus can send basic auth. The streams always need
the API's credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from bootforge.api import openapi
from bootforge.api.deps import ctx
from bootforge.conductor.task import load_node
from bootforge.errors import InvalidInput, NotFound
from bootforge.observe import streams
from bootforge.observe.metrics import CONTENT_TYPE
from bootforge.observe.settings import EVENT_KINDS

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    c = ctx(request)
    if not c.services.settings.metrics.enabled:
        raise NotFound("Metrics are switched off (metrics.enabled).")
    conductor = c.services.conductor
    body = await conductor.observer.metrics.render(conductor.db)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/v1/events/stream", openapi_extra={**openapi.query(*openapi.EVENTS), **openapi.EVENT_STREAM})
async def event_stream(request: Request) -> StreamingResponse:
    """CloudEvents (provision, failure, maintenance) as they happen; `?node=` for one node, `?types=`
    for some kinds."""
    c = ctx(request)
    conductor = c.services.conductor
    kinds = streams.kinds_param(c.params.get("types"), EVENT_KINDS)
    node_uuid = None
    if c.params.get("node"):
        node_uuid = (await load_node(conductor, c.params["node"])).uuid
    observer = conductor.observer
    gate = _gate(request)
    settings = c.services.settings
    stopping = _stopping(request)

    async def body() -> AsyncIterator[bytes]:
        with gate.enter(), observer.hub.subscribe(node_uuid, kinds) as sub:
            async for chunk in streams.cloudevents(sub, settings.events.stream_keepalive, stopping):
                yield chunk

    gate.check()
    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/v1/nodes/{ident}/events/stream",
    openapi_extra={**openapi.query(*openapi.TIMELINE), **openapi.EVENT_STREAM},
)
async def timeline_stream(request: Request, ident: str) -> StreamingResponse:
    """The node's timeline rows, newest `?history=N` (default 50) first, then as they come;
    `Last-Event-ID` (or `?after=`) resumes after a row."""
    c = ctx(request)
    conductor = c.services.conductor
    node = await load_node(conductor, ident)
    after_raw = request.headers.get("last-event-id") or c.params.get("after")
    try:
        after = int(after_raw) if after_raw else None
        history = int(c.params.get("history", "50"))
    except ValueError:
        raise InvalidInput("after/Last-Event-ID and history must be integers", "after") from None
    if history < 0 or (after is not None and after < 0):
        raise InvalidInput("after and history must not be negative", "history")
    gate = _gate(request)
    settings = c.services.settings
    stopping = _stopping(request)

    async def body() -> AsyncIterator[bytes]:
        with gate.enter():
            async for chunk in streams.timeline(settings, conductor.db, node.id, after, history, stopping):
                yield chunk

    gate.check()
    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


def _stopping(request: Request) -> streams.Stopping:
    """Whether the server is shutting down: `bootforge serve` sets app.state.stopping (uvicorn's
    should_exit); in-process tests have none, and their streams end with their client."""
    found: streams.Stopping | None = getattr(request.app.state, "stopping", None)
    return found or (lambda: False)


def _gate(request: Request) -> streams.StreamGate:
    gate: streams.StreamGate | None = getattr(request.app.state, "stream_gate", None)
    if gate is None:
        services = request.app.state.services
        gauge = services.conductor.observer.metrics.stream_clients
        gate = streams.StreamGate(services.settings.events.max_stream_clients, gauge)
        request.app.state.stream_gate = gate
    return gate
