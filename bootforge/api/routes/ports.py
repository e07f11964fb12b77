"""/v1/ports and /v1/portgroups."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi, views
from bootforge.api.deps import Ctx, ctx, json_body, require
from bootforge.api.responses import JSON
from bootforge.conductor import reads
from bootforge.conductor.ports import normalize_mac
from bootforge.conductor.task import load_node
from bootforge.db.models import Port, Portgroup
from bootforge.db.queries import is_uuid, parse_bool, parse_page

router = APIRouter()

SORTABLE = {"id", "uuid", "address", "created_at", "updated_at", "pxe_enabled", "physical_network"}
GROUP_SORTABLE = {"id", "uuid", "address", "name", "created_at", "updated_at", "mode"}


async def _uuid_maps(c: Ctx, rows: list[Any], group: bool) -> tuple[dict[int, str], dict[int, str]]:
    db = c.services.conductor.db
    nodes = await reads.node_uuids(db, {r["node_id"] for r in rows})
    groups = await reads.portgroup_uuids(db, {r.get("portgroup_id") for r in rows} if not group else ())
    return nodes, groups


async def port_dicts(
    c: Ctx, rows: list[Any], fields: list[str], node_uuid: str | None = None
) -> list[dict[str, Any]]:
    """Ports in wire shape; `node_uuid`, when the caller knows it for a lone ungrouped port, saves a query."""
    if node_uuid is not None and len(rows) == 1 and not rows[0].get("portgroup_id"):
        nodes, groups = {rows[0]["node_id"]: node_uuid}, dict[int, str]()
    else:
        nodes, groups = await _uuid_maps(c, rows, group=False)
    out = []
    for r in rows:
        row = dict(r)
        row["node_uuid"] = nodes.get(r["node_id"])
        row["portgroup_uuid"] = groups.get(r.get("portgroup_id") or -1)
        out.append(views.port(row, c.version, c.base, fields))
    return out


def _columns(fields: list[str], computed: set[str], *, port: bool) -> list[str]:
    names = {"id", "uuid", "node_id"} | {f for f in fields if f not in computed}
    if port:
        names.add("portgroup_id")
    return sorted(names)


async def list_ports(request: Request, detail: bool, equal: dict[str, Any] | None = None) -> JSON:
    """Ports, filtered by the query parameters and by `equal` ({column: value}, from the URL path)."""
    c = ctx(request)
    p = c.params
    detail = detail or bool(parse_bool(p, "detail"))
    fields = views.list_fields(p, views.PORT_FIELDS, views.PORT_LIST_FIELDS, c.version, detail)
    page = parse_page(p, SORTABLE)
    equal = dict(equal or {})
    if "address" in p:
        equal["address"] = normalize_mac(p["address"])
    # An empty value filters nothing, as in Ironic.
    node_ident = p.get("node") or p.get("node_uuid")
    if node_ident:
        node = await load_node(c.services.conductor, node_ident)
        equal["node_id"] = node.id
    if "portgroup" in p:
        group = await c.services.portgroups.get(p["portgroup"])
        equal["portgroup_id"] = group.id
    columns = _columns(fields, {"node_uuid", "portgroup_uuid"}, port=True)
    rows = await reads.rows(c.services.conductor.db, Port, columns, page, equal)
    items = await port_dicts(c, rows, fields)
    return JSON(views.collection("ports", items, page.limit, c.base, request.url.path, p))


async def show_port(c: Ctx, port: Port, fields: list[str] | None = None) -> dict[str, Any]:
    fields = fields or views.visible(views.PORT_FIELDS, c.version)
    return (await port_dicts(c, [vars(port)], fields))[0]


@router.get("/v1/ports", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORT_FILTERS))
async def get_ports(request: Request) -> JSON:
    return await list_ports(request, False)


@router.get("/v1/ports/detail", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORT_FILTERS))
async def get_ports_detail(request: Request) -> JSON:
    return await list_ports(request, True)


@router.get("/v1/ports/{port_uuid}", openapi_extra=openapi.query(openapi.FIELDS))
async def get_port(request: Request, port_uuid: str) -> JSON:
    c = ctx(request)
    fields = views.check_fields(c.params.get("fields"), views.PORT_FIELDS, c.version)
    return JSON(await show_port(c, await c.services.ports.get(port_uuid), fields))


@router.post("/v1/ports", status_code=201, openapi_extra=openapi.body(openapi.PORT_CREATE))
async def create_port(request: Request) -> JSON:
    c = ctx(request)
    body = await json_body(request)
    port = await c.services.ports.create(body)
    known = str(body["node_uuid"]) if is_uuid(str(body["node_uuid"])) else None
    doc = (await port_dicts(c, [port], views.visible(views.PORT_FIELDS, c.version), known))[0]
    return JSON(doc, status_code=201, headers={"Location": f"{c.base}/v1/ports/{port['uuid']}"})


@router.patch("/v1/ports/{port_uuid}", openapi_extra=openapi.body(openapi.JSON_PATCH))
async def patch_port(request: Request, port_uuid: str) -> JSON:
    c = ctx(request)
    port = await c.services.ports.update(port_uuid, await json_body(request, list))
    return JSON(await show_port(c, port))


@router.delete("/v1/ports/{port_uuid}", status_code=204)
async def delete_port(request: Request, port_uuid: str) -> Response:
    await ctx(request).services.ports.delete(port_uuid)
    return Response(status_code=204)


# --- port groups ------------------------------------------------------------------------------------


async def portgroup_dicts(c: Ctx, rows: list[Any], fields: list[str]) -> list[dict[str, Any]]:
    nodes, _ = await _uuid_maps(c, rows, group=True)
    return [
        views.portgroup({**dict(r), "node_uuid": nodes.get(r["node_id"])}, c.version, c.base, fields)
        for r in rows
    ]


async def list_portgroups(request: Request, detail: bool, equal: dict[str, Any] | None = None) -> JSON:
    c = ctx(request)
    require(c, 23)
    p = c.params
    detail = detail or bool(parse_bool(p, "detail"))
    fields = views.list_fields(p, views.PORTGROUP_FIELDS, views.PORTGROUP_LIST_FIELDS, c.version, detail)
    page = parse_page(p, GROUP_SORTABLE)
    equal = dict(equal or {})
    if "address" in p:
        equal["address"] = normalize_mac(p["address"])
    if "node" in p:
        node = await load_node(c.services.conductor, p["node"])
        equal["node_id"] = node.id
    columns = _columns(fields, {"node_uuid"}, port=False)
    rows = await reads.rows(c.services.conductor.db, Portgroup, columns, page, equal)
    items = await portgroup_dicts(c, rows, fields)
    return JSON(views.collection("portgroups", items, page.limit, c.base, request.url.path, p))


async def show_portgroup(c: Ctx, group: Portgroup) -> dict[str, Any]:
    fields = views.visible(views.PORTGROUP_FIELDS, c.version)
    return (await portgroup_dicts(c, [vars(group)], fields))[0]


@router.get("/v1/portgroups", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORTGROUP_FILTERS))
async def get_portgroups(request: Request) -> JSON:
    return await list_portgroups(request, False)


@router.get("/v1/portgroups/detail", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORTGROUP_FILTERS))
async def get_portgroups_detail(request: Request) -> JSON:
    return await list_portgroups(request, True)


@router.get("/v1/portgroups/{ident}")
async def get_portgroup(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 23)
    return JSON(await show_portgroup(c, await c.services.portgroups.get(ident)))


@router.get("/v1/portgroups/{ident}/ports", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORT_FILTERS))
async def get_portgroup_ports(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 24)
    group = await c.services.portgroups.get(ident)
    return await list_ports(request, False, {"portgroup_id": group.id})


@router.post("/v1/portgroups", status_code=201, openapi_extra=openapi.body(openapi.PORTGROUP_CREATE))
async def create_portgroup(request: Request) -> JSON:
    c = ctx(request)
    require(c, 23)
    group = await c.services.portgroups.create(await json_body(request))
    return JSON(
        await show_portgroup(c, group),
        status_code=201,
        headers={"Location": f"{c.base}/v1/portgroups/{group.uuid}"},
    )


@router.patch("/v1/portgroups/{ident}", openapi_extra=openapi.body(openapi.JSON_PATCH))
async def patch_portgroup(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 23)
    group = await c.services.portgroups.update(ident, await json_body(request, list))
    return JSON(await show_portgroup(c, group))


@router.delete("/v1/portgroups/{ident}", status_code=204)
async def delete_portgroup(request: Request, ident: str) -> Response:
    c = ctx(request)
    require(c, 23)
    await c.services.portgroups.delete(ident)
    return Response(status_code=204)
