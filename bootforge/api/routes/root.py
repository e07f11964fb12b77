"""Version discovery (/ and /v1), drivers and conductors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bootforge.api import openapi, versions
from bootforge.api.deps import Ctx, ctx, require
from bootforge.api.responses import JSON
from bootforge.conductor import reads
from bootforge.drivers.hardware import INTERFACE_TYPES, HardwareType
from bootforge.errors import NotFound

router = APIRouter()


def _version_doc(base: str) -> dict[str, Any]:
    return {
        "id": "v1",
        "links": [{"href": f"{base}/v1/", "rel": "self"}],
        "status": "CURRENT",
        "min_version": str(versions.MIN),
        "version": str(versions.MAX),
    }


@router.get("/")
async def root(request: Request) -> JSON:
    c = ctx(request)
    doc = _version_doc(c.base)
    return JSON(
        {
            "name": "OpenStack Ironic API",
            "description": "bootforge: bare metal provisioning with an Ironic v1 compatible API.",
            "default_version": doc,
            "versions": [doc],
        }
    )


@router.get("/v1")
@router.get("/v1/")
async def v1(request: Request) -> JSON:
    c = ctx(request)
    link = {"href": f"{c.base}/v1/", "rel": "self"}
    doc: dict[str, Any] = {
        "id": "v1",
        "links": [link],
        "media_types": [{"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"}],
        "version": _version_doc(c.base),
    }
    for name in ("nodes", "ports", "portgroups", "drivers", "allocations", "conductors", "volume"):
        doc[name] = [
            {"href": f"{c.base}/v1/{name}/", "rel": "self"},
            {"href": f"{c.base}/{name}/", "rel": "bookmark"},
        ]
    return JSON(doc)


async def _driver_doc(c: Ctx, hw: HardwareType, detail: bool) -> dict[str, Any]:
    hosts = await c.services.conductor.live_hosts()
    doc: dict[str, Any] = {
        "name": hw.name,
        "hosts": hosts,
        "type": "dynamic",
        "links": [
            {"href": f"{c.base}/v1/drivers/{hw.name}", "rel": "self"},
            {"href": f"{c.base}/drivers/{hw.name}", "rel": "bookmark"},
        ],
        "properties": [
            {"href": f"{c.base}/v1/drivers/{hw.name}/properties", "rel": "self"},
            {"href": f"{c.base}/drivers/{hw.name}/properties", "rel": "bookmark"},
        ],
    }
    if detail:
        for kind in INTERFACE_TYPES:
            if kind == "firmware" and c.version.minor < 86:
                continue
            doc[f"default_{kind}_interface"] = hw.default(kind)
            doc[f"enabled_{kind}_interfaces"] = hw.supported(kind)
    return doc


@router.get(
    "/v1/drivers",
    openapi_extra=openapi.query(
        openapi.DETAIL, openapi.query_param("type", "classic lists none", {"enum": ["classic", "dynamic"]})
    ),
)
async def list_drivers(request: Request) -> JSON:
    c = ctx(request)
    if c.params.get("type") == "classic":
        return JSON({"drivers": []})
    detail = c.params.get("detail", "").lower() in ("true", "1")
    drivers = c.services.conductor.drivers
    return JSON({"drivers": [await _driver_doc(c, hw, detail) for hw in drivers.types.values()]})


@router.get("/v1/drivers/{name}")
async def get_driver(request: Request, name: str) -> JSON:
    c = ctx(request)
    return JSON(await _driver_doc(c, c.services.conductor.drivers.get_type(name), True))


@router.get("/v1/drivers/{name}/properties")
async def driver_properties(request: Request, name: str) -> JSON:
    c = ctx(request)
    drivers = c.services.conductor.drivers
    hw = drivers.get_type(name)
    props: dict[str, str] = {}
    for kind in INTERFACE_TYPES:
        _default, factory = hw.interfaces[kind][0]
        props.update(factory(drivers.settings).get_properties())
    return JSON(props)


@router.get("/v1/conductors", openapi_extra=openapi.query(openapi.DETAIL))
async def list_conductors(request: Request) -> JSON:
    c = ctx(request)
    require(c, 49)
    live = set(await c.services.conductor.live_hosts())
    rows = await reads.conductors(c.services.conductor.db)
    detail = c.params.get("detail", "").lower() in ("true", "1")
    out = []
    for r in rows:
        doc: dict[str, Any] = {
            "hostname": r.hostname,
            "conductor_group": r.conductor_group,
            "alive": r.hostname in live,
            "links": [{"href": f"{c.base}/v1/conductors/{r.hostname}", "rel": "self"}],
        }
        if detail:
            doc.update(drivers=r.hardware_types, created_at=r.created_at, updated_at=r.heartbeat_at)
        out.append(doc)
    return JSON({"conductors": out})


@router.get("/v1/conductors/{hostname}")
async def get_conductor(request: Request, hostname: str) -> JSON:
    c = ctx(request)
    require(c, 49)
    r = await reads.conductor(c.services.conductor.db, hostname)
    if r is None:
        raise NotFound(f"Conductor {hostname} could not be found.")
    live = set(await c.services.conductor.live_hosts())
    return JSON(
        {
            "hostname": r.hostname,
            "conductor_group": r.conductor_group,
            "alive": r.hostname in live,
            "drivers": r.hardware_types,
            "created_at": r.created_at,
            "updated_at": r.heartbeat_at,
            "links": [{"href": f"{c.base}/v1/conductors/{r.hostname}", "rel": "self"}],
        }
    )
