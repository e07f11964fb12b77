"""Two racks (#13 Verify): bootforge's roles as separate processes on one PostgreSQL started by the test.

Each rack is a bridge with one QEMU VM (BIOS, TCG), its own `serve --role netboot` (DHCP/TFTP/HTTP on
that bridge only) and `serve --role conductor`, both of conductor_group rackN; one `serve --role api`
on the management address takes every request, the agents' included (routed from each rack). Both VMs
are deployed at once with the sample OS and reach active, the OS printing its user data. From each
node's timeline: every event was written by the node's owner conductor (the ring's choice, the node's
`conductor` field), the API process (hand-offs, the agent's calls) or its rack's netboot process (every
DHCP, TFTP and HTTP event); nothing by the other rack's processes; and the agent looked up from the
address its rack's DHCP leased to it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.lab import (
    RAMDISK_TIMEOUT,
    LabHandle,
    console_offset,
    keep_logs,
    lab_unavailable_reason,
    wait_console,
)
from support.postgres import SUPERUSER, PostgresServer

from bootforge.config import Settings
from bootforge.lab.lab import LabError, LabState
from bootforge.lab.racks import API_HOST, RackLab, processes, rack_address, rack_of, serve_config
from bootforge.lab.sample_os import BOOTED_MARKER, USER_DATA_MARKER, build_test_os, missing_tools

NETBOOT_TYPES = {"dhcp", "tftp", "http"}


def socket_url(server: PostgresServer, fresh_url: str) -> str:
    """The test's database by PostgreSQL's unix socket: the processes in the lab's namespace cannot
    reach the host's 127.0.0.1, but the socket is a file."""
    dbname = urlsplit(fresh_url).path.lstrip("/")
    return f"postgresql+asyncpg://{SUPERUSER}@/{dbname}?host={server.sockdir}&port={server.port}"


@pytest.fixture
def racks(tmp_path: Path, postgres_server: PostgresServer, postgres_fresh_url: str) -> Iterator[LabHandle]:
    reason = lab_unavailable_reason("bios")
    if reason is not None:
        pytest.skip(reason)
    started = time.monotonic()
    try:
        lab = RackLab.up_racks(
            tmp_path / "lab", socket_url(postgres_server, postgres_fresh_url), memory_mib=768
        )
    except LabError as e:
        pytest.fail(f"lab up failed: {e}")
    print(f"two racks up in {time.monotonic() - started:.1f} s")
    client = lab.client()
    try:
        yield LabHandle(lab, client)
    finally:
        client.close()
        keep = os.environ.get("BOOTFORGE_LAB_KEEP_LOGS")
        if keep:  # for debugging a failure: every process's log and the consoles
            keep_logs(lab, Path(keep))
        lab.down()


def writers(events: list[dict[str, Any]]) -> set[str]:
    return {str(e["conductor"]) for e in events}


def test_each_process_config_is_what_serve_reads(tmp_path: Path) -> None:
    """No QEMU: every process's TOML loads as serve loads it, with its role, group and addresses."""
    state = LabState(str(tmp_path), "bflab-x-", "full")
    url = "postgresql+asyncpg://bootforge@/db?host=/tmp/sock&port=5432"
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "htpasswd").write_text("")  # the API process's, which the lab writes first
    seen = {}
    for proc in processes(2):
        path = tmp_path / f"{proc.name}.serve.toml"
        path.write_text(serve_config(state, proc, url, 2))
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("BOOTFORGE_")]:
                mp.delenv(key)
            mp.setenv("BOOTFORGE_CONFIG", str(path))
            seen[proc.name] = Settings()
    api = seen[API_HOST]
    assert (api.role, api.listen, api.conductor_group, api.database_url) == ("api", "10.77.0.1:6385", "", url)
    for r in (1, 2):
        nb, cond = seen[f"netboot-rack{r}"], seen[f"conductor-rack{r}"]
        assert (nb.role, nb.conductor_group, cond.role, cond.conductor_group) == (
            "netboot",
            f"rack{r}",
            "conductor",
            f"rack{r}",
        )
        assert nb.netboot.dhcp_interfaces == [f"br{r}"] and nb.netboot.address == f"10.77.{r}.1"
        assert nb.netboot.api_url == "http://10.77.0.1:6385"
        assert [s.routers for s in nb.netboot.subnets] == [[f"10.77.{r}.1"]]
        # The owner names its own rack's HTTP server in the agent's image URL.
        assert (cond.netboot.address, cond.netboot.http) == (f"10.77.{r}.1", True)
    assert len({s.state_dir for s in seen.values()}) == 5
    assert len({s.host for s in seen.values()}) == 5
    assert len({s.secret_key_file for s in seen.values()}) == 1
    assert len({s.netboot.root for s in seen.values()}) == 1


@pytest.mark.qemu
@pytest.mark.netns
@pytest.mark.postgres
@pytest.mark.slow
def test_two_racks_each_deployed_by_its_own_conductor_and_netboot(racks: LabHandle) -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the sample OS image")
    h = racks
    r = h.api.post("/v1/images", json={"name": "sample-os", "source": str(build_test_os())})
    assert r.status_code == 201, r.text

    owner = {rec.name: f"conductor-rack{rack_of(rec)}" for rec in h.vms}
    netboot = {rec.name: f"netboot-rack{rack_of(rec)}" for rec in h.vms}
    for rec in h.vms:
        node = h.node(rec)
        assert node["conductor_group"] == f"rack{rack_of(rec)}"
        assert node["conductor"] == owner[rec.name], node["conductor"]

    for rec in h.vms:  # no ramdisk boot: automated_clean is off in the racks (their disks are blank)
        h.verb(rec, "provide")
    for rec in h.vms:
        h.wait_state(rec, "available", 60)

    started = time.monotonic()
    since = {rec.name: console_offset(rec) for rec in h.vms}
    user_data = {rec.name: f"hello from rack{rack_of(rec)} {uuid.uuid4().hex[:8]}" for rec in h.vms}
    for rec in h.vms:
        patch = [{"op": "add", "path": "/instance_info/image_source", "value": "sample-os"}]
        assert h.api.patch(f"/v1/nodes/{rec.node}", json=patch).status_code == 200
        h.verb(rec, "active", configdrive={"user_data": user_data[rec.name]})
    for rec in h.vms:
        h.wait_state(rec, "active", RAMDISK_TIMEOUT + 120)
        wait_console(rec, BOOTED_MARKER, 120, since[rec.name])
        line = wait_console(rec, USER_DATA_MARKER, 60, since[rec.name])
        assert line.strip().endswith(USER_DATA_MARKER + user_data[rec.name]), line
    print(f"both VMs deployed (deploy -> user data on the consoles) in {time.monotonic() - started:.1f} s")

    everyone = {API_HOST, *owner.values(), *netboot.values()}
    for rec in h.vms:
        events = h.history(rec)
        mine = {API_HOST, owner[rec.name], netboot[rec.name]}
        assert writers(events) <= mine, [
            (e["event_type"], e["event"]) for e in events if e["conductor"] not in mine
        ]
        assert not writers(events) & (everyone - mine)
        # What the rack's netboot process learnt from DHCP (cpu_arch) is written by it too.
        arch = [e for e in events if e["event"].startswith("properties.cpu_arch set to x86_64")]
        assert arch and writers(arch) == {netboot[rec.name]}, arch
        # The node's work (its deploy steps, power actions, state changes) ran in its owner only.
        work = [e for e in events if e not in arch and e["event_type"] not in NETBOOT_TYPES]
        work = [e for e in work if e["conductor"] != API_HOST]
        assert work and writers(work) == {owner[rec.name]}, [(e["conductor"], e["event"]) for e in work]
        assert any(e["event"].startswith("image sample-os -> ") for e in work)
        # The image came from the rack's own HTTP server, as the owner told the agent.
        assert any(f"http://{rack_address(rack_of(rec))}:8080/images/" in e["event"] for e in work), [
            e["event"] for e in work
        ]
        # Every DHCP, TFTP and HTTP event came from the rack's netboot process, on the rack's bridge.
        boot = [e for e in events if e["event_type"] in NETBOOT_TYPES]
        # (SeaBIOS's iPXE ROM is told an HTTP URL by DHCP: no TFTP in this chain.)
        assert {e["event_type"] for e in boot} >= {"dhcp", "http"}, [e["event"] for e in boot]
        assert writers(boot) == {netboot[rec.name]}
        dhcp = [e["event"] for e in boot if e["event_type"] == "dhcp"]
        assert all(e.endswith(f"on br{rack_of(rec)}") or f"on br{rack_of(rec)}:" in e for e in dhcp), dhcp
        # The agent talked to the API process, from the address its rack's DHCP acknowledged.
        looked_up = [e for e in events if e["event"].startswith("agent looked up from ")]
        assert looked_up and writers(looked_up) == {API_HOST}, looked_up
        acked = {e.split()[2] for e in dhcp if e.startswith("dhcp.ack ")}
        prefix = rack_address(rack_of(rec)).rsplit(".", 1)[0] + "."
        assert acked and all(ip.startswith(prefix) for ip in acked), acked
        assert {e["event"].split(" from ", 1)[1] for e in looked_up} <= acked
