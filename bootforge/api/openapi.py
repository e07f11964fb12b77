"""What /openapi.json says about each route: request bodies, query parameters, the microversion header,
the error body and the authentication.

The routes read their JSON bodies and query strings themselves (deps.json_body, Ctx.params): their own
checks stay the source of truth, naming the field in every error, and cost nothing extra per request.
These schemas only describe those checks, for users and for the API fuzzer (tests/integration/
test_api_fuzz.py): a route passes them to FastAPI as `openapi_extra`, which is read when the document is
built, never on a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bootforge import boot_token
from bootforge.api import versions
from bootforge.conductor.reads import NODE_STRING_FILTERS
from bootforge.drivers.hardware import INTERFACE_TYPES

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
OBJECT: Schema = {"type": "object"}
NULLABLE_OBJECT: Schema = {"type": ["object", "null"]}
BOOLEAN: Schema = {"type": "boolean"}
UUID: Schema = {"type": "string", "format": "uuid"}
MAC: Schema = {"type": "string", "description": "A MAC address, e.g. 52:54:00:12:34:56"}
TRAITS: Schema = {
    "type": "array",
    "items": {"type": "string", "pattern": "^(CUSTOM_)?[A-Z0-9_]+$", "maxLength": 255},
    "maxItems": 50,
}

# --- bodies ----------------------------------------------------------------------------------------

# RFC 6902 as the handlers take it (conductor/patching.py): a list of operations on "/field[/key...]".
JSON_PATCH: Schema = {
    "type": "array",
    "description": "A JSON-PATCH (RFC 6902) document: the operations apply in order, all or none.",
    "items": {
        "type": "object",
        "required": ["op", "path"],
        "properties": {
            "op": {"enum": ["add", "replace", "remove", "test", "move", "copy"]},
            "path": {"type": "string", "pattern": "^/", "description": "e.g. /driver_info/ipmi_address"},
            "value": {"description": "The new value (add, replace) or the expected one (test)"},
            "from": {"type": "string", "pattern": "^/", "description": "The source path (move, copy)"},
        },
    },
}

_INTERFACES: Schema = {f"{kind}_interface": NULLABLE_STRING for kind in INTERFACE_TYPES}
NODE_CREATE: Schema = {
    "type": "object",
    "description": "A node to enrol (Ironic v1). Only `driver` is required.",
    "required": ["driver"],
    "additionalProperties": False,
    "properties": {
        "uuid": UUID,
        "name": {**NULLABLE_STRING, "pattern": "^[A-Za-z0-9\\-._~]+$", "maxLength": 255},
        "driver": {**STRING, "description": "An enabled hardware type, e.g. ipmi, redfish, qemu"},
        "driver_info": {**OBJECT, "description": "How to reach the BMC; secrets are write-only"},
        "properties": OBJECT,
        "extra": OBJECT,
        "instance_info": OBJECT,
        "network_data": OBJECT,
        "resource_class": NULLABLE_STRING,
        "description": NULLABLE_STRING,
        "owner": NULLABLE_STRING,
        "lessee": NULLABLE_STRING,
        "conductor_group": STRING,
        "automated_clean": {"type": ["boolean", "null"]},
        "chassis_uuid": {"type": ["string", "null"]},
        "provision_state": {"enum": ["enroll"], "description": "Only enroll may be given"},
        **_INTERFACES,
    },
}

PORT_CREATE: Schema = {
    "type": "object",
    "required": ["address", "node_uuid"],
    "additionalProperties": False,
    "properties": {
        "uuid": UUID,
        "address": MAC,
        "node_uuid": {**STRING, "description": "The node's UUID (or name)"},
        "portgroup_uuid": NULLABLE_STRING,
        "pxe_enabled": BOOLEAN,
        "local_link_connection": {
            "type": "object",
            "properties": {k: STRING for k in ("switch_id", "port_id", "switch_info", "network_type")},
            "additionalProperties": False,
        },
        "physical_network": NULLABLE_STRING,
        "is_smartnic": BOOLEAN,
        "extra": OBJECT,
    },
}

PORTGROUP_CREATE: Schema = {
    "type": "object",
    "required": ["node_uuid"],
    "additionalProperties": False,
    "properties": {
        "uuid": UUID,
        "name": NULLABLE_STRING,
        "address": {**MAC, "type": ["string", "null"]},
        "node_uuid": STRING,
        "mode": NULLABLE_STRING,
        "properties": OBJECT,
        "standalone_ports_supported": BOOLEAN,
        "extra": OBJECT,
    },
}

VOLUME_CONNECTOR_CREATE: Schema = {
    "type": "object",
    "description": "A volume connector (API 1.32): how the node reaches storage, e.g. its initiator IQN.",
    "required": ["node_uuid", "type", "connector_id"],
    "additionalProperties": False,
    "properties": {
        "uuid": UUID,
        "node_uuid": {**STRING, "description": "The node's UUID (or name)"},
        "type": {"enum": ["iqn", "ip", "mac", "wwnn", "wwpn", "port", "portgroup"]},
        "connector_id": {**STRING, "maxLength": 255, "description": "e.g. iqn.2024-01.org.example:node1"},
        "extra": OBJECT,
    },
}

VOLUME_TARGET_CREATE: Schema = {
    "type": "object",
    "description": "A volume target (API 1.32); boot_index 0 is the volume the node boots from.",
    "required": ["node_uuid", "volume_type", "boot_index", "volume_id"],
    "additionalProperties": False,
    "properties": {
        "uuid": UUID,
        "node_uuid": {**STRING, "description": "The node's UUID (or name)"},
        "volume_type": {**STRING, "maxLength": 64, "description": "e.g. iscsi"},
        "boot_index": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "volume_id": {**STRING, "maxLength": 255},
        "properties": {
            **OBJECT,
            "description": (
                "iscsi: target_iqn, target_portal (host:port), target_lun (0-255), auth_method "
                "(CHAP), auth_username, auth_password (write-only)"
            ),
        },
        "extra": OBJECT,
    },
}

ALLOCATION_CREATE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "description": "Either resource_class or node (backfill an allocation onto a deployed node).",
    "properties": {
        "uuid": UUID,
        "name": NULLABLE_STRING,
        "resource_class": NULLABLE_STRING,
        "traits": TRAITS,
        "candidate_nodes": {"type": "array", "items": STRING},
        "extra": OBJECT,
        "owner": NULLABLE_STRING,
        "node": {**NULLABLE_STRING, "description": "A node's UUID or name (API 1.58)"},
    },
}

PROVISION: Schema = {
    "type": "object",
    "required": ["target"],
    "additionalProperties": False,
    "properties": {
        "target": {
            "description": "The verb; which ones exist depends on the microversion",
            "enum": [
                "active",
                "deleted",
                "rebuild",
                "manage",
                "provide",
                "inspect",
                "abort",
                "clean",
                "adopt",
                "rescue",
                "unrescue",
                "deploy",
                "undeploy",
                "unhold",
            ],
        },
        "configdrive": {"type": ["string", "object", "null"], "description": "active, deploy, rebuild"},
        "clean_steps": {"type": "array", "items": OBJECT},
        "deploy_steps": {"type": "array", "items": OBJECT},
        "rescue_password": STRING,
        "disable_ramdisk": BOOLEAN,
    },
}

POWER: Schema = {
    "type": "object",
    "required": ["target"],
    "properties": {
        "target": {"enum": ["power on", "power off", "rebooting", "soft power off", "soft rebooting"]},
        "timeout": {"type": "integer", "minimum": 1, "description": "Seconds (API 1.27)"},
    },
}

BOOT_DEVICE: Schema = {
    "type": "object",
    "required": ["boot_device"],
    "properties": {
        "boot_device": {**STRING, "description": "One of the node's supported boot devices, e.g. pxe, disk"},
        "persistent": BOOLEAN,
    },
}

MAINTENANCE: Schema = {"type": "object", "properties": {"reason": STRING}}

TRAITS_BODY: Schema = {"type": "object", "required": ["traits"], "properties": {"traits": TRAITS}}

IMAGE_CREATE: Schema = {
    "type": "object",
    "required": ["name", "source"],
    "additionalProperties": False,
    "properties": {
        "name": {**STRING, "minLength": 1},
        "source": {**STRING, "minLength": 1, "description": "A file in a configured directory, or a URL"},
        "cpu_arch": {
            **NULLABLE_STRING,
            "description": "x86_64 or aarch64; unset: as the image's EFI System Partition shows, else any",
        },
    },
}

AGENT_REPORT: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["running", "succeeded", "failed"]},
        "progress": OBJECT,
        "result": {**OBJECT, "description": "The command's result (succeeded); e.g. an inventory"},
        "error": STRING,
    },
}

ERROR: Schema = {
    "type": "object",
    "required": ["error_message"],
    "properties": {
        "error_message": {
            "type": "string",
            "description": 'JSON text: {"faultstring": ..., "faultcode": ..., "debuginfo": null}',
        }
    },
}

# --- query parameters ------------------------------------------------------------------------------


def query_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or STRING,
    }


FIELDS = query_param("fields", "Comma-separated fields to return")
DETAIL = query_param("detail", "true: every field", BOOLEAN)
PAGE = [
    query_param(
        "limit", "At most this many (0 or over the maximum: the maximum)", {"type": "integer", "minimum": 0}
    ),
    query_param("marker", "The UUID of the last item of the previous page"),
    query_param("sort_key", "The field to sort by"),
    query_param("sort_dir", "asc or desc", {"enum": ["asc", "desc"]}),
]
LIST = [*PAGE, FIELDS, DETAIL]
NODE_FILTERS = [
    *(
        query_param(name, f"Only nodes with this {name}")
        for name in (*NODE_STRING_FILTERS, "chassis_uuid", "description_contains")
    ),
    *(query_param(name, f"Only nodes with this {name} flag", BOOLEAN) for name in ("maintenance", "retired")),
    query_param("associated", "Only nodes with (true) or without (false) an instance", BOOLEAN),
]
PORT_FILTERS = [
    query_param("address", "Only the port with this MAC address"),
    query_param("node", "Only ports of this node (UUID or name)"),
    query_param("node_uuid", "Only ports of this node"),
    query_param("portgroup", "Only ports of this port group (UUID or name)"),
]
PORTGROUP_FILTERS = [
    query_param("address", "Only the port group with this MAC address"),
    query_param("node", "Only port groups of this node (UUID or name)"),
]
ALLOCATION_FILTERS = [
    *(
        query_param(name, f"Only allocations with this {name}")
        for name in ("state", "resource_class", "owner")
    ),
    query_param("node", "Only the allocation of this node (UUID or name)"),
]

AGENT_TOKEN: Schema = {
    "name": "X-Agent-Token",
    "in": "header",
    "required": False,
    "description": "The token the agent got from its lookup",
    "schema": STRING,
}
LOOKUP = [
    {
        "name": boot_token.HEADER,
        "in": "header",
        "required": False,
        "description": (
            "The boot token on the ramdisk's kernel command line (bootforge.boot_token=): required "
            "unless agent.require_boot_token is off"
        ),
        "schema": {"type": "string", "pattern": f"^[0-9a-f]{{{boot_token.TOKEN_CHARS}}}$"},
    },
    query_param("addresses", "The agent's MAC addresses, comma-separated"),
    query_param("node_uuid", "The node the agent believes it runs on"),
]
AGENT_POLL = [
    AGENT_TOKEN,
    query_param("wait", "Seconds to wait for a command (at most 120)", {"type": "number", "minimum": 0}),
]

# Server-sent events: the stream runs until the client leaves.
EVENT_STREAM: dict[str, Any] = {
    "responses": {
        "200": {
            "description": "A text/event-stream of events, with keep-alive comments",
            # Each event as schema tools read it: its `event` kind, `id` and `data` (a JSON text).
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {"event": STRING, "id": STRING, "data": STRING},
                    }
                }
            },
        }
    }
}
EVENTS = [
    query_param("types", "Comma-separated event kinds (all when absent)"),
    query_param("node", "Only this node's events (UUID or name)"),
]
TIMELINE = [
    query_param(
        "history", "How many past rows to send first (default 50)", {"type": "integer", "minimum": 0}
    ),
    query_param("after", "Resume after this row id (as Last-Event-ID)", {"type": "integer", "minimum": 0}),
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this row id",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
]


def body(schema: Schema, *, required: bool = True) -> dict[str, Any]:
    """openapi_extra for a route whose handler reads a JSON body of this shape."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def query(*params: Schema) -> dict[str, Any]:
    """openapi_extra for a route whose handler reads these query parameters."""
    return {"parameters": list(params)}


# --- the whole document ----------------------------------------------------------------------------

VERSION_HEADER: Schema = {
    "name": "X-OpenStack-Ironic-API-Version",
    "in": "header",
    "required": False,
    "description": f"The microversion, {versions.MIN} to {versions.MAX} (default {versions.MIN})",
    "schema": {"enum": [*(f"1.{m}" for m in range(versions.MIN.minor, versions.MAX.minor + 1)), "latest"]},
}
ERROR_RESPONSE: Schema = {
    "description": "The request was refused; the message names the field or the reason",
    "content": {"application/json": {"schema": ERROR}},
}


def install(app: FastAPI, public: Callable[[str], bool], *, authenticated: bool) -> None:
    """Serve a complete document at /openapi.json: FastAPI's, plus what every route shares.

    With `authenticated` (auth_strategy http_basic), the routes for which `public(path)` is false
    (all but version discovery and the agent's) need HTTP basic authentication.
    """

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=str(versions.MAX), description=app.description, routes=app.routes
        )
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = ERROR
        if authenticated:
            components["securitySchemes"] = {"http_basic": {"type": "http", "scheme": "basic"}}
        for path, item in doc.get("paths", {}).items():
            for operation in item.values():
                operation.setdefault("parameters", []).append(VERSION_HEADER)
                responses = operation.setdefault("responses", {})
                for bare in ("202", "204"):  # accepted / done: these answers have no body
                    responses.get(bare, {}).pop("content", None)
                content = responses.get("200", {}).get("content", {})
                if "text/event-stream" in content:
                    content.pop("application/json", None)  # FastAPI's default: a stream is not JSON
                # The handlers answer 400 with Ironic's error body, not FastAPI's 422.
                responses.pop("422", None)
                responses.setdefault("400", ERROR_RESPONSE)
                responses.setdefault("404", ERROR_RESPONSE)
                responses.setdefault("406", ERROR_RESPONSE)
                # Every other refusal (409 conflict or lock, 403 protected, 413/431 limits, ...) has the
                # same body.
                responses.setdefault("default", ERROR_RESPONSE)
                if authenticated and not public(path):
                    operation["security"] = [{"http_basic": []}]
                    responses.setdefault("401", ERROR_RESPONSE)
                    responses.setdefault("429", ERROR_RESPONSE)
        # FastAPI's HTTPValidationError schemas describe a 422 this service never sends.
        for name in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(name, None)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
