"""/v1/rollouts (bootforge's own, no Ironic counterpart): rolling re-provisioning of active nodes.

The work runs in the conductor (conductor/rollouts.py); these routes create, read and steer it.
Hooks are named, never given: a rollout names a drain/undrain hook of the configuration, so API
credentials never buy command execution on the conductor host.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from bootforge.api import openapi
from bootforge.api.deps import ctx, json_body
from bootforge.api.openapi import Schema
from bootforge.api.responses import JSON

router = APIRouter(prefix="/v1/rollouts")

STRING: Schema = {"type": "string"}
ROLLOUT_CREATE: Schema = {
    "type": "object",
    "required": ["image"],
    "additionalProperties": False,
    "properties": {
        "selector": {
            "type": "object",
            "additionalProperties": False,
            "description": "Which active nodes (out of maintenance, not protected); all of them if empty",
            "properties": {
                "resource_class": STRING,
                "conductor_group": STRING,
                "name_prefix": STRING,
                "traits": {"type": "array", "items": STRING, "description": "All of these traits"},
            },
        },
        "image": {**STRING, "description": "Catalogue image name or UUID, or an http(s) URL"},
        "batch": {"oneOf": [{"type": "integer", "minimum": 1}, {**STRING, "pattern": "^[0-9]+%?$"}]},
        "max_failures": {"type": "integer", "minimum": 0},
        "drain_hook": {**STRING, "description": "The name of a hook in the configuration (rollouts.hooks)"},
        "undrain_hook": {**STRING, "description": "The name of a hook in the configuration (rollouts.hooks)"},
    },
}
LIMIT = openapi.query_param("limit", "How many rollouts, newest first (default 100)", {"type": "integer"})


@router.post("", status_code=201, openapi_extra=openapi.body(ROLLOUT_CREATE))
async def create_rollout(request: Request) -> JSON:
    c = ctx(request)
    body = await json_body(request)
    rollout = await c.services.conductor.rollouts.create(body)
    return JSON(rollout, status_code=201, headers={"Location": f"{c.base}/v1/rollouts/{rollout['uuid']}"})


@router.get("", openapi_extra=openapi.query(LIMIT))
async def list_rollouts(request: Request) -> JSON:
    c = ctx(request)
    raw = c.params.get("limit", "100")
    limit = int(raw) if raw.isdigit() else 100
    return JSON({"rollouts": await c.services.conductor.rollouts.list_all(max(1, min(limit, 1000)))})


@router.get("/{ident}")
async def get_rollout(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.conductor.rollouts.get(ident))


@router.post("/{ident}/pause")
async def pause_rollout(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.conductor.rollouts.pause(ident))


@router.post("/{ident}/resume")
async def resume_rollout(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.conductor.rollouts.resume(ident))


@router.post("/{ident}/abort")
async def abort_rollout(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.conductor.rollouts.abort(ident))
