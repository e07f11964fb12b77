"""/v1/discovery_rules and /v1/discovery (bootforge's own; see README for why not Ironic's
/v1/inspection_rules): the rules run on discovery and inspection, and the discovery ramdisk's report.

The report (POST /v1/discovery/report) is public like /v1/lookup: its caller is a machine nobody
enrolled. What it must show instead of credentials is in conductor/discovery.py's module doc.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi
from bootforge.api.deps import ctx, json_body
from bootforge.api.openapi import Schema
from bootforge.api.responses import JSON
from bootforge.conductor import discovery_rules as rules

router = APIRouter()

STRING: Schema = {"type": "string"}
SCALAR: Schema = {"type": ["string", "number", "boolean", "null"]}
RULE_CREATE: Schema = {
    "type": "object",
    "required": ["actions"],
    "additionalProperties": False,
    "properties": {
        "uuid": {"type": "string", "format": "uuid"},
        "name": {**STRING, "description": "Unique, 1-64 of letters, digits, '_', '-'"},
        "description": STRING,
        "priority": {"type": "integer", "description": "Highest first; the first rule to set a field wins"},
        "match": {"type": "string", "enum": ["all", "any"]},
        "conditions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "op"],
                "properties": {
                    "field": {
                        **STRING,
                        "description": "Dotted path from 'inventory', list elements by index",
                    },
                    "op": {"type": "string", "enum": list(rules.OPS)},
                    "value": SCALAR,
                },
            },
        },
        "actions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["action", "value"],
                "properties": {
                    "action": {"type": "string", "enum": list(rules.ACTIONS)},
                    "field": STRING,
                    "value": {**SCALAR, "description": "Strings may name inventory fields: {inventory.x.y}"},
                },
            },
        },
    },
}
REPORT: Schema = {
    "type": "object",
    "required": ["mac", "boot_id", "token", "inventory"],
    "properties": {
        "mac": STRING,
        "boot_id": STRING,
        "token": STRING,
        "inventory": {"type": "object"},
    },
}


@router.post("/v1/discovery_rules", status_code=201, openapi_extra=openapi.body(RULE_CREATE))
async def create_rule(request: Request) -> JSON:
    c = ctx(request)
    body = await json_body(request)
    rule = await c.services.conductor.agent.discovery.create_rule(body)
    return JSON(rule, status_code=201, headers={"Location": f"{c.base}/v1/discovery_rules/{rule['uuid']}"})


@router.get("/v1/discovery_rules")
async def list_rules(request: Request) -> JSON:
    return JSON({"rules": await ctx(request).services.conductor.agent.discovery.list_rules()})


@router.get("/v1/discovery_rules/{ident}")
async def get_rule(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.conductor.agent.discovery.get_rule(ident))


@router.delete("/v1/discovery_rules/{ident}", status_code=204)
async def delete_rule(request: Request, ident: str) -> Response:
    await ctx(request).services.conductor.agent.discovery.delete_rule(ident)
    return Response(status_code=204)


@router.get("/v1/discovery")
async def status(request: Request) -> JSON:
    return JSON(await ctx(request).services.conductor.agent.discovery.status())


@router.post("/v1/discovery/report", openapi_extra=openapi.body(REPORT))
async def report(request: Request) -> JSON:
    c = ctx(request)
    # The inventory is bounded by discovery.max_inventory_bytes (checked by the service), the body as
    # a whole by api_limits.max_body_bytes.
    body = await json_body(request, large=("inventory",))
    client = request.client.host if request.client else ""
    return JSON(await c.services.conductor.agent.discovery.report(body, client))
