"""create_app(): the FastAPI application. It owns no lifecycle: the composition root starts the
conductor and serves the app; tests drive it in-process through httpx's ASGI transport."""

from __future__ import annotations

import logging
import re
import uuid as uuidlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bootforge.api import openapi, versions
from bootforge.api.auth import Htpasswd, TooManyFailures, check_noauth_host
from bootforge.api.deps import Services
from bootforge.api.limits import RequestLimits
from bootforge.api.responses import JSON, error_body, error_response
from bootforge.api.routes import (
    agent,
    allocations,
    diagnosis,
    discovery,
    events,
    images,
    node_actions,
    nodes,
    ports,
    rollouts,
    root,
    volume,
)
from bootforge.errors import BootforgeError, Forbidden, NotAcceptable, NotAuthorized
from bootforge.observe.asgi import AgentCallMetrics
from bootforge.web import install as install_web

log = logging.getLogger("bootforge.api")

# Version discovery is public, as in Ironic; everything else needs credentials when auth is on.
PUBLIC_PATHS = frozenset({"/", "/v1", "/v1/", "/v1/lookup", "/v1/discovery/report"})
# The agent's own calls carry its per-boot token (checked by the agent service), not an operator's login.
AGENT_PATH = re.compile(r"^/v1/nodes/[^/]+/agent/command(/[^/]+)?$")


class IronicMiddleware:
    """Microversion negotiation, authentication and the headers every Ironic response carries.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware would add a task and a stream per request
    on the API's hottest paths.
    """

    def __init__(
        self, app: ASGIApp, htpasswd: Htpasswd | None, public: frozenset[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self.htpasswd = htpasswd
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = f"req-{uuidlib.uuid4()}"
        try:
            version = versions.from_headers(
                headers.get(versions.HEADER), headers.get(versions.STANDARD_HEADER)
            )
            path = scope["path"]
            # The dashboard (bootforge/web) checks its own session cookie against the same htpasswd.
            dashboard = path == "/ui" or path.startswith("/ui/")
            public = path in self.public or AGENT_PATH.match(path) is not None
            # The agent's routes and version discovery answer strangers by design (the agent reaches
            # them by whatever address routes to bootforge); the rest answers only loopback names.
            if self.htpasswd is None and not dashboard and not public:
                check_noauth_host(headers.get("host"))
            if self.htpasswd is not None and not public and not dashboard:
                client = scope.get("client")
                scope.setdefault("state", {})["user"] = await self.htpasswd.authenticate(
                    headers.get("authorization"), client[0] if client else ""
                )
        except (NotAcceptable, NotAuthorized, Forbidden, TooManyFailures) as exc:
            await _send_error(exc, scope, receive, send, request_id)
            return
        scope.setdefault("state", {})["version"] = version
        extra = [
            (b"x-openstack-ironic-api-minimum-version", str(versions.MIN).encode()),
            (b"x-openstack-ironic-api-maximum-version", str(versions.MAX).encode()),
            (b"x-openstack-ironic-api-version", str(version).encode()),
            (b"openstack-api-version", f"baremetal {version}".encode()),
            (b"x-openstack-request-id", request_id.encode()),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _send_error(
    exc: BootforgeError, scope: Scope, receive: Receive, send: Send, request_id: str
) -> None:
    response = error_response(exc)
    response.headers["X-OpenStack-Ironic-API-Minimum-Version"] = str(versions.MIN)
    response.headers["X-OpenStack-Ironic-API-Maximum-Version"] = str(versions.MAX)
    response.headers["X-OpenStack-Request-Id"] = request_id
    if isinstance(exc, TooManyFailures):
        response.headers["Retry-After"] = str(exc.retry_after)
    await response(scope, receive, send)


def create_app(services: Services, htpasswd: Htpasswd | None = None) -> FastAPI:
    app = FastAPI(
        title="bootforge",
        description="Bare metal provisioning with an Ironic v1 compatible API.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    routes = (root, nodes, node_actions, diagnosis, ports, allocations, agent, images, events, rollouts)
    for module in (*routes, discovery, volume):
        app.include_router(module.router)
    openapi.install(
        app,
        lambda path: path in PUBLIC_PATHS or bool(AGENT_PATH.match(path)),
        authenticated=htpasswd is not None,
    )
    app.state.images = services.conductor.images
    install_web(app, htpasswd)

    @app.exception_handler(BootforgeError)
    async def bootforge_error(_request: Request, exc: BootforgeError) -> JSON:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc.message)
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSON:
        message = "The resource could not be found." if exc.status_code == 404 else str(exc.detail)
        return JSON(error_body(message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSON:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSON(error_body(f"Invalid input for field {where}: {first.get('msg', 'invalid')}"), 400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSON:
        log.exception("unexpected error")
        return JSON(error_body(f"Internal error: {type(exc).__name__}"), status_code=500)

    # Added first, so it runs inside IronicMiddleware: its 413/431 answers carry Ironic's headers.
    app.add_middleware(RequestLimits, limits=services.settings.api_limits)
    # metrics.public: Prometheus scrapes without credentials (api/routes/events.py says why it is off).
    public = PUBLIC_PATHS | {"/metrics"} if services.settings.metrics.public else PUBLIC_PATHS
    app.add_middleware(IronicMiddleware, htpasswd=htpasswd, public=public)
    # Outermost: agent calls are counted with whatever answer they got, 401 and 413 included.
    app.add_middleware(AgentCallMetrics, metrics=services.conductor.observer.metrics)
    return app
