"""Counting the deploy agents' calls at the API's edge: one path test per request, no task, no copy."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bootforge.observe.metrics import Metrics


def agent_call(method: str, path: str) -> str | None:
    """Which agent call a request is ("lookup", "command_poll", "report"), or None for other routes."""
    if path == "/v1/lookup":
        return "lookup"
    if path.startswith("/v1/nodes/") and "/agent/command" in path:
        return "command_poll" if method == "GET" else "report"
    return None


class AgentCallMetrics:
    """Counts agent calls by the status class of their answer (2xx, 4xx, ...)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = agent_call(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        if call is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.agent_requests.labels(call, f"{status // 100}xx" if status else "none").inc()
