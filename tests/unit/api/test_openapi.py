"""/openapi.json: a valid OpenAPI document that describes every route's parameters and body."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from support.service import InProcess

import bootforge.api.routes

# Every module of the routes package that has a router: a new one is checked without being listed here.
ROUTE_MODULES = tuple(
    module
    for info in pkgutil.iter_modules(bootforge.api.routes.__path__)
    if hasattr(module := importlib.import_module(f"bootforge.api.routes.{info.name}"), "router")
)
METHODS = ("get", "put", "post", "patch", "delete")


async def document(bf: InProcess) -> dict[str, Any]:
    r = await bf.client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def handler_reads(module: Any) -> dict[str, tuple[bool, set[str]]]:
    """For each route handler of `module`: whether it reads a JSON body, and the query parameters it
    reads by name (c.params.get("x"), c.params["x"], "x" in p, ...) in its own body.

    Read from the source, so a handler that starts reading a new parameter without describing it
    fails test_every_read_is_described.
    """
    tree = ast.parse(inspect.getsource(module))
    out: dict[str, tuple[bool, set[str]]] = {}
    for fn in tree.body:
        if not isinstance(fn, ast.AsyncFunctionDef) or not any(
            ast.unparse(d).startswith("router.") and "include_in_schema=False" not in ast.unparse(d)
            for d in fn.decorator_list
        ):
            continue
        reads_body = any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "json_body"
            for n in ast.walk(fn)
        )
        names: set[str] = set()
        for n in ast.walk(fn):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get":
                target = ast.unparse(n.func.value)
                if target in ("c.params", "p") and n.args and isinstance(n.args[0], ast.Constant):
                    names.add(str(n.args[0].value))
            if (
                isinstance(n, ast.Subscript)
                and ast.unparse(n.value) in ("c.params", "p")
                and isinstance(n.slice, ast.Constant)
            ):
                names.add(str(n.slice.value))
            if (
                isinstance(n, ast.Compare)
                and isinstance(n.ops[0], ast.In)
                and isinstance(n.left, ast.Constant)
                and ast.unparse(n.comparators[0]) in ("c.params", "p")
            ):
                names.add(str(n.left.value))
        out[fn.name] = (reads_body, names)
    return out


async def test_openapi_document_is_valid(bf: InProcess) -> None:
    doc = await document(bf)
    validate(doc)  # raises with the first violation of the OpenAPI 3.1 schema
    assert doc["openapi"].startswith("3.1")
    # No FastAPI 422 left: the handlers answer 400 with Ironic's error body.
    text = str(doc)
    assert "HTTPValidationError" not in text and "'422'" not in text


async def test_every_route_is_in_the_document(bf: InProcess) -> None:
    doc = await document(bf)
    published = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in METHODS}
    routes = {
        (method, route.path)
        for module in ROUTE_MODULES
        for route in module.router.routes
        if getattr(route, "include_in_schema", True)  # /metrics: Prometheus text, not part of the API
        for method in getattr(route, "methods", ())
    }
    assert routes and routes <= published, sorted(routes - published)


async def test_every_read_is_described(bf: InProcess) -> None:
    """A handler that reads a body has a requestBody; every query parameter it reads is declared."""
    doc = await document(bf)
    by_handler: dict[str, dict[str, Any]] = {}
    for module in ROUTE_MODULES:
        for route in module.router.routes:
            if not getattr(route, "include_in_schema", True):
                continue
            endpoint = getattr(route, "endpoint")  # noqa: B009 (BaseRoute does not declare it)
            for method in getattr(route, "methods", ()):
                name = f"{module.__name__}.{endpoint.__name__}"
                by_handler[name] = doc["paths"][getattr(route, "path")][method.lower()]  # noqa: B009
    missing: list[str] = []
    for module in ROUTE_MODULES:
        for name, (reads_body, params) in handler_reads(module).items():
            op = by_handler[f"{module.__name__}.{name}"]
            if reads_body and "requestBody" not in op:
                missing.append(f"{name}: body")
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            missing += [f"{name}: ?{p}" for p in sorted(params - declared)]
    assert not missing, missing


async def test_bodies_and_parameters_name_the_ironic_fields(bf: InProcess) -> None:
    doc = await document(bf)
    paths = doc["paths"]

    def body(path: str, method: str) -> dict[str, Any]:
        schema: dict[str, Any] = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        return schema

    assert body("/v1/nodes", "post")["required"] == ["driver"]
    assert "driver_info" in body("/v1/nodes", "post")["properties"]
    for path in (
        "/v1/nodes/{ident}",
        "/v1/ports/{port_uuid}",
        "/v1/portgroups/{ident}",
        "/v1/allocations/{ident}",
    ):
        patch = body(path, "patch")
        assert patch["type"] == "array" and patch["items"]["required"] == ["op", "path"], path
    assert "deploy" in body("/v1/nodes/{ident}/states/provision", "put")["properties"]["target"]["enum"]
    assert "power off" in body("/v1/nodes/{ident}/states/power", "put")["properties"]["target"]["enum"]
    assert body("/v1/nodes/{ident}/management/boot_device", "put")["required"] == ["boot_device"]
    assert paths["/v1/nodes/{ident}/maintenance"]["put"]["requestBody"]["required"] is False
    assert body("/v1/ports", "post")["required"] == ["address", "node_uuid"]
    assert body("/v1/images", "post")["required"] == ["name", "source"]
    assert body("/v1/nodes/{ident}/agent/command/{command_id}", "post")["required"] == ["status"]
    params = {p["name"] for p in paths["/v1/nodes/detail"]["get"]["parameters"]}
    assert {"limit", "marker", "sort_key", "sort_dir", "fields", "provision_state", "maintenance"} <= params
    stream = paths["/v1/nodes/{ident}/events/stream"]["get"]
    assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]
    lookup = {p["name"] for p in paths["/v1/lookup"]["get"]["parameters"]}
    assert {"addresses", "node_uuid"} <= lookup
    # Every operation takes the microversion header.
    for item in paths.values():
        for method, op in item.items():
            assert "x-openstack-ironic-api-version" in {p["name"].lower() for p in op["parameters"]}, method


async def test_security_is_declared_only_when_auth_is_on(bf: InProcess, tmp_path: Path) -> None:
    """Without auth no operation asks for credentials; with http_basic, all but the public ones do."""
    doc = await document(bf)
    assert "securitySchemes" not in doc["components"]
    assert not any("security" in op for item in doc["paths"].values() for op in item.values())

    from bootforge.api.app import create_app
    from bootforge.api.auth import Htpasswd

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    authed = create_app(bf.services, Htpasswd(htpasswd)).openapi()
    assert authed["components"]["securitySchemes"]["http_basic"]["scheme"] == "basic"
    public = {p for p, item in authed["paths"].items() for op in item.values() if "security" not in op}
    assert public == {
        "/",
        "/v1",
        "/v1/",
        "/v1/lookup",
        "/v1/discovery/report",
        "/v1/nodes/{ident}/agent/command",
        "/v1/nodes/{ident}/agent/command/{command_id}",
    }
    assert "401" in authed["paths"]["/v1/nodes"]["get"]["responses"]


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
async def test_documentation_pages_answer(bf: InProcess, path: str) -> None:
    r = await bf.client.get(path)
    assert r.status_code == 200
    assert re.search("json|html", r.headers["content-type"])
