"""/v1/volume (connectors and targets) and /v1/nodes/{ident}/volume: Ironic's boot-from-volume API (1.32).

The rules (types, uniqueness, the node powered off for changes) live in conductor/volumes.py; this
module shapes Ironic's answers. As in Ironic, a list has no /detail sub-resource (`?detail=true`),
and a node's volume resources are read-only under the node.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi, views
from bootforge.api.deps import Ctx, ctx, json_body, require
from bootforge.api.responses import JSON
from bootforge.conductor import reads
from bootforge.conductor.task import load_node
from bootforge.conductor.volumes import VolumeService
from bootforge.db.models import VolumeConnector, VolumeTarget
from bootforge.db.queries import parse_bool, parse_page

router = APIRouter()

VERSION = 32
CONNECTOR_SORTABLE = {"id", "uuid", "type", "connector_id", "created_at", "updated_at"}
TARGET_SORTABLE = {"id", "uuid", "volume_type", "boot_index", "volume_id", "created_at", "updated_at"}
KINDS: dict[str, tuple[Any, dict[str, int], tuple[str, ...], set[str]]] = {
    "connectors": (
        VolumeConnector,
        views.VOLUME_CONNECTOR_FIELDS,
        views.VOLUME_CONNECTOR_LIST_FIELDS,
        CONNECTOR_SORTABLE,
    ),
    "targets": (VolumeTarget, views.VOLUME_TARGET_FIELDS, views.VOLUME_TARGET_LIST_FIELDS, TARGET_SORTABLE),
}


def service(c: Ctx) -> VolumeService:
    return VolumeService(c.services.conductor)


def _link(base: str, path: str) -> list[dict[str, str]]:
    return [{"href": f"{base}/v1/{path}", "rel": "self"}, {"href": f"{base}/{path}", "rel": "bookmark"}]


async def _dicts(c: Ctx, kind: str, rows: list[Any], fields: list[str]) -> list[dict[str, Any]]:
    nodes = await reads.node_uuids(c.services.conductor.db, {r["node_id"] for r in rows})
    shape = views.volume_connector if kind == "connectors" else views.volume_target
    return [shape({**dict(r), "node_uuid": nodes.get(r["node_id"])}, c.base, fields) for r in rows]


async def _list(request: Request, kind: str, node_ident: str | None = None) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    model, table, defaults, sortable = KINDS[kind]
    p = c.params
    detail = bool(parse_bool(p, "detail"))
    fields = views.list_fields(p, table, defaults, c.version, detail)
    page = parse_page(p, sortable)
    equal: dict[str, Any] = {}
    ident = node_ident or p.get("node")
    if ident:
        equal["node_id"] = (await load_node(c.services.conductor, ident)).id
    columns = sorted({"id", "uuid", "node_id"} | {f for f in fields if f != "node_uuid"})
    rows = await reads.rows(c.services.conductor.db, model, columns, page, equal)
    items = await _dicts(c, kind, rows, fields)
    return JSON(views.collection(kind, items, page.limit, c.base, request.url.path, p))


async def _one(
    c: Ctx, kind: str, row: Any, node_uuid: str | None = None, fields: list[str] | None = None
) -> Any:
    table = KINDS[kind][1]
    fields = fields or views.visible(table, c.version)
    data = {col: getattr(row, col) for col in (*table, "node_id") if hasattr(row, col)}
    if node_uuid is not None:
        shape = views.volume_connector if kind == "connectors" else views.volume_target
        return shape({**data, "node_uuid": node_uuid}, c.base, fields)
    return (await _dicts(c, kind, [data], fields))[0]


# --- /v1/volume ------------------------------------------------------------------------------------


@router.get("/v1/volume")
async def get_volume(request: Request) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    return JSON(
        {
            "links": _link(c.base, "volume/"),
            "connectors": _link(c.base, "volume/connectors"),
            "targets": _link(c.base, "volume/targets"),
        }
    )


LIST = openapi.query(*openapi.LIST, openapi.query_param("node", "Only this node's (UUID or name)"))


@router.get("/v1/volume/connectors", openapi_extra=LIST)
async def get_connectors(request: Request) -> JSON:
    return await _list(request, "connectors")


@router.get("/v1/volume/connectors/{connector_uuid}", openapi_extra=openapi.query(openapi.FIELDS))
async def get_connector(request: Request, connector_uuid: str) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    fields = views.check_fields(c.params.get("fields"), views.VOLUME_CONNECTOR_FIELDS, c.version)
    row = await service(c).get_connector(connector_uuid)
    return JSON(await _one(c, "connectors", row, fields=fields))


@router.post(
    "/v1/volume/connectors", status_code=201, openapi_extra=openapi.body(openapi.VOLUME_CONNECTOR_CREATE)
)
async def create_connector(request: Request) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    row, node_uuid = await service(c).create_connector(await json_body(request))
    location = f"{c.base}/v1/volume/connectors/{row.uuid}"
    return JSON(await _one(c, "connectors", row, node_uuid), status_code=201, headers={"Location": location})


@router.patch("/v1/volume/connectors/{connector_uuid}", openapi_extra=openapi.body(openapi.JSON_PATCH))
async def patch_connector(request: Request, connector_uuid: str) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    row, node_uuid = await service(c).update_connector(connector_uuid, await json_body(request, list))
    return JSON(await _one(c, "connectors", row, node_uuid))


@router.delete("/v1/volume/connectors/{connector_uuid}", status_code=204)
async def delete_connector(request: Request, connector_uuid: str) -> Response:
    c = ctx(request)
    require(c, VERSION)
    await service(c).delete_connector(connector_uuid)
    return Response(status_code=204)


@router.get("/v1/volume/targets", openapi_extra=LIST)
async def get_targets(request: Request) -> JSON:
    return await _list(request, "targets")


@router.get("/v1/volume/targets/{target_uuid}", openapi_extra=openapi.query(openapi.FIELDS))
async def get_target(request: Request, target_uuid: str) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    fields = views.check_fields(c.params.get("fields"), views.VOLUME_TARGET_FIELDS, c.version)
    row = await service(c).get_target(target_uuid)
    return JSON(await _one(c, "targets", row, fields=fields))


@router.post("/v1/volume/targets", status_code=201, openapi_extra=openapi.body(openapi.VOLUME_TARGET_CREATE))
async def create_target(request: Request) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    row, node_uuid = await service(c).create_target(await json_body(request))
    location = f"{c.base}/v1/volume/targets/{row.uuid}"
    return JSON(await _one(c, "targets", row, node_uuid), status_code=201, headers={"Location": location})


@router.patch("/v1/volume/targets/{target_uuid}", openapi_extra=openapi.body(openapi.JSON_PATCH))
async def patch_target(request: Request, target_uuid: str) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    row, node_uuid = await service(c).update_target(target_uuid, await json_body(request, list))
    return JSON(await _one(c, "targets", row, node_uuid))


@router.delete("/v1/volume/targets/{target_uuid}", status_code=204)
async def delete_target(request: Request, target_uuid: str) -> Response:
    c = ctx(request)
    require(c, VERSION)
    await service(c).delete_target(target_uuid)
    return Response(status_code=204)


# --- /v1/nodes/{ident}/volume ----------------------------------------------------------------------


@router.get("/v1/nodes/{ident}/volume")
async def get_node_volume(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, VERSION)
    node = await load_node(c.services.conductor, ident)
    base = f"nodes/{node.uuid}/volume"
    return JSON(
        {
            "links": _link(c.base, f"{base}/"),
            "connectors": _link(c.base, f"{base}/connectors"),
            "targets": _link(c.base, f"{base}/targets"),
        }
    )


NODE_LIST = openapi.query(*openapi.LIST)


@router.get("/v1/nodes/{ident}/volume/connectors", openapi_extra=NODE_LIST)
async def get_node_connectors(request: Request, ident: str) -> JSON:
    return await _list(request, "connectors", ident)


@router.get("/v1/nodes/{ident}/volume/targets", openapi_extra=NODE_LIST)
async def get_node_targets(request: Request, ident: str) -> JSON:
    return await _list(request, "targets", ident)
