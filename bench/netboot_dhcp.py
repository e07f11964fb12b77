"""DHCP DORA/s of bootforge's DHCP as `bootforge serve` runs it, against Kea on the same lease backend.

perfdhcp (Debian `kea-admin`) is the load: in a load namespace joined to the server's namespace by a
veth pair, run as a relay agent (`-l LOAD_IP SERVER_IP`: giaddr is the load address, replies come
back to its port 67). For each target and offered rate, fresh server processes with an empty lease
store take a fixed-time run of new clients; we record the 4-way exchanges per second perfdhcp
completed, the drop ratios of both exchanges and the servers' CPU seconds.

Targets (`--targets`, comma separated):

  bf-sqlite    `bootforge serve` as it starts by default (role all, SQLite in its state dir): the DHCP
               server of `serve` with its DbLeaseStore, one upsert transaction per group commit,
               SQLite WAL with synchronous=NORMAL. One site.
  bf-pg        two `bootforge serve --role netboot` processes (conductor groups site0 and site1), each
               its own DHCP server on its own interface in its own namespace, one PostgreSQL database
               (started by the bench; fsync and synchronous_commit on, PostgreSQL's defaults).
               Two sites, perfdhcp on each at half the offered rate.
  bf-file      BENCH-ONLY configuration, not what serve runs: bootforge's DhcpServer in a bench
               process with an append-file lease store (one write + flush per group commit, no fsync).
  kea-memfile  Kea 2.2 `kea-dhcp4` (Debian `kea-dhcp4-server`), memfile with persist=true. One site.
  kea-pg       two `kea-dhcp4` processes, one per site as bf-pg, on one PostgreSQL lease database
               (`kea-admin db-init pgsql` on the same throwaway server).
  dnsmasq      dnsmasq (Debian `dnsmasq-base`), its lease file. One site; not in the default list.

Ratios are printed against Kea on the same backend: bf-pg / kea-pg; bf-sqlite / kea-memfile (Kea has
no SQLite backend: memfile is its embedded local store); bf-file / kea-memfile.

    .venv/bin/python bench/netboot_dhcp.py                       # 250..6k DORA/s, 4 s each, total
    .venv/bin/python bench/netboot_dhcp.py --quick               # 1k and 3k, 2 s each
    .venv/bin/python bench/netboot_dhcp.py --targets bf-pg,kea-pg --rates 2000,4000 --repeat 3

Needs root, iproute2, perfdhcp and kea-admin (Debian `kea-admin`), `kea-dhcp4` (Debian
`kea-dhcp4-server`; installed with /usr/sbin/policy-rc.d returning 101 so no host service starts:
here it only runs inside the bench's namespaces with the bench's config) and the PostgreSQL server
binaries (Debian `postgresql`) for the -pg targets. Missing peers are skipped with a message. The
servers reach PostgreSQL over its unix socket (a path, reachable from every network namespace);
PostgreSQL itself listens on no TCP address. Every process is stopped by PID, the namespaces and
temp dirs are deleted. Runs are bounded: rates x repeats x (period + 30 s perfdhcp timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.postgres: the throwaway PostgreSQL of the tests

from bootforge.lab.netns import Namespace, Topology, unique_prefix  # noqa: E402

PREFIX = 16
READY_TIMEOUT = 60.0  # serve migrates its database before it opens its sockets
TARGET_RATIO = 1.0
PERFDHCP_THREADS = os.environ.get("BF_PERFDHCP_THREADS", "multi")  # perfdhcp -g; or "single"
BOOTFORGE = str(Path(sys.executable).parent / "bootforge")
PG_DB_BF, PG_DB_KEA = "bootforge_bench", "kea_bench"


@dataclass(frozen=True)
class Site:
    """One provisioning network: 10.(215+n).0.0/16, server .0.1, load .0.2, 64,000 addresses."""

    n: int

    @property
    def net(self) -> str:
        return f"10.{215 + self.n}"

    @property
    def server_ip(self) -> str:
        return f"{self.net}.0.1"

    @property
    def load_ip(self) -> str:
        return f"{self.net}.0.2"

    @property
    def pool(self) -> tuple[str, str]:
        return f"{self.net}.1.0", f"{self.net}.250.255"


SITES = (Site(0), Site(1))


# -- bf-file: the bench-only bootforge process (run inside the server namespace) -----------------


class AppendFileLeaseStore:
    """BENCH-ONLY. One write + flush per group commit, no fsync: the durability of Kea's memfile."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1 << 16)
        self.batches = 0
        self.records = 0

    async def load(self) -> list[Any]:
        return []

    async def commit(self, records: Sequence[Any]) -> None:
        lines = [f"{r.ip},{r.mac},{r.state.value},{r.expires:.0f}\n" for r in records]
        self._file.write("".join(lines))
        self._file.flush()
        self.batches += 1
        self.records += len(records)


async def _serve_bench_file(state_dir: Path) -> None:
    from bootforge.netboot.dhcp import (
        DhcpConfig,
        Mode,
        Pool,
        StaticBootSource,
        StaticReservations,
        Subnet,
        UnknownClients,
    )
    from bootforge.servers.dhcp import DhcpServer

    site = SITES[0]
    subnet = Subnet(
        IPv4Network(f"{site.server_ip}/{PREFIX}", strict=False),
        (Pool(IPv4Address(site.pool[0]), IPv4Address(site.pool[1])),),
        routers=(IPv4Address(site.server_ip),),
        lease_time=3600,
    )
    config = DhcpConfig(Mode.FULL, ("eth0",), (subnet,), unknown_clients=UnknownClients.DISCOVER)
    boot = StaticBootSource(IPv4Address(site.server_ip), "http://x/", "http://x/{mac}")
    store = AppendFileLeaseStore(state_dir / "leases.csv")
    server = DhcpServer(config, boot, StaticReservations({}), store)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await server.close()  # drains held ACKs first, so the counts below are final
    stats = {"drops": dict(server.drops), "commits": store.batches, "records": store.records}
    print(json.dumps(stats), flush=True)


def serve_bench_file(state_dir: Path) -> None:
    profile = os.environ.get("BF_DHCP_PROFILE")  # a path: cProfile the server, for tuning
    if profile:
        import cProfile

        cProfile.runctx("asyncio.run(_serve_bench_file(state_dir))", globals(), locals(), profile)
        return
    try:
        import uvloop

        uvloop.run(_serve_bench_file(state_dir))
    except ImportError:
        asyncio.run(_serve_bench_file(state_dir))


# -- server processes -----------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    log: Path | None = None

    def cpu_seconds(self) -> tuple[float, float]:
        """(utime, stime) of the server process (`ip netns exec` execs, so the PID is it)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), float("nan")
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


@dataclass
class Backend:
    """What the targets share across runs: the throwaway PostgreSQL, if any -pg target runs."""

    pg: Any = None  # support.postgres.PostgresServer
    # The database's secrets key, shared by both sites and kept across runs (the database is too).
    key_file: Path = Path()

    def pg_url(self) -> str:
        assert self.pg is not None
        return f"postgresql+asyncpg://bootforge@/{PG_DB_BF}?host={self.pg.sockdir}&port={self.pg.port}"

    def psql(self, db: str, sql: str) -> None:
        assert self.pg is not None
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.pg.sockdir), "-p",
                str(self.pg.port), "-U", "bootforge", "-d", db, "-c", sql]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)


def _popen(
    ns: Namespace, argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    with log.open("w") as out:  # a file, not a pipe: a chatty server must never block on it
        proc: subprocess.Popen[str] = ns.popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    return proc


def start_bench_file(nss: list[Namespace], state: Path, _backend: Backend) -> list[Server]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-bench-file", str(state)]
    proc = nss[0].popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = Server("bf-file", proc)
    line = _readline_with_timeout(proc, READY_TIMEOUT)
    if line.strip() != "READY":
        raise RuntimeError(f"bf-file did not start: {line!r} {server.stop()}")
    return [server]


def _readline_with_timeout(proc: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


def _serve_config(site: Site, state: Path, extra: str, netboot_extra: str = "") -> Path:
    """A bootforge.toml as an operator would write it for this site's provisioning network."""
    first, last = site.pool
    path = state / "bootforge.toml"
    path.write_text(
        f"""{extra}
state_dir = "{state / "state"}"
listen = "127.0.0.1:6385"
power_sync_interval = 0
enabled_hardware_types = ["fake-hardware"]
log_level = "warning"

[netboot]
address = "{site.server_ip}"
dhcp = "full"
dhcp_interfaces = ["eth0"]
unknown_clients = "discover"
{netboot_extra}
[[netboot.subnets]]
network = "{site.net}.0.0/{PREFIX}"
pool = "{first}-{last}"
routers = ["{site.server_ip}"]
lease_time = 3600
"""
    )
    return path


def _profiled(suffix: str = "") -> list[str]:
    """BF_DHCP_PROFILE=PATH: run serve under cProfile (its event loop thread), stats to PATH."""
    path = os.environ.get("BF_DHCP_PROFILE")
    return [sys.executable, "-m", "cProfile", "-o", path + suffix] if path else []


def _serve_env() -> dict[str, str]:
    # The operator's settings come from the file alone, not from this shell's BOOTFORGE_*.
    return {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}


def start_bf_sqlite(nss: list[Namespace], state: Path, _backend: Backend) -> list[Server]:
    config = _serve_config(SITES[0], state, 'host = "bench-sqlite"')
    log = state / "serve.log"
    proc = _popen(nss[0], [*_profiled(), BOOTFORGE, "serve", "--config", str(config)], log, env=_serve_env())
    server = Server("bf-sqlite", proc, log)
    _wait_ready(nss[0], 67, server)
    return [server]


def start_bf_pg(nss: list[Namespace], state: Path, backend: Backend) -> list[Server]:
    servers: list[Server] = []
    try:
        for site, ns in zip(SITES, nss, strict=True):
            home = state / f"site{site.n}"
            home.mkdir()
            extra = (
                f'host = "bench-netboot-site{site.n}"\nrole = "netboot"\nconductor_group = "site{site.n}"\n'
                f'database_url = "{backend.pg_url()}"\nsecret_key_file = "{backend.key_file}"\n'
            )
            config = _serve_config(site, home, extra, 'api_url = "http://127.0.0.1:6385/"\n')
            log = home / "serve.log"
            argv = [*_profiled(f".site{site.n}"), BOOTFORGE, "serve", "--config", str(config)]
            proc = _popen(ns, argv, log, env=_serve_env())
            servers.append(Server(f"bf-pg/site{site.n}", proc, log))
            # One at a time: the first migrates the database and writes the key the second reads.
            _wait_ready(ns, 67, servers[-1])
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def _kea_config(site: Site, state: Path, lease_db: dict[str, Any]) -> Path:
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "udp"},
            "lease-database": lease_db,
            "valid-lifetime": 3600,
            "subnet4": [
                {
                    "id": site.n + 1,
                    "subnet": f"{site.net}.0.0/{PREFIX}",
                    "pools": [{"pool": " - ".join(site.pool)}],
                    "option-data": [{"name": "routers", "data": site.server_ip}],
                },
            ],
            "loggers": [
                {
                    "name": "kea-dhcp4",
                    "severity": "WARN",
                    "output_options": [{"output": str(state / "kea.log")}],
                },
            ],
        }
    }
    path = state / "kea.json"
    path.write_text(json.dumps(config))
    return path


def _start_kea(ns: Namespace, state: Path, name: str, config: Path) -> Server:
    env = dict(os.environ, KEA_PIDFILE_DIR=str(state), KEA_LOCKFILE_DIR=str(state))
    server = Server(
        name, _popen(ns, ["kea-dhcp4", "-c", str(config)], state / "kea.out", env=env), state / "kea.out"
    )
    _wait_ready(ns, 67, server)
    return server


def start_kea_memfile(nss: list[Namespace], state: Path, _backend: Backend) -> list[Server]:
    lease_db = {"type": "memfile", "persist": True, "name": str(state / "leases.csv"), "lfc-interval": 0}
    return [_start_kea(nss[0], state, "kea-memfile", _kea_config(SITES[0], state, lease_db))]


def start_kea_pg(nss: list[Namespace], state: Path, backend: Backend) -> list[Server]:
    servers: list[Server] = []
    try:
        for site, ns in zip(SITES, nss, strict=True):
            home = state / f"site{site.n}"
            home.mkdir()
            lease_db = {
                "type": "postgresql",
                "name": PG_DB_KEA,
                "host": str(backend.pg.sockdir),
                "port": backend.pg.port,
                "user": "bootforge",
            }
            config = _kea_config(site, home, lease_db)
            servers.append(_start_kea(ns, home, f"kea-pg/site{site.n}", config))
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def start_dnsmasq(nss: list[Namespace], state: Path, _backend: Backend) -> list[Server]:
    site = SITES[0]
    argv = [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
        "--interface=eth0", "--bind-interfaces", "--no-ping", "--dhcp-authoritative",
        f"--dhcp-range={site.pool[0]},{site.pool[1]},255.255.0.0,1h", "--dhcp-lease-max=1000000",
        f"--dhcp-leasefile={state / 'leases'}", "--pid-file=",
        f"--log-facility={state / 'dnsmasq.log'}",
    ]  # fmt: skip
    server = Server("dnsmasq", _popen(nss[0], argv, state / "dnsmasq.out"), state / "dnsmasq.out")
    _wait_ready(nss[0], 67, server)
    return [server]


def _wait_ready(ns: Namespace, port: int, server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        out = ns.run(["ss", "-Hlun", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    server.stop()
    tail = server.log.read_text(errors="replace")[-2000:] if server.log and server.log.exists() else ""
    raise RuntimeError(f"{server.name}: nothing listens on udp/{port} in {ns.name}\n{tail}")


@dataclass(frozen=True)
class Target:
    start: Any  # (namespaces, state dir, backend) -> servers
    sites: int
    binaries: tuple[str, ...] = ()
    postgres: bool = False
    label: str = ""


TARGETS: dict[str, Target] = {
    "bf-sqlite": Target(start_bf_sqlite, 1, label="bootforge serve, SQLite (default)"),
    "bf-pg": Target(start_bf_pg, 2, postgres=True, label="bootforge serve --role netboot x2, PostgreSQL"),
    "bf-file": Target(start_bench_file, 1, label="bootforge DhcpServer, append file (BENCH-ONLY)"),
    "kea-memfile": Target(start_kea_memfile, 1, ("kea-dhcp4",), label="Kea 2.2 memfile"),
    "kea-pg": Target(start_kea_pg, 2, ("kea-dhcp4", "kea-admin"), True, "Kea 2.2 x2, PostgreSQL"),
    "dnsmasq": Target(start_dnsmasq, 1, ("dnsmasq",), label="dnsmasq lease file"),
}
# bootforge target -> the Kea target on the same (or, for SQLite, the nearest embedded) backend
PAIRS = {"bf-pg": "kea-pg", "bf-sqlite": "kea-memfile", "bf-file": "kea-memfile"}


@contextmanager
def backend_for(targets: list[str]) -> Iterator[Backend]:
    if not any(TARGETS[t].postgres for t in targets):
        yield Backend()
        return
    with _durable_postgres() as pg:
        backend = Backend(pg, pg.base / "bootforge-secret.key")
        pg.create_database(PG_DB_BF)
        if "kea-pg" in targets:
            pg.create_database(PG_DB_KEA)
            argv = ["kea-admin", "db-init", "pgsql", "-h", str(pg.sockdir), "-P", str(pg.port),
                    "-u", "bootforge", "-p", "", "-n", PG_DB_KEA]  # fmt: skip
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
        yield backend


@contextmanager
def _durable_postgres() -> Iterator[Any]:
    """The tests' throwaway server (support.postgres), but durable as PostgreSQL ships: the tests turn
    fsync and synchronous_commit off, and a lease benchmark without them would measure no commit."""
    import pwd

    from support.postgres import SERVICE_USER, PostgresServer, find_pg_bin

    class Durable(PostgresServer):
        def start(self) -> None:
            opts = f"-c listen_addresses= -p {self.port} -k {self.sockdir} -c shared_buffers=128MB"
            self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "120",
                      "-o", opts, "start")  # fmt: skip

    bindir = find_pg_bin()
    if bindir is None:
        raise LookupError("PostgreSQL server binaries (Debian postgresql)")
    run_as = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam(SERVICE_USER).pw_name
        except KeyError:
            raise LookupError(f"a '{SERVICE_USER}' system user to run PostgreSQL as") from None
    base = Path(tempfile.mkdtemp(prefix="bf-dhcp-pg-", dir="/tmp"))
    # A unix socket only (no TCP listener): port is just the socket's name suffix.
    pg = Durable(bindir=bindir, base=base, run_as=run_as, port=5432)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def reset(target: str, backend: Backend) -> None:
    """Empty lease store for the next run (the -pg targets share one database across runs)."""
    if target == "bf-pg":
        with _suppress_missing_table():
            backend.psql(PG_DB_BF, "TRUNCATE dhcp_leases")
    elif target == "kea-pg":
        backend.psql(PG_DB_KEA, "TRUNCATE lease4")


@contextmanager
def _suppress_missing_table() -> Iterator[None]:
    try:
        yield
    except subprocess.CalledProcessError as exc:
        if "does not exist" not in (exc.stderr or ""):  # before the first serve migrated it
            raise


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    offered: int
    achieved: float
    drops_do: float  # DISCOVER-OFFER drop ratio, %, worst site
    drops_ra: float  # REQUEST-ACK drop ratio, %, worst site
    delay_ms: float
    user_s: float  # server CPU during the run, all of the target's server processes
    sys_s: float
    leases: int = -1  # rows in the lease table after the run (-pg targets)
    server_stats: str = ""

    @property
    def ok(self) -> bool:
        return self.drops_do < 1.0 and self.drops_ra < 1.0 and self.achieved >= 0.97 * self.offered


def _perfdhcp_argv(site: Site, rate: int, period: int) -> list[str]:
    return ["perfdhcp", "-4", "-g", PERFDHCP_THREADS, "-r", str(rate), "-R", "2000000", "-p", str(period),
            "-l", site.load_ip, site.server_ip]  # fmt: skip


def _parse_perfdhcp(out: str) -> tuple[float, float, float, float]:
    m = re.search(r"Rate: ([\d.]+) 4-way", out)
    achieved = float(m.group(1)) if m else 0.0
    ratios = [float(x) for x in re.findall(r"drops ratio: ([\d.]+|-nan) %", out.replace("-nan", "100"))]
    delays = [float(x) for x in re.findall(r"avg delay: ([\d.]+) ms", out)]
    drops_do = ratios[0] if ratios else 100.0
    drops_ra = ratios[1] if len(ratios) > 1 else 100.0
    return achieved, drops_do, drops_ra, (sum(delays) / len(delays) if delays else float("nan"))


def run_perfdhcp(loads: list[Namespace], rate: int, period: int) -> tuple[float, float, float, float]:
    """perfdhcp on every site at once, each at rate / sites: total rate, worst drops, mean delay."""
    share = max(rate // len(loads), 1)
    procs = [
        ns.popen(
            _perfdhcp_argv(site, share, period), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for site, ns in zip(SITES, loads, strict=False)
    ]
    parsed = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=period + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        parsed.append(_parse_perfdhcp(out or ""))
    return (
        sum(x[0] for x in parsed),
        max(x[1] for x in parsed),
        max(x[2] for x in parsed),
        sum(x[3] for x in parsed) / len(parsed),
    )


def measure(
    target: str, topo: list[tuple[Namespace, Namespace]], backend: Backend, rate: int, period: int
) -> Result:
    t = TARGETS[target]
    servers_ns = [s for s, _ in topo[: t.sites]]
    loads = [load for _, load in topo[: t.sites]]
    reset(target, backend)
    with tempfile.TemporaryDirectory(prefix=f"bf-dhcp-{target}-") as tmp:
        servers = t.start(servers_ns, Path(tmp), backend)
        outs: list[str] = []
        try:
            cpu0 = [s.cpu_seconds() for s in servers]
            achieved, d1, d2, delay = run_perfdhcp(loads, rate, period)
            cpu1 = [s.cpu_seconds() for s in servers]
        finally:
            outs = [s.stop() for s in servers]
    user = sum(b[0] - a[0] for a, b in zip(cpu0, cpu1, strict=True))
    system = sum(b[1] - a[1] for a, b in zip(cpu0, cpu1, strict=True))
    stats = outs[0].strip().splitlines()[-1] if target == "bf-file" and outs[0].strip() else ""
    result = Result(target, rate, achieved, d1, d2, delay, user, system, server_stats=stats)
    if target in ("bf-pg", "kea-pg"):
        result.leases = _count_leases(target, backend)
    return result


def _count_leases(target: str, backend: Backend) -> int:
    assert backend.pg is not None
    db, sql = (PG_DB_BF, "SELECT count(*) FROM dhcp_leases WHERE state = 'bound'") if target == "bf-pg" else (
        PG_DB_KEA, "SELECT count(*) FROM lease4 WHERE state = 0")  # fmt: skip
    argv = ["psql", "-X", "-At", "-h", str(backend.pg.sockdir), "-p", str(backend.pg.port), "-U", "bootforge",
            "-d", db, "-c", sql]  # fmt: skip
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60).stdout.strip()
    return int(out) if out.isdigit() else -1


def build_topology(topo: Topology, sites: int) -> list[tuple[Namespace, Namespace]]:
    """Per site a server and a load namespace joined by a veth pair (eth0 on both sides)."""
    pairs = []
    for site in SITES[:sites]:
        server, load = topo.namespace(f"srv{site.n}"), topo.namespace(f"load{site.n}")
        server.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", load.name)
        for ns, ip in ((server, site.server_ip), (load, site.load_ip)):
            ns.ip("addr", "add", f"{ip}/{PREFIX}", "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")
        deadline = time.monotonic() + 5  # Kea refuses an interface whose carrier is not up yet
        while "LOWER_UP" not in server.ip("link", "show", "eth0").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("veth carrier did not come up")
            time.sleep(0.05)
        pairs.append((server, load))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--serve-bench-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--targets", default="bf-sqlite,bf-pg,bf-file,kea-memfile,kea-pg",
                        help="comma separated, from: " + ", ".join(TARGETS))  # fmt: skip
    parser.add_argument(
        "--rates", default="250,500,1000,2000,3000,4000,5000,6000", help="offered DORA/s, total"
    )
    parser.add_argument("--period", type=int, default=4, help="seconds of load per run (1-30)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per rate (1-10); the best counts")
    parser.add_argument("--quick", action="store_true", help="1000 and 3000 DORA/s, 2 s each")
    args = parser.parse_args()
    if args.serve_bench_file:
        serve_bench_file(args.serve_bench_file)
        return 0
    if not 1 <= args.period <= 30 or not 1 <= args.repeat <= 10:
        parser.error("--period must be 1-30 and --repeat 1-10 (the run is bounded)")
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"--targets: unknown {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    rates = [1000, 3000] if args.quick else [int(r) for r in args.rates.split(",")]
    if any(not 1 <= r <= 50000 for r in rates):
        parser.error("--rates: each between 1 and 50000 DORA/s")
    period = 2 if args.quick else args.period
    if os.geteuid() != 0 or shutil.which("perfdhcp") is None:
        print("needs root and perfdhcp (Debian kea-admin)", file=sys.stderr)
        return 2
    for t in list(targets):
        missing = [b for b in TARGETS[t].binaries if shutil.which(b) is None]
        if missing:
            print(f"skipping {t}: {', '.join(missing)} not installed")
            targets.remove(t)
    try:
        with backend_for(targets) as backend:
            results = run_series(targets, rates, period, args.repeat, backend)
    except LookupError as exc:
        print(f"the -pg targets need {exc}", file=sys.stderr)
        return 2
    report(results, targets, period)
    return 0


def run_series(
    targets: list[str], rates: list[int], period: int, repeat: int, backend: Backend
) -> list[Result]:
    results: list[Result] = []
    saturated: set[str] = set()
    sites = max(TARGETS[t].sites for t in targets)
    with Topology(unique_prefix("bfdhcp")) as topo:
        pairs = build_topology(topo, sites)
        # Targets interleave per rate (and per repeat) so that load from other work on the
        # machine hits all of them alike rather than one whole series.
        for rate in rates:
            runs: dict[str, list[Result]] = {}
            for _ in range(repeat):
                for target in [t for t in targets if t not in saturated]:
                    r = measure(target, pairs, backend, rate, period)
                    results.append(r)
                    runs.setdefault(target, []).append(r)
                    print_result(r, period)
            for target, rs in runs.items():
                # Stop raising the rate only when every repeat was swamped: one noisy run on a
                # shared machine must not end a series.
                if all(r.drops_do > 10 and r.drops_ra > 10 for r in rs):
                    saturated.add(target)
    return results


def _us_per_dora(r: Result, period: int) -> float:
    return (r.user_s + r.sys_s) / max(r.achieved * period, 1) * 1e6


def print_result(r: Result, period: int) -> None:
    leases = f" bound leases in DB {r.leases}" if r.leases >= 0 else ""
    print(
        f"{r.target:11} offered {r.offered:6}/s  got {r.achieved:8.1f}/s  "
        f"drops D-O {r.drops_do:5.2f}% R-A {r.drops_ra:5.2f}%  avg delay {r.delay_ms:6.2f} ms  "
        f"server CPU user {r.user_s:4.2f} s sys {r.sys_s:4.2f} s ({_us_per_dora(r, period):5.1f} us/DORA)"
        f"{leases} {r.server_stats}",
        flush=True,
    )


def report(results: list[Result], targets: list[str], period: int) -> None:
    best: dict[str, Result | None] = {}
    for target in targets:
        passing = [r for r in results if r.target == target and r.ok]
        best[target] = max(passing, key=lambda r: (r.offered, r.achieved), default=None)
    print("\nHighest sustained DORA/s with < 1% drops (offered rate met within 3%):")
    for target, r in best.items():
        value = f"{r.achieved:8.0f}  ({_us_per_dora(r, period):5.1f} us server CPU/DORA)" if r else "       -"
        print(f"  {target:11} {value}  {TARGETS[target].label}")
    print("Ratios against Kea on the same backend (SQLite: against memfile, Kea has no SQLite):")
    for bf, kea in PAIRS.items():
        a, b = best.get(bf), best.get(kea)
        if a is None or b is None:
            if bf in best and kea in best:
                print(f"  {bf}/{kea}: not comparable (one sustained no rate)")
            continue
        # The offered rates are a grid: both sustaining the same step is parity at that resolution
        # (the achieved rates then differ only by perfdhcp's noise).
        ratio = a.offered / b.offered
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        rates = f"highest offered rate sustained, {a.offered} / {b.offered}"
        print(f"  {bf:9} / {kea:11} = {ratio:.2f}x ({rates}; target >= {TARGET_RATIO:.1f}x): {verdict}")
    print("A run's rate is capped by the highest offered rate; PASS at the cap means both kept up.")


if __name__ == "__main__":
    sys.exit(main())
