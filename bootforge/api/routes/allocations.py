"""/v1/allocations (API 1.52+): ask for a node by resource class, traits and candidates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi, views
from bootforge.api.deps import Ctx, ctx, json_body, require
from bootforge.api.responses import JSON
from bootforge.conductor import patching, reads
from bootforge.conductor.task import load_node
from bootforge.db.models import Allocation
from bootforge.db.queries import parse_page
from bootforge.errors import InvalidInput

router = APIRouter(prefix="/v1/allocations")

SORTABLE = {"id", "uuid", "name", "created_at", "updated_at", "state", "resource_class"}
CREATE_FIELDS = {"uuid", "name", "resource_class", "traits", "candidate_nodes", "extra", "owner", "node"}
PATCHABLE = {"name", "extra"}


async def allocation_dicts(c: Ctx, rows: list[Any]) -> list[dict[str, Any]]:
    nodes = await reads.node_uuids(c.services.conductor.db, (r["node_id"] for r in rows))
    fields = views.check_fields(c.params.get("fields"), views.ALLOCATION_FIELDS, c.version) or views.visible(
        views.ALLOCATION_FIELDS, c.version
    )
    return [
        views.allocation({**dict(r), "node_uuid": nodes.get(r["node_id"])}, c.version, c.base, fields)
        for r in rows
    ]


async def allocation_dict(c: Ctx, row: Allocation) -> dict[str, Any]:
    return (await allocation_dicts(c, [vars(row)]))[0]


@router.get("", openapi_extra=openapi.query(*openapi.PAGE, openapi.FIELDS, *openapi.ALLOCATION_FILTERS))
async def list_allocations(request: Request) -> JSON:
    c = ctx(request)
    require(c, 52)
    p = c.params
    page = parse_page(p, SORTABLE)
    equal: dict[str, Any] = {name: p[name] for name in ("state", "resource_class", "owner") if name in p}
    if "node" in p:
        equal["node_id"] = (await load_node(c.services.conductor, p["node"])).id
    rows = await reads.rows(c.services.conductor.db, Allocation, None, page, equal)
    items = await allocation_dicts(c, rows)
    return JSON(views.collection("allocations", items, page.limit, c.base, request.url.path, p))


@router.get("/{ident}", openapi_extra=openapi.query(openapi.FIELDS))
async def get_allocation(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 52)
    return JSON(await allocation_dict(c, await c.services.allocations.get(ident)))


@router.post("", status_code=201, openapi_extra=openapi.body(openapi.ALLOCATION_CREATE))
async def create_allocation(request: Request) -> JSON:
    c = ctx(request)
    require(c, 52)
    body = await json_body(request)
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown attribute for argument allocation: {', '.join(unknown)}", unknown[0])
    row = await c.services.allocations.create(body)
    return JSON(
        await allocation_dict(c, row),
        status_code=201,
        headers={"Location": f"{c.base}/v1/allocations/{row.uuid}"},
    )


@router.patch("/{ident}", openapi_extra=openapi.body(openapi.JSON_PATCH))
async def patch_allocation(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 57)
    patch = patching.check_ops(await json_body(request, list), ("add", "replace", "remove"), PATCHABLE)
    values: dict[str, Any] = {}
    for op in patch:
        field = str(op.get("path", "")).lstrip("/").split("/")[0]
        if field not in PATCHABLE:
            raise InvalidInput(
                f"Cannot update allocation field {op.get('path')!r}; only name and extra", str(op.get("path"))
            )
        if op.get("op") == "remove":
            values[field] = {} if field == "extra" else None
        elif "/" in str(op["path"]).lstrip("/"):
            key = str(op["path"]).lstrip("/").split("/", 1)[1]
            values.setdefault("extra", {})[key] = op.get("value")
        else:
            values[field] = op.get("value")
    row = await c.services.allocations.get(ident)
    if (
        "extra" in values
        and isinstance(values["extra"], dict)
        and any("/" in str(o["path"]).lstrip("/") for o in patch)
    ):
        values["extra"] = {**row.extra, **values["extra"]}
    row = await c.services.allocations.update(row, values)
    return JSON(await allocation_dict(c, row))


@router.delete("/{ident}", status_code=204)
async def delete_allocation(request: Request, ident: str) -> Response:
    c = ctx(request)
    require(c, 52)
    await c.services.allocations.delete(await c.services.allocations.get(ident))
    return Response(status_code=204)
