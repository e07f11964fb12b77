"""Ironic's wire shape for nodes, ports, port groups, allocations, volumes, drivers and events, per
microversion.

Each resource has a table of its fields with the microversion that introduced them: a client asking
for an older version sees exactly the fields it knows. Secrets are masked here, the one place every
response passes through, by the rule of bootforge.masking (secret-named keys at any depth, through
lists too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from bootforge.api.versions import Version
from bootforge.errors import InvalidInput
from bootforge.masking import INSTANCE_SECRETS as INSTANCE_SECRETS
from bootforge.masking import MASK as MASK
from bootforge.masking import SECRET_MARKERS as SECRET_MARKERS
from bootforge.masking import is_secret_key as is_secret_key
from bootforge.masking import mask_node_field, mask_tree

# field -> minor version that introduced it (all are 1.x)
NODE_FIELDS: dict[str, int] = {
    "uuid": 1,
    "name": 5,
    "driver": 1,
    "driver_info": 1,
    "driver_internal_info": 3,
    "instance_info": 1,
    "instance_uuid": 1,
    "properties": 1,
    "extra": 1,
    "chassis_uuid": 1,
    "power_state": 1,
    "target_power_state": 1,
    "provision_state": 1,
    "target_provision_state": 1,
    "provision_updated_at": 1,
    "last_error": 1,
    "maintenance": 1,
    "maintenance_reason": 1,
    "console_enabled": 1,
    "reservation": 1,
    "created_at": 1,
    "updated_at": 1,
    "inspection_started_at": 6,
    "inspection_finished_at": 6,
    "clean_step": 7,
    "raid_config": 12,
    "target_raid_config": 12,
    "network_interface": 20,
    "resource_class": 21,
    "boot_interface": 31,
    "console_interface": 31,
    "deploy_interface": 31,
    "inspect_interface": 31,
    "management_interface": 31,
    "power_interface": 31,
    "raid_interface": 31,
    "vendor_interface": 31,
    "storage_interface": 33,
    "traits": 37,
    "rescue_interface": 38,
    "bios_interface": 40,
    "fault": 42,
    "deploy_step": 44,
    "conductor_group": 46,
    "automated_clean": 47,
    "protected": 48,
    "protected_reason": 48,
    "conductor": 49,
    "owner": 50,
    "description": 51,
    "allocation_uuid": 52,
    "retired": 61,
    "retired_reason": 61,
    "lessee": 65,
    "network_data": 66,
    "boot_mode": 75,
    "secure_boot": 75,
}
NODE_LIST_FIELDS = ("uuid", "name", "instance_uuid", "power_state", "provision_state", "maintenance")
# Node fields that are not columns of the nodes table.
NODE_COMPUTED = {"traits", "conductor", "allocation_uuid", "chassis_uuid"}

PORT_FIELDS: dict[str, int] = {
    "uuid": 1,
    "address": 1,
    "node_uuid": 1,
    "extra": 1,
    "created_at": 1,
    "updated_at": 1,
    "internal_info": 18,
    "local_link_connection": 19,
    "pxe_enabled": 19,
    "portgroup_uuid": 24,
    "physical_network": 34,
    "is_smartnic": 53,
}
PORT_LIST_FIELDS = ("uuid", "address")

PORTGROUP_FIELDS: dict[str, int] = {
    "uuid": 23,
    "name": 23,
    "address": 23,
    "node_uuid": 23,
    "extra": 23,
    "internal_info": 23,
    "standalone_ports_supported": 23,
    "created_at": 23,
    "updated_at": 23,
    "mode": 26,
    "properties": 26,
}
PORTGROUP_LIST_FIELDS = ("uuid", "address", "name")

ALLOCATION_FIELDS: dict[str, int] = {
    "uuid": 52,
    "name": 52,
    "node_uuid": 52,
    "state": 52,
    "last_error": 52,
    "resource_class": 52,
    "traits": 52,
    "candidate_nodes": 52,
    "extra": 52,
    "created_at": 52,
    "updated_at": 52,
    "owner": 60,
}

VOLUME_CONNECTOR_FIELDS: dict[str, int] = {
    "uuid": 32,
    "node_uuid": 32,
    "type": 32,
    "connector_id": 32,
    "extra": 32,
    "created_at": 32,
    "updated_at": 32,
}
VOLUME_CONNECTOR_LIST_FIELDS = ("uuid", "node_uuid", "type", "connector_id")
VOLUME_TARGET_FIELDS: dict[str, int] = {
    "uuid": 32,
    "node_uuid": 32,
    "volume_type": 32,
    "properties": 32,
    "boot_index": 32,
    "volume_id": 32,
    "extra": 32,
    "created_at": 32,
    "updated_at": 32,
}
VOLUME_TARGET_LIST_FIELDS = ("uuid", "node_uuid", "volume_type", "boot_index", "volume_id")

EVENT_LIST_FIELDS = ("uuid", "created_at", "severity", "event")
EVENT_FIELDS = (*EVENT_LIST_FIELDS, "event_type", "conductor", "user")


def visible(table: Mapping[str, int], version: Version) -> list[str]:
    return [f for f, minor in table.items() if minor <= version.minor]


def check_fields(requested: str | None, table: Mapping[str, int], version: Version) -> list[str] | None:
    """The `fields=` query parameter as a list, or InvalidInput naming the fields not known."""
    if requested is None:
        return None
    names = [f.strip() for f in requested.split(",") if f.strip()]
    allowed = set(visible(table, version))
    bad = [f for f in names if f not in allowed]
    if bad:
        raise InvalidInput(f'Field(s) "{", ".join(bad)}" are not valid', "fields")
    if "uuid" not in names and "uuid" in allowed:
        names.append("uuid")
    return names


def list_fields(
    params: Mapping[str, str],
    table: Mapping[str, int],
    defaults: Iterable[str],
    version: Version,
    detail: bool,
) -> list[str]:
    """The fields a list request returns: `fields=`, or all with `detail`, or the list defaults."""
    if detail and "fields" in params:
        raise InvalidInput("Can not specify ?detail=True and fields in the same request.", "fields")
    chosen = check_fields(params.get("fields"), table, version)
    if chosen is not None:
        return chosen
    return visible(table, version) if detail else list(defaults)


def mask_secrets(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Secret-named keys masked at any depth, through objects and lists (bootforge.masking)."""
    if not info:
        return {}
    masked: dict[str, Any] = mask_tree(info)
    return masked


def _links(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    return [
        {"href": f"{base}/v1/{kind}/{ident}", "rel": "self"},
        {"href": f"{base}/{kind}/{ident}", "rel": "bookmark"},
    ]


# The node fields mask_node_field changes; the others are copied as they are (the list's hot path).
_MASKED_NODE_FIELDS = frozenset({"driver_info", "instance_info", "driver_internal_info"})
# A node's sub-resource links by the minor version that introduced each (Ironic's order).
_NODE_SUBLINKS = (("ports", "/ports", 1), ("states", "/states", 14), ("portgroups", "/portgroups", 24))
_NODE_VOLUME_MINOR = 32


def node(
    row: Mapping[str, Any], version: Version, base: str, fields: Iterable[str], *, links: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        value = row.get(f)
        out[f] = mask_node_field(f, value) if f in _MASKED_NODE_FIELDS else value
    if links:
        # The same links as _links(base, "nodes", ...) gives, with the two prefixes built once per
        # node: a page of 1,000 nodes carries 10,000 of them, and building each from parts cost more
        # than the rest of the page.
        uuid = row["uuid"]
        own = f"{base}/v1/nodes/{uuid}"
        mark = f"{base}/nodes/{uuid}"
        out["links"] = [{"href": own, "rel": "self"}, {"href": mark, "rel": "bookmark"}]
        minor = version.minor
        for key, suffix, since in _NODE_SUBLINKS:
            if minor >= since:
                out[key] = [{"href": own + suffix, "rel": "self"}, {"href": mark + suffix, "rel": "bookmark"}]
        if minor >= _NODE_VOLUME_MINOR:
            out["volume"] = [
                {"href": own + "/volume", "rel": "self"},
                {"href": mark + "/volume", "rel": "bookmark"},
            ]
    return out


def port(row: Mapping[str, Any], version: Version, base: str, fields: Iterable[str]) -> dict[str, Any]:
    out = {f: row.get(f) for f in fields}
    out["links"] = _links(base, "ports", row["uuid"])
    return out


def portgroup(row: Mapping[str, Any], version: Version, base: str, fields: Iterable[str]) -> dict[str, Any]:
    out = {f: row.get(f) for f in fields}
    out["links"] = _links(base, "portgroups", row["uuid"])
    if version.minor >= 24:
        out["ports"] = _links(base, "portgroups", f"{row['uuid']}/ports")
    return out


def allocation(row: Mapping[str, Any], version: Version, base: str, fields: Iterable[str]) -> dict[str, Any]:
    out = {f: row.get(f) for f in fields}
    out["links"] = _links(base, "allocations", row["uuid"])
    return out


def volume_connector(row: Mapping[str, Any], base: str, fields: Iterable[str]) -> dict[str, Any]:
    out = {f: row.get(f) for f in fields}
    out["links"] = _links(base, "volume/connectors", row["uuid"])
    return out


def volume_target(row: Mapping[str, Any], base: str, fields: Iterable[str]) -> dict[str, Any]:
    # CHAP credentials (auth_password) by the one masking rule; stored sealed, they mask the same.
    out = {f: (mask_secrets(row.get(f)) if f == "properties" else row.get(f)) for f in fields}
    out["links"] = _links(base, "volume/targets", row["uuid"])
    return out


def event(row: Mapping[str, Any], base: str, node_uuid: str, detail: bool) -> dict[str, Any]:
    out = {f: row.get(f) for f in (EVENT_FIELDS if detail else EVENT_LIST_FIELDS)}
    out["links"] = _links(base, "nodes", f"{node_uuid}/history/{row['uuid']}")
    return out


def collection(
    name: str, items: list[dict[str, Any]], limit: int | None, base: str, path: str, query: dict[str, str]
) -> dict[str, Any]:
    """{name: items} plus Ironic's `next` link when the page is full."""
    out: dict[str, Any] = {name: items}
    if limit and len(items) == limit:
        params = {k: v for k, v in query.items() if k not in ("marker", "limit")}
        params["limit"] = str(limit)
        params["marker"] = items[-1]["uuid"]
        out["next"] = f"{base}{path}?{urlencode(params)}"
    return out
