"""Two racks: bootforge's roles split over processes (#13), as a site with several racks runs them.

Layout (all inside one network namespace, ``bflab-<pid>-<n>-net``, on one PostgreSQL database):

* rack N (N = 1, 2) is bridge ``brN`` with 10.77.N.1/24 and the taps of its VMs;
* ``serve --role netboot`` per rack (conductor_group ``rackN``): DHCP on ``brN`` only (pool
  10.77.N.100-199, router 10.77.N.1), TFTP and HTTP boot on 10.77.N.1; it answers only the nodes of its
  group and points their ramdisks at the API process (``netboot.api_url``);
* ``serve --role conductor`` per rack (conductor_group ``rackN``): the ring gives it every node of its
  group; it powers the rack's VMs (qemu driver) and tells the agent to fetch the image from its rack's
  HTTP server (netboot.address 10.77.N.1);
* one ``serve --role api`` on 10.77.0.1:6385, an address of the namespace's loopback (the management
  network, not on either rack's bridge): a ramdisk reaches it through its rack's router 10.77.N.1,
  which is the namespace itself, as a rack's top-of-rack router would route it;
* the host reaches that API through the lab's forwarder on 127.0.0.1, as in a one-rack lab.

The database is the caller's (the test starts PostgreSQL on the host): processes in the namespace
cannot reach the host's 127.0.0.1, so the URL names PostgreSQL's unix socket directory (a file, which
namespaces share). Every process has its own state directory and host name and the same key file;
the boot root (ramdisk, images) is shared, as a site would share it (NFS, or the same files synced).

Everything is recorded in ``lab.json`` like a one-rack lab's, so :meth:`Lab.down` (and ``bootforge lab
down``) removes it the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx

from bootforge.lab import netns, procs, ramdisk
from bootforge.lab.lab import (
    ADDRESS,
    API_PORT,
    MAC_PREFIX,
    STATE_FILE,
    USER,
    Lab,
    LabError,
    LabState,
    VmRecord,
    _ok,
    _preflight,
)
from bootforge.ramdisk import build as build_agent_ramdisk

__all__ = ["API_ADDRESS", "RackLab", "rack_address", "rack_of"]

# The API process, on the namespace's loopback (routed from every rack); the one-rack lab's API
# address, so LabState.api_in_lab and the forwarder's target hold for racks too.
API_ADDRESS = ADDRESS
API_HOST = "api-1"
MAX_RACKS = 9


def rack_address(rack: int) -> str:
    return f"10.77.{rack}.1"


def rack_group(rack: int) -> str:
    return f"rack{rack}"


def rack_of(rec: VmRecord) -> int:
    """The rack a VM sits in: its tap's bridge (tap names are tap<rack>x<i>)."""
    return int(rec.tap.removeprefix("tap").split("x", 1)[0])


@dataclass(frozen=True)
class Process:
    """One `bootforge serve` of the racks: its host name (key in lab.json's pids) and role."""

    name: str
    role: str
    rack: int | None  # None: the API process


def processes(racks: int) -> list[Process]:
    out = [Process(API_HOST, "api", None)]
    for r in range(1, racks + 1):
        out += [Process(f"netboot-rack{r}", "netboot", r), Process(f"conductor-rack{r}", "conductor", r)]
    return out


def serve_config(state: LabState, proc: Process, database_url: str, racks: int) -> str:
    """The TOML of one process. Shared by all: the database, the key file, the boot root."""
    d = Path(state.dir)
    home = d / "serve" / proc.name
    lines = [
        f'state_dir = "{home}"',
        f'role = "{proc.role}"',
        f'host = "{proc.name}"',
        f"database_url = {json.dumps(database_url)}",
        f'secret_key_file = "{d / "serve" / "secret.key"}"',
        f'conductor_group = "{rack_group(proc.rack) if proc.rack else ""}"',
        'enabled_hardware_types = ["qemu"]',
        "power_sync_interval = 10",
        # One ramdisk boot per deploy: the lab's disks are blank (cleaning would only erase nothing).
        "automated_clean = false",
    ]
    if proc.role == "api":
        lines += [
            f'listen = "{API_ADDRESS}:{API_PORT}"',
            'auth_strategy = "http_basic"',
            f'htpasswd_file = "{d / "serve" / "htpasswd"}"',
        ]
    lines += [
        "",
        "[agent]",
        "fast_track = true",
        "handoff_window = 15",
        "",
        "[images]",
        f"import_dirs = [{json.dumps(str(ramdisk.DEFAULT_CACHE))}]",
        "",
        "[netboot]",
        f'root = "{d / "boot"}"',
        'kernel_args = ["console=ttyS0,115200n8", "quiet"]',
    ]
    if proc.rack is not None:
        # The conductor names its rack's HTTP server in the agent's image URL; the netboot process
        # serves it, with DHCP on its own bridge only.
        lines += [f'address = "{rack_address(proc.rack)}"', "http = true"]
    if proc.role == "netboot":
        lines += [
            'dhcp = "full"',
            f'dhcp_interfaces = ["br{proc.rack}"]',
            "tftp = true",
            f'api_url = "http://{API_ADDRESS}:{API_PORT}"',
        ]
        lines += _subnet(proc.rack or 0)
    if proc.role == "api":
        # The API process runs no DHCP; set as the sites have it so that the agent's lookups are
        # checked against the leases the racks' netboot processes wrote to the database.
        lines += [
            f'address = "{API_ADDRESS}"',
            'dhcp = "full"',
            f"dhcp_interfaces = {json.dumps([f'br{r}' for r in range(1, racks + 1)])}",
        ]
        for r in range(1, racks + 1):
            lines += _subnet(r)
    return "\n".join(lines) + "\n"


def _subnet(rack: int) -> list[str]:
    net = f"10.77.{rack}"
    return [
        "",
        "[[netboot.subnets]]",
        f'network = "{net}.0/24"',
        f'pool = "{net}.100-{net}.199"',
        f'routers = ["{rack_address(rack)}"]',
    ]


class RackLab(Lab):
    """A lab of `racks` racks with `vms` VMs each; see the module docstring."""

    @classmethod
    def up_racks(
        cls,
        directory: Path,
        database_url: str,
        racks: int = 2,
        vms: int = 1,
        memory_mib: int = 512,
        say: Callable[[str], None] = lambda _: None,
    ) -> RackLab:
        """Build the racks in `directory` (which must not hold a lab); on failure remove what was made."""
        directory = directory.resolve()
        if (directory / STATE_FILE).exists():
            raise LabError(f"a lab already exists in {directory}: run `bootforge lab down` first")
        if not 2 <= racks <= MAX_RACKS:
            raise LabError(f"racks must be between 2 and {MAX_RACKS}, not {racks}")
        if not 1 <= vms <= 9:
            raise LabError(f"vms per rack must be between 1 and 9, not {vms}")
        if not database_url.startswith("postgresql"):
            raise LabError(
                "the racks share one PostgreSQL database: give --database-url postgresql+asyncpg://... "
                "(reachable from inside the lab's namespace, e.g. by its unix socket)"
            )
        _preflight(["bios"], "full")
        directory.mkdir(parents=True, exist_ok=True)
        state = LabState(str(directory), netns.unique_prefix("bflab"), "full")
        state.save()
        lab = cls(directory, state)
        try:
            lab._build_racks(database_url, racks, vms, memory_mib, say)
        except BaseException:
            lab.down()
            raise
        return lab

    def _build_racks(
        self, database_url: str, racks: int, vms: int, memory_mib: int, say: Callable[[str], None]
    ) -> None:
        boot = self.dir / "boot" / "bootforge"
        boot.mkdir(parents=True, exist_ok=True)
        say("building the deploy ramdisk (bootforge ramdisk build; cached after the first time)")
        built = build_agent_ramdisk(boot, say=lambda m: say(f"  {m}"))
        say(f"deploy ramdisk: {built.total_size / 2**20:.1f} MiB in {built.seconds:.1f} s")
        self.state.namespaces = [self.state.netns]
        self.state.save()
        topo = netns.Topology(self.state.prefix)
        ns = topo.namespace("net")
        ns.ip("addr", "add", f"{API_ADDRESS}/32", "dev", "lo")
        n = 0
        for r in range(1, racks + 1):
            bridge = topo.bridge(ns, f"br{r}", f"{rack_address(r)}/24")
            for i in range(vms):
                n += 1
                tap = f"tap{r}x{i}"
                topo.tap(ns, tap, bridge)
                name = f"vm{n}"
                rec = VmRecord(name, "bios", f"{MAC_PREFIX}{n:02x}", tap, str(self.dir / "vms" / name))
                self.state.vms.append(rec)
        self.state.save()
        say(f"namespace {self.state.netns}: {', '.join(f'br{r}' for r in range(1, racks + 1))}")
        self._write_credentials()
        for proc in processes(racks):
            config = self.dir / f"{proc.name}.serve.toml"
            config.write_text(serve_config(self.state, proc, database_url, racks))
            (self.dir / "serve" / proc.name).mkdir(mode=0o700, parents=True, exist_ok=True)  # secrets
            argv = ["ip", "netns", "exec", self.state.netns, sys.executable, "-m", "bootforge", "serve"]
            env_clean = ["env", *(f"-u{k}" for k in os.environ if k.startswith("BOOTFORGE_"))]
            self._spawn(
                proc.name, [*env_clean, *argv, "--config", str(config)], self.dir / f"{proc.name}.log"
            )
            if proc.role == "api":
                # The first process migrates the database; the others start once it answers.
                self._start_forwarder_to(API_ADDRESS)
                self._wait_api([proc.name, "forwarder"])
        for r in range(1, racks + 1):
            argv = ["ip", "netns", "exec", self.state.netns, sys.executable, "-m", "bootforge.lab.ra"]
            self._spawn(f"ra-rack{r}", [*argv, f"br{r}", str(self.dir)], self.dir / f"ra-rack{r}.log")
        with self.client() as api:
            self._wait_conductors(api, [p.name for p in processes(racks) if p.role == "conductor"])
            for rec in self.state.vms:
                self._write_vm(rec, memory_mib)
                self._enrol_in_rack(api, rec)
                say(f"enrolled {rec.name} ({rec.mac}, br{rack_of(rec)}) as node {rec.node}")

    def _write_credentials(self) -> None:
        serve_dir = self.dir / "serve"
        serve_dir.mkdir(parents=True, exist_ok=True)
        self.state.password = secrets.token_urlsafe(18)
        self.state.save()
        digest = bcrypt.hashpw(self.state.password.encode(), bcrypt.gensalt(rounds=8)).decode()
        (serve_dir / "htpasswd").write_text(f"{USER}:{digest}\n")
        (serve_dir / "htpasswd").chmod(0o600)

    def _start_forwarder_to(self, address: str) -> None:
        self.state.host_port = procs.free_port()
        argv = [sys.executable, "-m", "bootforge.lab.forward", f"127.0.0.1:{self.state.host_port}"]
        argv += [self.state.netns, f"{address}:{API_PORT}", str(self.dir)]
        self._spawn("forwarder", argv, self.dir / "forwarder.log")

    def _wait_api(self, keys: list[str], timeout: float = 120.0) -> None:
        def answers() -> bool:
            try:
                with self.client(timeout=2) as api:
                    return api.get("/v1/nodes").status_code == 200
            except httpx.HTTPError:
                return False

        self._wait(keys, answers, timeout, "the API process did not answer")

    def _wait_conductors(self, api: httpx.Client, names: list[str], timeout: float = 120.0) -> None:
        def alive() -> bool:
            listed = _ok(api.get("/v1/conductors"), 200)["conductors"]
            return {c["hostname"] for c in listed if c["alive"]} >= set(names)

        self._wait(list(self.state.pids), alive, timeout, f"conductors {', '.join(names)} are not all alive")

    def _wait(self, keys: list[str], ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_alive(keys)
            if time.monotonic() > deadline:
                raise LabError(f"{what} within {timeout:.0f} s; see {self.dir}/*.log")
            time.sleep(0.3)

    def _enrol_in_rack(self, api: httpx.Client, rec: VmRecord) -> None:
        driver, info = self._driver(rec)
        body = {
            "driver": driver,
            "name": f"lab-{rec.name}",
            "driver_info": info,
            "conductor_group": rack_group(rack_of(rec)),
        }
        node = _ok(api.post("/v1/nodes", json=body), 201)
        rec.node = str(node["uuid"])
        self.state.save()
        _ok(api.post("/v1/ports", json={"node_uuid": rec.node, "address": rec.mac}), 201)
        _ok(api.put(f"/v1/nodes/{rec.node}/states/provision", json={"target": "manage"}), 202)
        self.wait_node(api, rec, lambda n: n["provision_state"] == "manageable" and not n["reservation"])
        boot = {"boot_device": "pxe", "persistent": True}
        _ok(api.put(f"/v1/nodes/{rec.node}/management/boot_device", json=boot), 204)
