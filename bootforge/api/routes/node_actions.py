"""/v1/nodes/{ident}/...: states, provisioning and power verbs, boot device, validate, maintenance,
traits, history, and the node's ports, port groups and allocation; and bootforge's own /bmc check."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge import masking
from bootforge.api import openapi, views
from bootforge.api.deps import ctx, json_body, require
from bootforge.api.responses import JSON
from bootforge.api.routes.ports import list_portgroups, list_ports
from bootforge.conductor import reads, states
from bootforge.conductor.task import load_node
from bootforge.db.queries import parse_limit
from bootforge.errors import InvalidInput, NotFound

router = APIRouter(prefix="/v1/nodes/{ident}")

# The microversion that introduced each provisioning verb.
VERB_MIN_VERSION = {
    "active": 1,
    "deleted": 1,
    "rebuild": 1,
    "manage": 4,
    "provide": 4,
    "inspect": 6,
    "abort": 13,
    "clean": 15,
    "adopt": 17,
    "rescue": 38,
    "unrescue": 38,
    "deploy": 73,
    "undeploy": 73,
    "unhold": 85,
}
SOFT_POWER = {"soft power off", "soft rebooting"}


def accepted(location: str) -> Response:
    return Response(status_code=202, headers={"Location": location})


@router.get("/states")
async def get_states(request: Request, ident: str) -> JSON:
    c = ctx(request)
    node = await load_node(c.services.conductor, ident)
    body = {
        "power_state": node.power_state,
        "target_power_state": node.target_power_state,
        "provision_state": node.provision_state,
        "target_provision_state": node.target_provision_state,
        "provision_updated_at": node.provision_updated_at,
        "last_error": node.last_error,
        "console_enabled": node.console_enabled,
        "raid_config": node.raid_config,
        "target_raid_config": node.target_raid_config,
    }
    if c.version.minor >= 75:
        body.update(boot_mode=node.boot_mode, secure_boot=node.secure_boot)
    return JSON(body)


@router.put("/states/provision", status_code=202, openapi_extra=openapi.body(openapi.PROVISION))
async def set_provision_state(request: Request, ident: str) -> Response:
    c = ctx(request)
    body = await json_body(request, large=("configdrive",))
    verb = body.get("target")
    if (
        not isinstance(verb, str)
        or VERB_MIN_VERSION.get(verb, 999) > c.version.minor
        or verb not in states.VERB_EVENTS
    ):
        known = sorted(v for v, m in VERB_MIN_VERSION.items() if m <= c.version.minor)
        raise InvalidInput(
            f"The requested action {verb!r} could not be understood; at API version {c.version} the "
            f"actions are: {', '.join(known)}",
            "target",
        )
    unknown = set(body) - {
        "target",
        "configdrive",
        "clean_steps",
        "deploy_steps",
        "rescue_password",
        "disable_ramdisk",
    }
    if unknown:
        raise InvalidInput(
            f"Unknown attribute(s) for the provision request: {', '.join(sorted(unknown))}",
            sorted(unknown)[0],
        )
    if body.get("configdrive") is not None and verb not in ("active", "deploy", "rebuild"):
        raise InvalidInput(
            f"configdrive may only be given with the deploy or rebuild actions, not {verb!r}", "configdrive"
        )
    await c.services.nodes.provision(ident, verb, body)
    return accepted(f"{c.base}/v1/nodes/{ident}/states")


@router.put("/states/power", status_code=202, openapi_extra=openapi.body(openapi.POWER))
async def set_power_state(request: Request, ident: str) -> Response:
    c = ctx(request)
    body = await json_body(request)
    target = body.get("target")
    if not isinstance(target, str):
        raise InvalidInput("target is required: one of power on, power off, rebooting", "target")
    if (target in SOFT_POWER or "timeout" in body) and c.version.minor < 27:
        raise InvalidInput("soft power actions and timeout need API version 1.27 or later", "target")
    await c.services.nodes.power(ident, target, body.get("timeout"))
    return accepted(f"{c.base}/v1/nodes/{ident}/states")


@router.get("/management/boot_device")
async def get_boot_device(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.nodes.get_boot_device(ident))


@router.put("/management/boot_device", status_code=204, openapi_extra=openapi.body(openapi.BOOT_DEVICE))
async def set_boot_device(request: Request, ident: str) -> Response:
    c = ctx(request)
    body = await json_body(request)
    device = body.get("boot_device")
    if not isinstance(device, str):
        raise InvalidInput("boot_device is required", "boot_device")
    persistent = body.get("persistent", False)
    if not isinstance(persistent, bool):
        raise InvalidInput("persistent must be true or false", "persistent")
    await c.services.nodes.set_boot_device(ident, device, persistent)
    return Response(status_code=204)


@router.get("/management/boot_device/supported")
async def supported_boot_devices(request: Request, ident: str) -> JSON:
    devices = await ctx(request).services.nodes.supported_boot_devices(ident)
    return JSON({"supported_boot_devices": devices})


@router.get("/validate")
async def validate(request: Request, ident: str) -> JSON:
    return JSON(await ctx(request).services.nodes.validate(ident))


@router.get("/bmc")
async def bmc_check(request: Request, ident: str) -> JSON:
    """bootforge's own resource (Ironic has none): what the node's BMC offers, asked now.

    Answers 200 whether or not the BMC could be reached (`reachable` says); a read, so it takes no
    lock. Whatever the driver put in its messages, driver_info's secrets never leave in the answer.
    """
    check = await ctx(request).services.nodes.bmc_check(ident)
    node = check.node
    body = {
        "node_uuid": node.uuid,
        "name": node.name,
        "driver": node.driver,
        "interfaces": check.interfaces,
        "validation": check.validation,
        **asdict(check.report),
        "seconds": round(check.seconds, 3),
    }
    # The same rule as the node's masking (bootforge.masking): lists, *_credentials, *key, ...
    return JSON(masking.redact(body, masking.secret_values(node.driver_info)))


@router.put("/maintenance", status_code=202, openapi_extra=openapi.body(openapi.MAINTENANCE, required=False))
async def set_maintenance(request: Request, ident: str) -> Response:
    c = ctx(request)
    raw = await request.body()
    body = await json_body(request) if raw else {}
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("reason must be a string", "reason")
    await c.services.nodes.set_maintenance(ident, True, reason)
    return Response(status_code=202)


@router.delete("/maintenance", status_code=202)
async def unset_maintenance(request: Request, ident: str) -> Response:
    await ctx(request).services.nodes.set_maintenance(ident, False, None)
    return Response(status_code=202)


@router.get("/traits")
async def get_traits(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 37)
    return JSON({"traits": await c.services.nodes.traits(ident)})


@router.put("/traits", status_code=204, openapi_extra=openapi.body(openapi.TRAITS_BODY))
async def set_traits(request: Request, ident: str) -> Response:
    c = ctx(request)
    require(c, 37)
    body = await json_body(request)
    await c.services.nodes.set_traits(ident, body.get("traits"))
    return Response(status_code=204)


@router.put("/traits/{trait}", status_code=204)
async def add_trait(request: Request, ident: str, trait: str) -> Response:
    c = ctx(request)
    require(c, 37)
    await c.services.nodes.set_traits(ident, [trait], add=True)
    return Response(status_code=204)


@router.delete("/traits", status_code=204)
async def remove_all_traits(request: Request, ident: str) -> Response:
    c = ctx(request)
    require(c, 37)
    await c.services.nodes.remove_trait(ident, None)
    return Response(status_code=204)


@router.delete("/traits/{trait}", status_code=204)
async def remove_trait(request: Request, ident: str, trait: str) -> Response:
    c = ctx(request)
    require(c, 37)
    await c.services.nodes.remove_trait(ident, trait)
    return Response(status_code=204)


@router.get("/inventory")
async def inventory(request: Request, ident: str) -> JSON:
    """What inspection found, in Ironic's shape (API 1.81, which bootforge serves at any version)."""
    c = ctx(request)
    node = await load_node(c.services.conductor, ident)
    row = await reads.inventory(c.services.conductor.db, node.id)
    if row is None:
        raise NotFound(f"Node {node.uuid} has no inventory: inspect it first.")
    return JSON({"inventory": row.inventory, "plugin_data": row.plugin_data})


@router.get("/history", openapi_extra=openapi.query(*openapi.PAGE[:2], openapi.DETAIL))
async def history(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 78)
    node = await load_node(c.services.conductor, ident)
    detail = c.params.get("detail", "").lower() in ("true", "1")
    limit = parse_limit(c.params)
    rows = await reads.node_events(c.services.conductor.db, node.id, c.params.get("marker"), limit)
    items = [views.event(vars(r), c.base, node.uuid, detail) for r in rows]
    return JSON(views.collection("history", items, limit, c.base, request.url.path, c.params))


@router.get("/history/{event_uuid}")
async def history_event(request: Request, ident: str, event_uuid: str) -> JSON:
    c = ctx(request)
    require(c, 78)
    node = await load_node(c.services.conductor, ident)
    row = await reads.node_event(c.services.conductor.db, node.id, event_uuid)
    if row is None:
        raise NotFound(f"Node history record {event_uuid} could not be found.")
    return JSON(views.event(vars(row), c.base, node.uuid, True))


@router.get("/ports", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORT_FILTERS))
async def node_ports(request: Request, ident: str) -> JSON:
    node = await load_node(ctx(request).services.conductor, ident)
    return await list_ports(request, False, {"node_id": node.id})


@router.get("/ports/detail", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORT_FILTERS))
async def node_ports_detail(request: Request, ident: str) -> JSON:
    node = await load_node(ctx(request).services.conductor, ident)
    return await list_ports(request, True, {"node_id": node.id})


@router.get("/portgroups", openapi_extra=openapi.query(*openapi.LIST, *openapi.PORTGROUP_FILTERS))
async def node_portgroups(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 24)
    node = await load_node(c.services.conductor, ident)
    return await list_portgroups(request, False, {"node_id": node.id})


@router.get("/allocation")
async def node_allocation(request: Request, ident: str) -> JSON:
    c = ctx(request)
    require(c, 52)
    node = await load_node(c.services.conductor, ident)
    if node.allocation_id is None:
        raise NotFound(f"Node {node.uuid} has no allocation.")
    from bootforge.api.routes.allocations import allocation_dict

    uuid = await c.services.allocations.uuid_of(node.allocation_id)
    return JSON(await allocation_dict(c, await c.services.allocations.get(str(uuid))))
