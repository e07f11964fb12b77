"""Composition of the netboot services (DHCP, TFTP, HTTP boot) around the conductor's netboot view.

Events are tied to nodes here: DHCP events name the node; an HTTP fetch names it by the `mac` in its
query; TFTP and other HTTP fetches are tied by the client address that DHCP last gave that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from bootforge.conductor.discovery_boot import DiscoveryOffer
from bootforge.conductor.netboot import (
    BootEndpoints,
    BootEndpoints6,
    DbLeaseStore,
    EventSink,
    NetbootView,
    RamdiskSource,
)
from bootforge.conductor.netboot6 import Netboot6Source
from bootforge.config import Settings
from bootforge.db.engine import Database
from bootforge.drivers.hardware import Drivers
from bootforge.netboot import dhcp, dhcp6, tftp
from bootforge.netboot.boot import loaders, scripts
from bootforge.netboot.clients import ClientAddresses
from bootforge.servers.dhcp import DhcpServer
from bootforge.servers.dhcp6 import Dhcp6Server, FileLease6Store
from bootforge.servers.http_boot import HttpBootServer, HttpFetchEvent
from bootforge.servers.tftp import TftpEvent, TftpServer
from bootforge.servers.tftp_workers import TftpWorkers, WorkerSpec
from bootforge.text import printable

log = logging.getLogger("bootforge.netboot")

# HTTP fetches that are not the machine booting from the network: the agent streaming an image, a
# BMC fetching a virtual-media ISO. Everything else (loaders, the boot script, kernel, initrd) is.
NOT_BOOT_PATHS = ("/images/", "/vmedia/")


class LoadersFirst:
    """A TFTP FileSource: boot loaders from Debian's packages by their logical names, then the root."""

    def __init__(self, found: dict[str, str], root: tftp.FileSystemSource) -> None:
        self.found = found
        self.root = root

    def open(self, path: str, client: tftp.ClientAddress) -> tftp.Readable:
        real = self.found.get(tftp.normalize_path(path))
        if real is not None:
            # Resolved: Debian's /usr/lib/ipxe/ipxe.efi is a symlink to /boot/ipxe.efi, and the file
            # source refuses to follow links (right for the root, whose content is not ours to trust).
            where = Path(real).resolve()
            return tftp.FileSystemSource(where.parent).open(where.name, client)
        return self.root.open(path, client)


# The per-node GRUB config on TFTP, named the pxelinux/GRUB way: grub/grub.cfg-01-aa-bb-cc-dd-ee-ff.
_NODE_GRUB_CFG = re.compile(r"grub/grub\.cfg-01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})")
# (MAC with colons, client IP) -> that node's grub.cfg
NodeGrubConfig = Callable[[str, str], str]


def tftp_source(
    found: dict[str, str], root: str, bootstrap: str, node_config: NodeGrubConfig | None = None
) -> LoadersFirst:
    """What TFTP serves: loaders, then `root`, plus the GRUB bootstrap as grub/grub.cfg and, with
    node_config, each node's grub.cfg as grub/grub.cfg-01-<mac>.

    Built from plain values so a TFTP worker process (bootforge.servers.tftp_workers) builds the
    same source from its JSON spec; a worker has no node_config (no database view): it asks the
    parent for the per-node files (WorkerSpec.virtual_from_parent = NODE_GRUB_CFG_PATTERN)."""
    return LoadersFirst(found, tftp.FileSystemSource(Path(root), virtual=grub_files(bootstrap, node_config)))


def grub_files(bootstrap: str, node_config: NodeGrubConfig | None) -> tftp.VirtualFiles:
    """The GRUB bootstrap and, with node_config, each node's grub.cfg, as TFTP virtual files."""
    data = bootstrap.encode()

    def grub(path: str, client: tftp.ClientAddress) -> bytes | None:
        # Shim -> GRUB asks TFTP for grub/grub.cfg, whose bootstrap asks for the per-node file
        # (Debian's signed GRUB reads nothing over HTTP).
        if path == "grub/grub.cfg":
            return data
        m = _NODE_GRUB_CFG.fullmatch(path.lower())
        if m is None or node_config is None:
            return None
        return node_config(m.group(1).replace("-", ":"), client[0]).encode()

    return grub


def _node_grub_config(view: NetbootView) -> NodeGrubConfig:
    return lambda mac, ip: view.grub_config({"mac": mac}, ip, tftp=True)


@dataclass
class Netboot:
    view: NetbootView
    sink: EventSink
    servers: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # client address -> node UUID, learnt from DHCP (in proxy mode from the client's exchange with
    # the site's server), to tie TFTP and HTTP fetches to nodes; bounded and expiring
    ip_to_node: ClientAddresses = field(default_factory=ClientAddresses)

    async def close(self) -> None:
        for server in reversed(self.servers):
            # The TFTP and HTTP servers call it aclose(), the DHCP server close().
            closer = getattr(server, "aclose", None) or server.close
            with contextlib.suppress(Exception):
                await closer()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.sink.flush()

    def on_dhcp(self, e: dhcp.NodeEvent) -> None:
        self.view.note_dhcp(e.kind, e.mac, e.ip)
        if e.ip and e.kind in ("dhcp.release", "dhcp.decline", "dhcp.expired"):
            self.ip_to_node.forget(e.ip, e.node_id)
        elif e.ip:
            self.ip_to_node[e.ip] = e.node_id
        text = f"{e.kind} {e.mac}" + (f" {e.ip}" if e.ip else "") + f" on {e.interface}"
        self.sink.emit(
            e.node_id,
            "dhcp",
            text + (f": {e.detail}" if e.detail else ""),
            "warning"
            if e.kind in ("dhcp.nak", "dhcp.decline", "dhcp.dropped", "dhcp.no_boot_file")
            else "info",
            network_boot=e.boot_file is not None,
        )

    def on_dhcp6(self, e: dhcp.NodeEvent) -> None:
        """A DHCPv6 exchange of a node (its MAC from the DUID, the relay's option 79, or the EUI-64
        link-local address): on its timeline, and the leased address tied to it for TFTP/HTTP."""
        if e.ip and e.kind in ("dhcp6.release", "dhcp6.decline", "dhcp6.expired"):
            self.ip_to_node.forget(e.ip, e.node_id)
        elif e.ip:
            self.ip_to_node[e.ip] = e.node_id
        text = f"{e.kind} {e.mac}" + (f" {e.ip}" if e.ip else "") + f" on {e.interface}"
        self.sink.emit(
            e.node_id,
            "dhcp",
            text + (f": {e.detail}" if e.detail else ""),
            "warning" if e.kind in ("dhcp6.decline", "dhcp6.dropped", "dhcp6.no_boot_file") else "info",
            network_boot=e.boot_file is not None,
        )

    def on_tftp(self, e: TftpEvent) -> None:
        node = self.ip_to_node.get(e.client[0])
        if node is None:
            return
        text = (
            f"tftp {printable(e.filename)} {e.outcome}: {e.bytes_sent} bytes in {e.duration:.2f} s "
            f"(blksize {e.blksize}, windowsize {e.windowsize}, {e.retransmits} retransmits)"
        )
        failed = e.outcome not in ("completed", "size_probe")
        # Every TFTP fetch of a node is its firmware or boot loader at work.
        self.sink.emit(
            node,
            "tftp",
            text + (f": {printable(e.message)}" if e.message else ""),
            "warning" if failed else "info",
            network_boot=True,
        )

    def on_http(self, e: HttpFetchEvent) -> None:
        known = self.view.by_mac.get((e.mac or "").lower())
        node = known.node_uuid if known else self.ip_to_node.get(e.client[0])
        if node is None:
            return
        request = f"{printable(e.method)} {printable(e.path)}"
        text = f"http {request} {e.status}: {e.bytes_sent} bytes in {e.duration:.2f} s"
        self.sink.emit(
            node,
            "http",
            text + (f" (range {printable(e.range)})" if e.range else ""),
            "warning" if e.status >= 400 else "info",
            network_boot=not e.path.startswith(NOT_BOOT_PATHS),
        )


async def start_netboot(settings: Settings, db: Database, drivers: Drivers | None = None) -> Netboot | None:
    """Start the netboot services the settings switch on; None when all are off."""
    nb = settings.netboot
    if nb.dhcp == "off" and nb.dhcp6 == "off" and not nb.tftp and not nb.http:
        return None
    root = nb.root or settings.state_dir / "boot"
    root.mkdir(parents=True, exist_ok=True)
    http_base = f"http://{nb.address}:{nb.http_port}"
    endpoints = BootEndpoints(
        tftp_server=IPv4Address(nb.address),
        # One base for loaders (the `files` map) and artifacts under `root`: the HTTP server serves
        # both at its top level, so a ramdisk named "bootforge/vmlinuz" is at {http_base}/bootforge/vmlinuz.
        http_base=http_base,
        ipxe_script_url=f"{http_base}/boot/ipxe?mac={{mac}}",
    )
    key_path = settings.secret_key_path if settings.agent.require_boot_token else None
    endpoints6 = None
    if nb.address6:
        http_base6 = f"http://[{nb.address6}]:{nb.http_port}"
        endpoints6 = BootEndpoints6(
            IPv6Address(nb.address6), http_base6, f"{http_base6}/boot/ipxe?mac={{mac}}"
        )
    ramdisk = RamdiskSource(
        # The API the ramdisk's agent calls: any API process will do (serve --role netboot runs none).
        nb.api_url or settings.public_url,
        nb.deploy_kernel,
        nb.deploy_ramdisk,
        tuple(nb.kernel_args),
        key_path,
        api_url6=nb.public_url6.rstrip("/") or None,
    )
    drivers = drivers or Drivers(settings)
    sink = EventSink(db, settings.host)
    # The signed chain is fetched by `bootforge ramdisk build` (and the lab), never here: a serve
    # that starts on an air-gapped network must not wait on apt. What is missing is logged, and a
    # Secure Boot node is told on its timeline.
    found = find_loaders(nb.loader_dirs)
    view = NetbootView(
        db,
        endpoints,
        ramdisk,
        boots_from_network=drivers.boots_from_network,
        on_refusal=lambda node, why: sink.emit(node, "boot", why, "warning"),
        bind_to_leases=nb.dhcp == "full",
        missing_loaders={name: loaders.how_to_provide(name) for name in found.missing},
        secure_boot_always=nb.secure_boot == "always",
        endpoints6=endpoints6,
        # Machines of other conductor groups are answered by their own site's netboot process.
        conductor_group=settings.conductor_group,
    )
    view.host = settings.host
    if settings.discovery.enabled:
        view.discovery = DiscoveryOffer(settings.discovery, settings.secret_key_path)
    await view.refresh()
    netboot = Netboot(view, sink)
    netboot.tasks += [asyncio.create_task(view.run()), asyncio.create_task(sink.run())]
    try:
        # Dual stack: the same servers again on address6, each on one address (client addresses
        # then read as plain IPv4 or IPv6, never IPv4-mapped, for the lease and node maps).
        for address in (nb.address, nb.address6) if nb.address6 else (nb.address,):
            if nb.http:
                server = HttpBootServer(
                    root,
                    address=address,
                    port=nb.http_port,
                    scripts=view,
                    files=dict(found.found),
                    on_event=netboot.on_http,
                )
                await server.start()
                netboot.servers.append(server)
            if nb.tftp:
                await _start_tftp(
                    netboot, settings, root, dict(found.found), http_base, _node_grub_config(view), address
                )
        if nb.dhcp != "off":
            dhcp_server = DhcpServer(
                _dhcp_config(settings), view, view, DbLeaseStore(db), on_event=netboot.on_dhcp
            )
            await dhcp_server.start()
            netboot.servers.append(dhcp_server)
            # Discovery: an unknown machine's lease, fresher than the view's copy of the database.
            view.lease_of = _bound_lease(dhcp_server)
        if nb.dhcp6 != "off" and endpoints6 is not None:
            dhcp6_server = Dhcp6Server(
                _dhcp6_config(settings),
                Netboot6Source(view, endpoints6),
                view,
                FileLease6Store(settings.state_dir / "dhcp6-leases.json"),
                nb.dhcp6_interfaces,
                on_event=netboot.on_dhcp6,
            )
            await dhcp6_server.start()
            netboot.servers.append(dhcp6_server)
    except BaseException:
        await netboot.close()
        raise
    log.info(
        "netboot on %s: DHCP %s on %s, DHCPv6 %s on %s, TFTP %s, HTTP boot %s",
        nb.address + (f" and {nb.address6}" if nb.address6 else ""),
        nb.dhcp,
        ",".join(nb.dhcp_interfaces) or "-",
        nb.dhcp6,
        ",".join(nb.dhcp6_interfaces) or "-",
        "on" if nb.tftp else "off",
        f"{http_base}" if nb.http else "off",
    )
    return netboot


def find_loaders(loader_dirs: list[Path]) -> loaders.LoaderSet:
    """Every loader bootforge can hand out (the arch table's iPXE builds, shim and GRUB), from the
    operator's netboot.loader_dirs first, then Debian's package paths; what is missing is logged."""
    for d in loader_dirs:
        if not d.is_dir():
            log.warning("netboot.loader_dirs: %s is not a directory; no loaders are taken from it", d)
    found = loaders.find_loaders(
        loaders.loader_names_for_arches() | set(loaders.LOADERS),
        extra_dirs=[str(d) for d in loader_dirs],
        trees=loaders.cached_loader_trees(),
    )
    for problem in found.problems():
        log.warning("%s", problem)
    return found


async def _start_tftp(
    netboot: Netboot,
    settings: Settings,
    root: Path,
    found: dict[str, str],
    http_base: str,
    node_config: NodeGrubConfig | None = None,
    address: str | None = None,
) -> None:
    nb = settings.netboot
    address = address or nb.address
    bootstrap = scripts.render_grub_bootstrap(f"{http_base}/boot/grub.cfg")
    source = tftp_source(found, str(root), bootstrap, node_config)
    workers = nb.tftp_workers > 1
    server = TftpServer(
        source,
        address,
        port=nb.tftp_port,
        on_event=netboot.on_tftp,
        reuse_port=workers,
        dataplane=nb.tftp_dataplane,
        max_transfers_per_client=nb.tftp_max_transfers_per_client,
    )
    await server.start()
    netboot.servers.append(server)
    if workers:
        spec = WorkerSpec(
            address=address,
            port=nb.tftp_port,
            source_factory=f"{__name__}:tftp_source",
            source_args={"found": found, "root": str(root), "bootstrap": bootstrap},
            config=server.config,
            dataplane=nb.tftp_dataplane,
            max_transfers_per_client=nb.tftp_max_transfers_per_client,
            log_level=logging.getLogger("bootforge").getEffectiveLevel(),
            # A node's grub.cfg needs the conductor's view: the workers ask this process for it.
            virtual_from_parent=_NODE_GRUB_CFG.pattern if node_config is not None else None,
        )
        virtual = grub_files(bootstrap, node_config) if node_config is not None else None
        pool = TftpWorkers(spec, nb.tftp_workers - 1, on_event=netboot.on_tftp, virtual=virtual)
        await pool.start()
        netboot.servers.append(pool)


def _bound_lease(server: DhcpServer) -> Callable[[str], str | None]:
    def lease_of(mac: str) -> str | None:
        core = getattr(server, "core", None)
        record = core.lease_for(mac) if core is not None else None
        bound = record is not None and record.state is dhcp.LeaseState.BOUND
        return str(record.ip) if bound and record is not None else None

    return lease_of


def _dhcp_config(settings: Settings) -> dhcp.DhcpConfig:
    nb = settings.netboot
    discovery = settings.discovery.enabled
    subnets = []
    for s in nb.subnets:
        first, _, last = s.pool.partition("-")
        subnets.append(
            dhcp.Subnet(
                network=IPv4Network(s.network),
                pools=(dhcp.Pool(IPv4Address(first.strip()), IPv4Address(last.strip())),),
                routers=tuple(IPv4Address(r) for r in s.routers),
                dns_servers=tuple(IPv4Address(d) for d in s.dns_servers),
                lease_time=s.lease_time,
            )
        )
    return dhcp.DhcpConfig(
        mode=dhcp.Mode(nb.dhcp),
        interfaces=tuple(nb.dhcp_interfaces),
        subnets=tuple(subnets),
        # Discovery serves unknown machines, but only on its own subnets.
        unknown_clients=dhcp.UnknownClients("discover" if discovery else nb.unknown_clients),
        unknown_networks=tuple(
            n for n in settings.discovery.networks() if discovery and isinstance(n, IPv4Network)
        ),
    )


def _dhcp6_config(settings: Settings) -> dhcp6.Dhcp6Config:
    nb = settings.netboot
    first, _, last = nb.dhcp6_pool.partition("-")
    full = nb.dhcp6 == "full"
    return dhcp6.Dhcp6Config(
        mode=dhcp6.Mode6(nb.dhcp6),
        # A DUID-UUID named after the conductor: stable across restarts (clients RENEW and REQUEST
        # with it), distinct per conductor.
        server_duid=dhcp6.duid_uuid(uuid.uuid5(uuid.NAMESPACE_URL, f"bootforge-dhcp6:{settings.host}").bytes),
        prefix=IPv6Network(nb.dhcp6_prefix),
        pool_first=IPv6Address(first.strip()) if full else None,
        pool_last=IPv6Address(last.strip()) if full else None,
        dns_servers=tuple(IPv6Address(d) for d in nb.dhcp6_dns_servers),
        preferred_lifetime=nb.dhcp6_lease_time // 2,
        valid_lifetime=nb.dhcp6_lease_time,
        unknown_clients=dhcp.UnknownClients(nb.unknown_clients),
    )
