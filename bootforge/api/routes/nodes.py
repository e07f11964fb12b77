"""/v1/nodes: create, list, show, update (JSON-PATCH) and delete."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi, views
from bootforge.api.deps import Ctx, ctx, json_body
from bootforge.api.responses import JSON
from bootforge.conductor import reads
from bootforge.db.models import Node
from bootforge.db.queries import parse_bool, parse_page
from bootforge.errors import InvalidInput, NotFound

router = APIRouter(prefix="/v1/nodes")

NODE_SORTABLE = {
    "id",
    "uuid",
    "name",
    "created_at",
    "updated_at",
    "provision_state",
    "power_state",
    "driver",
    "resource_class",
    "provision_updated_at",
    "maintenance",
    "conductor_group",
    "owner",
    "lessee",
    "instance_uuid",
}


async def node_dicts(
    c: Ctx, rows: list[Any], fields: list[str], *, links: bool = True, known: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Fill the computed fields (traits, allocation_uuid, conductor) for a batch of node rows.

    `known` gives values of computed fields the caller already has, for every row (skips the query).
    """
    ids = [r["id"] for r in rows]
    extra: dict[str, dict[int, Any]] = {k: dict.fromkeys(ids, v) for k, v in (known or {}).items()}
    db = c.services.conductor.db
    if ids and not known and "traits" in fields:
        extra["traits"] = await reads.node_traits(db, ids)
    if ids and not known and "allocation_uuid" in fields:
        found = await reads.allocation_uuids(db, (r["allocation_id"] for r in rows))
        extra["allocation_uuid"] = {r["id"]: found.get(r["allocation_id"]) for r in rows}
    conductor = c.services.conductor
    # The node's owner on the ring of live conductors (conductor/ring.py): the one that acts on it.
    rings = await conductor.rings() if "conductor" in fields else None
    out = []
    for r in rows:
        row = dict(r)
        for name, by_id in extra.items():
            row[name] = by_id.get(r["id"])
        if rings is not None:
            row["conductor"] = rings.owner(r["uuid"], r["conductor_group"], r["driver"])
        row["chassis_uuid"] = None
        out.append(views.node(row, c.version, c.base, fields, links=links))
    return out


@functools.lru_cache(maxsize=256)
def node_column_names(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The nodes-table columns a response with `fields` needs (cached: computed per request otherwise)."""
    owner = {"driver", "conductor_group"} if "conductor" in fields else set()
    return tuple(
        sorted({"id", "uuid", "allocation_id"} | owner | {f for f in fields if f not in views.NODE_COMPUTED})
    )


async def list_nodes(request: Request, detail: bool) -> JSON:
    c = ctx(request)
    p = c.params
    detail = detail or bool(parse_bool(p, "detail"))
    fields = views.list_fields(p, views.NODE_FIELDS, views.NODE_LIST_FIELDS, c.version, detail)
    page = parse_page(p, NODE_SORTABLE)
    rows = await reads.node_rows(c.services.conductor.db, node_column_names(tuple(fields)), page, p)
    items = await node_dicts(c, rows, fields)
    return JSON(views.collection("nodes", items, page.limit, c.base, request.url.path, p))


@router.get("", openapi_extra=openapi.query(*openapi.LIST, *openapi.NODE_FILTERS))
async def get_nodes(request: Request) -> JSON:
    return await list_nodes(request, detail=False)


@router.get("/detail", openapi_extra=openapi.query(*openapi.LIST, *openapi.NODE_FILTERS))
async def get_nodes_detail(request: Request) -> JSON:
    return await list_nodes(request, detail=True)


async def show(c: Ctx, ident: str, fields: list[str] | None = None) -> dict[str, Any]:
    """One node, reading only the columns asked for: clients poll this while they wait for a state."""
    fields = fields or views.visible(views.NODE_FIELDS, c.version)
    row = await reads.node_row(c.services.conductor.db, node_column_names(tuple(fields)), ident)
    if row is None:
        raise NotFound(f"Node {ident} could not be found.")
    return (await node_dicts(c, [row], fields))[0]


async def show_node(c: Ctx, node: Node, fields: list[str] | None = None) -> dict[str, Any]:
    fields = fields or views.visible(views.NODE_FIELDS, c.version)
    row = {col: getattr(node, col) for col in node_column_names(tuple(fields))}
    return (await node_dicts(c, [row], fields))[0]


@router.get("/{ident}", openapi_extra=openapi.query(openapi.FIELDS))
async def get_node(request: Request, ident: str) -> JSON:
    c = ctx(request)
    fields = views.check_fields(c.params.get("fields"), views.NODE_FIELDS, c.version)
    return JSON(await show(c, ident, fields))


@router.post("", status_code=201, openapi_extra=openapi.body(openapi.NODE_CREATE))
async def create_node(request: Request) -> JSON:
    c = ctx(request)
    body = await json_body(request)
    body.pop("provision_state", None) if body.get("provision_state") == "enroll" else None
    if "provision_state" in body:
        raise InvalidInput(
            "provision_state cannot be set on creation other than to 'enroll'", "provision_state"
        )
    # Before 1.11 new nodes started in available, and old clients still expect that.
    node = await c.services.nodes.create(body, enroll=c.version.minor >= 11)
    # A new node has no traits and no allocation yet: the reply needs no further query.
    fields = views.visible(views.NODE_FIELDS, c.version)
    row = {col: node[col] for col in node_column_names(tuple(fields))}
    doc = (await node_dicts(c, [row], fields, known={"traits": [], "allocation_uuid": None}))[0]
    return JSON(doc, status_code=201, headers={"Location": f"{c.base}/v1/nodes/{node['uuid']}"})


@router.patch("/{ident}", openapi_extra=openapi.body(openapi.JSON_PATCH))
async def patch_node(request: Request, ident: str) -> JSON:
    c = ctx(request)
    patch = await json_body(request, list)
    node = await c.services.nodes.update(ident, patch)
    return JSON(await show(c, node.uuid))


@router.delete("/{ident}", status_code=204)
async def delete_node(request: Request, ident: str) -> Response:
    await ctx(request).services.nodes.delete(ident)
    return Response(status_code=204)
