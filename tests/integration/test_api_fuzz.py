"""API fuzzing (#11 guarantees): schemathesis drives every operation of /openapi.json against a real
`bootforge serve` on loopback with http_basic auth, with and without credentials, in schema-conforming
(positive) and schema-violating (negative) modes. No answer may be a 5xx; afterwards every node answers,
the node list answers, and no node is left reserved (locked).

Only fake-hardware is enabled (nothing real is powered), netboot is off (the agent-deploy path cannot
fetch an image), image sources that look like URLs are turned into host paths before they are sent
(nothing is fetched from outside; no import directory is configured, so paths are refused too), and
each operation gets a bounded, derandomized number of examples.
"""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from support.service import Served, served

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install '.[test]')"
)
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# No 5xx; every status, content type and body as /openapi.json documents it (errors: Ironic's body).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.slow

USER, PASSWORD = "fuzz", "fuzz-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
LATEST = {"X-OpenStack-Ironic-API-Version": "latest"}
# Examples per operation and mode: with credentials, and without (where nearly all answer 401).
# BOOTFORGE_FUZZ_SCALE multiplies them (and the time bound) for a longer hunt by hand.
SCALE = float(os.environ.get("BOOTFORGE_FUZZ_SCALE", "1"))
EXAMPLES = int(20 * SCALE)
EXAMPLES_UNAUTHENTICATED = int(5 * SCALE)
# Event streams: each example holds a stream open for STREAM_READ seconds.
STREAM_EXAMPLES = int(8 * SCALE)
STREAM_READ = 0.5
# Derandomized by default (the same cases every run); BOOTFORGE_FUZZ_SEED=N explores other ones.
SEED = os.environ.get("BOOTFORGE_FUZZ_SEED")
# The whole fuzzing run's bound; past it the test fails, it does not quietly cover less.
BUDGET = 240.0 * SCALE
STATE_TIMEOUT = 30.0


@dataclass
class Fleet:
    """What the fuzzer's path parameters are drawn from (besides the values it makes up)."""

    nodes: dict[str, str] = field(default_factory=dict)  # uuid -> the state it was put in
    ports: list[str] = field(default_factory=list)
    portgroups: list[str] = field(default_factory=list)
    allocations: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    # A node in inspect wait whose agent has looked up: its token and current command, so the agent's
    # routes are fuzzed past the token check too.
    agent_node: str = ""
    agent_token: str = ""
    agent_command: str = ""


def wait_node(client: httpx.Client, uuid: str, state: str) -> dict[str, Any]:
    """The node once it is in `state` with no reservation (fake-hardware finishes in milliseconds)."""
    deadline = time.monotonic() + STATE_TIMEOUT
    while True:
        node: dict[str, Any] = client.get(f"/v1/nodes/{uuid}").json()
        if node.get("provision_state") == state and node.get("reservation") is None:
            return node
        if time.monotonic() > deadline:
            raise AssertionError(f"node {uuid} not in {state} within {STATE_TIMEOUT}s: {node}")
        time.sleep(0.05)


def provision(client: httpx.Client, uuid: str, verb: str, state: str) -> None:
    r = client.put(f"/v1/nodes/{uuid}/states/provision", json={"target": verb})
    assert r.status_code == 202, r.text
    wait_node(client, uuid, state)


AGENT_MAC = "52:54:00:f0:02:01"


def agent_session(client: httpx.Client, fleet: Fleet, key_file: Path) -> None:
    """A node with the agent's interfaces in inspect wait, looked up as its ramdisk would (the boot
    token of its boot, computed from the key file as the boot script would carry it)."""
    from bootforge import boot_token

    r = client.post(
        "/v1/nodes",
        json={
            "name": "fuzz-agent",
            "driver": "fake-hardware",
            "boot_interface": "pxe",
            "deploy_interface": "direct",
            "inspect_interface": "agent",
        },
    )
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    assert client.post("/v1/ports", json={"address": AGENT_MAC, "node_uuid": uuid}).status_code == 201
    provision(client, uuid, "manage", "manageable")
    provision(client, uuid, "inspect", "inspect wait")
    boot = client.get(f"/v1/nodes/{uuid}").json()["driver_internal_info"]["agent_boot"]
    headers = {boot_token.HEADER: boot_token.for_boot(key_file, uuid, boot)}
    r = client.get("/v1/lookup", params={"addresses": AGENT_MAC}, headers=headers)
    assert r.status_code == 200, r.text
    token = r.json()["config"]["agent_token"]
    r = client.get(f"/v1/nodes/{uuid}/agent/command", headers={"X-Agent-Token": token})
    assert r.status_code == 200, r.text
    fleet.nodes[uuid] = "inspect wait"
    fleet.agent_node, fleet.agent_token, fleet.agent_command = uuid, token, r.json()["id"]


def enrol_fleet(client: httpx.Client, key_file: Path) -> Fleet:
    """Nodes in enroll, manageable, available, active and maintenance, with ports, a port group and an
    allocation: the fuzzer's actions then meet each state."""
    fleet = Fleet()
    wanted = ["enroll", "manageable", "available", "active", "maintenance"]
    for i, target in enumerate(wanted):
        r = client.post(
            "/v1/nodes",
            json={
                "name": f"fuzz-{target}",
                "driver": "fake-hardware",
                "driver_info": {"password": "not-a-real-secret"},
                "resource_class": "fuzz",
                "properties": {"cpus": 2, "memory_mb": 2048},
            },
        )
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        if target != "enroll":
            provision(client, uuid, "manage", "manageable")
        if target in ("available", "active", "maintenance"):
            provision(client, uuid, "provide", "available")
        if target == "active":
            provision(client, uuid, "active", "active")
        if target == "maintenance":
            assert client.put(f"/v1/nodes/{uuid}/maintenance", json={"reason": "fuzz"}).status_code == 202
        fleet.nodes[uuid] = target
        r = client.post("/v1/ports", json={"address": f"52:54:00:f0:00:{i:02x}", "node_uuid": uuid})
        assert r.status_code == 201, r.text
        fleet.ports.append(r.json()["uuid"])
    first = next(iter(fleet.nodes))
    r = client.post(
        "/v1/portgroups", json={"node_uuid": first, "address": "52:54:00:f0:01:00", "name": "fuzz-pg"}
    )
    assert r.status_code == 201, r.text
    fleet.portgroups.append(r.json()["uuid"])
    r = client.post("/v1/allocations", json={"resource_class": "fuzz", "name": "fuzz-allocation"})
    assert r.status_code == 201, r.text
    fleet.allocations.append(r.json()["uuid"])
    history = client.get(f"/v1/nodes/{first}/history").json()["history"]
    fleet.events = [e["uuid"] for e in history]
    agent_session(client, fleet, key_file)
    return fleet


def path_choices(path: str, method: str, fleet: Fleet, host: str) -> dict[str, list[str]]:
    """Real values for the path's parameters; the fuzzer picks one of these or its own value."""
    choices: dict[str, list[str]] = {
        "port_uuid": fleet.ports,
        "trait": ["CUSTOM_FUZZ"],
        "name": ["fake-hardware"],
        "hostname": [host],
        "event_uuid": fleet.events,
        "command_id": [fleet.agent_command],
    }
    if path.startswith("/v1/portgroups/"):
        choices["ident"] = fleet.portgroups
    elif path.startswith("/v1/allocations/"):
        choices["ident"] = fleet.allocations
    elif "/agent/" in path:
        choices["ident"] = [fleet.agent_node]
    elif path.startswith("/v1/nodes/") and not (method == "DELETE" and path == "/v1/nodes/{ident}"):
        # A node the fuzzer deletes could not be checked afterwards: DELETE gets made-up names only.
        choices["ident"] = list(fleet.nodes)
    return choices


def contained(case: Any) -> None:
    """Nothing the fuzzer sends may make the service reach beyond this machine: an image source
    that looks like a URL becomes a path (no import directory is configured: refused with 400)."""
    if case.operation.path == "/v1/images" and isinstance(case.body, dict):
        source = case.body.get("source")
        if isinstance(source, str) and ":" in source:
            case.body["source"] = "/nonexistent/" + source.replace(":", "_")


# Fields the JSON-PATCH steering picks from (nodes, ports, port groups, allocations; nested keys, secrets,
# read-only and unknown ones too): made-up paths mostly stop at the first check.
PATCH_PATHS = [
    "/name",
    "/driver",
    "/driver_info",
    "/properties",
    "/extra",
    "/instance_info",
    "/instance_uuid",
    "/resource_class",
    "/description",
    "/maintenance",
    "/maintenance_reason",
    "/protected",
    "/retired",
    "/automated_clean",
    "/network_data",
    "/owner",
    "/deploy_interface",
    "/boot_interface",
    "/power_interface",
    "/conductor_group",
    "/chassis_uuid",
    "/address",
    "/pxe_enabled",
    "/local_link_connection",
    "/physical_network",
    "/is_smartnic",
    "/node_uuid",
    "/portgroup_uuid",
    "/mode",
    "/standalone_ports_supported",
    "/uuid",
    "/id",
    "/reservation",
    "/provision_state",
    "/driver_info/ipmi_password",
    "/driver_info/password",
    "/extra/a",
    "/extra/a/b",
    "/properties/cpus",
    "/properties/capabilities",
    "/instance_info/image_source",
    "/local_link_connection/switch_id",
    "/driver_info/../x",
]
BOOT_DEVICES = ["pxe", "disk", "cdrom", "bios", "safe", "wanboot", "PXE"]


def steer(case: Any, data: st.DataObject, fleet: Fleet) -> None:
    """Half the time, put real names where the schema allows any string (the node's driver, a port's
    node, a boot device, a JSON-PATCH path), so cases get past the first check into the conductor."""
    if not data.draw(st.booleans()):
        return
    op, body = (case.operation.method.upper(), case.operation.path), case.body
    if "/agent/" in op[1]:
        case.headers = {**(case.headers or {}), "X-Agent-Token": fleet.agent_token}
        # A failed report ends the session (and the node's inspection) at once: mostly report success,
        # with whatever result the fuzzer made up.
        if isinstance(body, dict) and body.get("status") == "failed":
            body["status"] = "succeeded"
    if isinstance(body, dict):
        if op == ("POST", "/v1/nodes"):
            body["driver"] = "fake-hardware"
        elif op in (("POST", "/v1/ports"), ("POST", "/v1/portgroups")):
            body["node_uuid"] = data.draw(st.sampled_from(list(fleet.nodes)))
            octets = data.draw(st.lists(st.integers(0, 255), min_size=3, max_size=3))
            body["address"] = "52:54:00:" + ":".join(f"{o:02x}" for o in octets)
        elif op == ("POST", "/v1/allocations"):
            body["candidate_nodes"] = data.draw(st.lists(st.sampled_from(list(fleet.nodes)), max_size=3))
        elif op[1].endswith("/management/boot_device"):
            body["boot_device"] = data.draw(st.sampled_from(BOOT_DEVICES))
    elif isinstance(body, list) and op[0] == "PATCH":
        for item in body:
            if isinstance(item, dict):
                item["path"] = data.draw(st.sampled_from(PATCH_PATHS))


@dataclass
class Finding:
    operation: str
    mode: str
    authenticated: bool
    error: str


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    headers: dict[str, str],
    examples: int,
    choose: dict[str, list[str]],
    fleet: Fleet,
    call: Callable[[Any, dict[str, str]], httpx.Response | Any],
) -> str | None:
    """Run `examples` derandomized cases of one operation; the first failure's text, or None."""

    @settings(
        max_examples=examples,
        derandomize=SEED is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
    )
    @seed(int(SEED or 0))
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        for name, values in choose.items():
            if values and name in (case.path_parameters or {}):
                picked = data.draw(st.sampled_from([None, *values]))
                if picked is not None:
                    case.path_parameters[name] = picked
        steer(case, data, fleet)
        contained(case)
        response = call(case, headers)
        case.validate_response(response, checks=CHECKS, headers=headers)
        # The auth matrix: a route that needs a login answers nothing else without one (only a
        # microversion it cannot serve is refused first, 406).
        if not headers and operation.definition.raw.get("security"):
            assert response.status_code in (401, 406), (
                f"{case.operation.method.upper()} {case.operation.path} answered "
                f"{response.status_code} without credentials: {response.text[:300]}"
            )

    try:
        run()
    # schemathesis reports its check failures as a BaseExceptionGroup; every failure is collected.
    except (Exception, BaseExceptionGroup) as e:
        return f"{type(e).__name__}: {str(e)[:1500]}"
    return None


def is_stream(operation: Any) -> bool:
    """A server-sent event stream: it never ends by itself."""
    content = operation.definition.raw.get("responses", {}).get("200", {}).get("content", {})
    return "text/event-stream" in content


def operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        yield result.ok()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Served]:
    # The ramdisk the agent node's (fake) PXE boot points at: bootforge only checks the files exist.
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        f"{USER}:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode() + "\n"
    )
    config = tmp_path / "bootforge.toml"
    config.write_text(
        "\n".join(
            [
                'auth_strategy = "http_basic"',
                f'htpasswd_file = "{htpasswd}"',
                "power_sync_interval = 0",
                'log_level = "warning"',
                # The fuzzer leaves each stream after STREAM_READ s; a 1 s keep-alive lets the server
                # notice and free its place soon, so the stream cap is not what the fuzzer tests.
                "[events]",
                "stream_keepalive = 1.0",
            ]
        )
        + "\n"
    )
    env = {
        "BOOTFORGE_CONFIG": str(config),
        # Explicitly and only fake-hardware (as an environment variable: it outranks the config file,
        # and served() sets the tests' default list there): the fuzzer can enrol nothing with a BMC.
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": '["fake-hardware"]',
    }
    yield from served(tmp_path, env=env)


def test_every_operation_survives_fuzzing(service: Served) -> None:
    client = httpx.Client(base_url=service.url, headers={**AUTH, **LATEST}, timeout=30)
    with client:
        drivers = [d["name"] for d in client.get("/v1/drivers").json()["drivers"]]
        assert drivers == ["fake-hardware"], f"the fuzzer must not reach real BMCs: {drivers} enabled"
        fleet = enrol_fleet(client, service.state_dir / "secret.key")
        host = client.get("/v1/conductors").json()["conductors"][0]["hostname"]
        schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json", headers=AUTH)
        # No made-up Authorization headers: wrong passwords would trip the per-address failure limit
        # (finding 8, 10 a minute) and leave the rest of the run answered 429 instead of fuzzed. Runs
        # go with the right login or with none.
        schema.config.generation.update(with_security_parameters=False)

        statuses: dict[str, Counter[int]] = {}

        def call(case: Any, headers: dict[str, str]) -> Any:
            # Without a microversion the service answers as 1.1, where most resources do not exist yet.
            sent = {
                **({} if case.headers and "X-OpenStack-Ironic-API-Version" in case.headers else LATEST),
                **headers,
            }
            # A stream is read for at most STREAM_READ seconds (schemathesis then closes it).
            streaming = is_stream(case.operation)
            response = case.call(
                base_url=service.url, headers=sent, timeout=(10, STREAM_READ) if streaming else 30
            )
            label = f"{case.operation.method.upper()} {case.operation.path} {'auth' if headers else 'anon'}"
            statuses.setdefault(label, Counter())[response.status_code] += 1
            return response

        findings: list[Finding] = []
        started = time.monotonic()
        count = 0
        for operation in sorted(operations(schema), key=lambda o: (o.path, o.method)):
            choose = path_choices(operation.path, operation.method.upper(), fleet, host)
            authed = STREAM_EXAMPLES if is_stream(operation) else EXAMPLES
            for authenticated, examples in ((True, authed), (False, EXAMPLES_UNAUTHENTICATED)):
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    assert time.monotonic() - started < BUDGET, (
                        f"fuzzing did not finish in {BUDGET}s ({count} runs of operations and modes done)"
                    )
                    error = fuzz_operation(
                        operation, mode, AUTH if authenticated else {}, examples, choose, fleet, call
                    )
                    count += 1
                    if error:
                        label = f"{operation.method.upper()} {operation.path}"
                        findings.append(Finding(label, mode.value, authenticated, error))
        elapsed = time.monotonic() - started
        print(f"fuzzed {count} operation/mode/auth runs in {elapsed:.1f}s")
        for label, counter in sorted(statuses.items()):
            print(f"  {label}: {dict(sorted(counter.items()))}")
        problems = [
            f"{f.operation} ({f.mode}, {'with' if f.authenticated else 'no'} credentials):\n{f.error}"
            for f in findings
        ]
        problems += after_fuzzing(client, fleet)
        assert not problems, "\n\n".join(problems)


def after_fuzzing(client: httpx.Client, fleet: Fleet) -> list[str]:
    """What must hold once the fuzzer is done: the node list answers, no node stays reserved (a
    fake-hardware action still running gets STATE_TIMEOUT to finish), every node answers its GET."""
    deadline = time.monotonic() + STATE_TIMEOUT
    while True:
        r = client.get("/v1/nodes/detail")
        if r.status_code != 200:
            return [f"GET /v1/nodes/detail after fuzzing: {r.status_code} {r.text[:500]}"]
        nodes = r.json()["nodes"]
        locked = {n["uuid"]: n["reservation"] for n in nodes if n["reservation"] is not None}
        if not locked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problems = [f"node {uuid} still reserved by {host} after fuzzing" for uuid, host in locked.items()]
    listed = {n["uuid"] for n in nodes}
    problems += [
        f"node {uuid} ({state}) is not listed" for uuid, state in fleet.nodes.items() if uuid not in listed
    ]
    for uuid in sorted(listed | set(fleet.nodes)):
        r = client.get(f"/v1/nodes/{uuid}")
        if r.status_code != 200:
            problems.append(f"GET /v1/nodes/{uuid} after fuzzing: {r.status_code} {r.text[:300]}")
    return problems
