"""The conductor's answers to the netboot servers, which never import the conductor themselves.

- `NetbootView` knows every PXE-enabled port's MAC with its node's UUID and provision state, from an
  in-memory copy of the database refreshed every few seconds and right after a node changes state.
  The DHCP server asks it per packet (`reservation_for`, `boot_for`), so it must never query there.
- `DbLeaseStore` keeps DHCP leases in the database; the DHCP server commits them in groups.
- `EventSink` puts netboot events (DHCP exchanges, TFTP and HTTP fetches) on the nodes' timelines,
  written in batches so a boot storm does not turn into one transaction per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bootforge import boot_token
from bootforge.conductor import states, volumes
from bootforge.conductor.discovery_boot import MAC_RE, DiscoveryOffer
from bootforge.db.engine import Database, _sqlite_pragmas, is_sqlite
from bootforge.db.models import NODE_EVENTS, Lease, Node, Port, utcnow
from bootforge.drivers.storage import BootVolume
from bootforge.errors import InvalidInput
from bootforge.netboot import dhcp
from bootforge.netboot.boot import scripts
from bootforge.netboot.boot.arch import ARCHES, Arch, Firmware, cpu_arch, ramdisk_file
from bootforge.netboot.dhcp import BootDecision, ClientInfo, LeaseRecord, LeaseState, Reservation
from bootforge.text import MESSAGE_LIMIT, printable

log = logging.getLogger("bootforge.netboot")

RAMDISK_PURPOSE = {
    states.CLEANING: "clean",
    states.CLEANWAIT: "clean",
    states.INSPECTING: "inspect",
    states.INSPECTWAIT: "inspect",
    states.RESCUING: "rescue",
    states.RESCUEWAIT: "rescue",
}

# What a refused boot script says, whoever asks: the same for an unknown MAC and for a node with
# nothing to boot, so the script tells a stranger neither which node a MAC is nor its state.
REFUSED = (
    "nothing to boot for this machine now (unknown MAC, or not in a state that boots from the "
    "network); the reason is on the timeline of the node"
)
# Seconds between two timeline events for the same refusal of the same node.
REFUSAL_EVENT_EVERY = 60.0

# States in which a machine is expected to network-boot bootforge's ramdisk.
RAMDISK_STATES = frozenset(
    {
        states.DEPLOYING,
        states.DEPLOYWAIT,
        states.CLEANING,
        states.CLEANWAIT,
        states.INSPECTING,
        states.INSPECTWAIT,
        states.RESCUING,
        states.RESCUEWAIT,
    }
)


@dataclass(frozen=True, slots=True)
class KnownPort:
    mac: str
    node_uuid: str
    node_name: str | None
    provision_state: str
    maintenance: bool
    boot_mode: str | None
    deploy_kernel: str | None
    deploy_ramdisk: str | None
    # False when the node's boot interface boots the ramdisk another way (virtual media): then the
    # network boot script must not hand it the ramdisk as well.
    network_boot: bool = True
    # The node's current ramdisk boot (driver_internal_info["agent_boot"]): its boot token goes
    # into the script.
    agent_boot: str | None = None
    # properties.capabilities says secure_boot:true: its UEFI firmware only runs signed loaders.
    secure_boot: bool = False
    # properties.cpu_arch (Ironic's name: x86_64, aarch64): picks the node's ramdisk build.
    cpu_arch: str | None = None


@dataclass(frozen=True)
class BootEndpoints:
    """Where the boot chain's next stages are served from."""

    tftp_server: IPv4Address
    http_base: str  # artifacts, e.g. http://10.0.0.1:8080/boot/files
    ipxe_script_url: str  # with "{mac}", e.g. http://10.0.0.1:8080/boot/ipxe?mac={mac}


@dataclass(frozen=True)
class BootEndpoints6:
    """The same on IPv6 (netboot.address6): URLs with the bracketed address."""

    tftp_server: IPv6Address
    http_base: str  # e.g. http://[fd00::1]:8080
    ipxe_script_url: str  # with "{mac}", e.g. http://[fd00::1]:8080/boot/ipxe?mac={mac}


@dataclass(frozen=True)
class RamdiskSource:
    """The bootforge ramdisk and how it finds its way back to the API."""

    api_url: str
    kernel: str  # a file name under the HTTP root, or a URL
    ramdisk: str
    kernel_args: tuple[str, ...] = ()
    # The conductor's secret key file, from which each boot's token is derived (bootforge/boot_token.py);
    # None when lookups do not require the token (agent.require_boot_token off): no token is sent.
    key_path: Path | None = None
    # The API as a machine that booted over IPv6 reaches it (http://[fd00::1]:6385); None: api_url.
    api_url6: str | None = None


class NetbootView:
    # Set by serve when discovery is on: unknown MACs on its subnets get the discovery ramdisk.
    discovery: DiscoveryOffer | None = None
    # MAC -> the address bootforge's DHCP server has bound to it now (its own table, not the database's).
    lease_of: Callable[[str], str | None] | None = None

    def __init__(
        self,
        db: Database,
        endpoints: BootEndpoints | None = None,
        ramdisk: RamdiskSource | None = None,
        refresh_every: float = 2.0,
        boots_from_network: Callable[[str, str | None], bool] | None = None,
        on_refusal: Callable[[str, str], None] | None = None,
        bind_to_leases: bool = False,
        missing_loaders: Mapping[str, str] | None = None,
        secure_boot_always: bool = False,
        endpoints6: BootEndpoints6 | None = None,
        conductor_group: str | None = None,
    ) -> None:
        self.db = db
        # Answer only for the nodes of this conductor group (a netboot process per site or rack);
        # None: every node.
        self.conductor_group = conductor_group
        # The process's name (settings.host), written as the author of the events the view itself
        # writes (cpu_arch learnt from DHCP), as EventSink does for the boot events.
        self.host: str | None = None
        # Where a client that asks over IPv6 fetches the next stages (netboot.address6), if served.
        self.endpoints6 = endpoints6
        # netboot.secure_boot = "always": every UEFI x64 PXE client gets the signed chain.
        self.secure_boot_always = secure_boot_always
        # Boot loader name -> how to provide it, for the loaders `serve` did not find: DHCP offers
        # none of them (the firmware would fail to fetch it) and says so on the node's timeline.
        self.missing_loaders = dict(missing_loaders or {})
        # With bootforge's DHCP in full mode: a ramdisk script (which carries the boot token) goes only
        # to an address bootforge leased to the MAC it is asked for. `_leases` is the database's view
        # (bound, unexpired; read with the rest at each refresh), `_acked` what this process's DHCP
        # server acknowledged since (note_dhcp), so a script asked for right after the ACK is served.
        self.bind_to_leases = bind_to_leases
        self._leases: dict[str, set[str]] = {}
        self._acked: dict[str, str] = {}
        # (node UUID, reason): where a refused node's reason goes (its timeline), since the script
        # itself, served to anyone who asks with the MAC, does not say it.
        self.on_refusal = on_refusal
        self._refusals_told: dict[tuple[str, str], float] = {}
        self.endpoints = endpoints
        self.ramdisk = ramdisk
        # (driver, boot_interface) -> does that boot interface boot the ramdisk from the network?
        self.boots_from_network = boots_from_network or (lambda driver, boot: True)
        self.refresh_every = refresh_every
        self.by_mac: dict[str, KnownPort] = {}
        # node UUID -> boot volume, for nodes with the iscsi storage interface (boot from volume).
        self.boot_volumes: dict[str, BootVolume] = {}
        self._wake = asyncio.Event()
        # MAC -> the CPU architecture its firmware announced in DHCP (option 93, or the PXE/HTTP
        # vendor class), for a node whose properties do not say it yet; bounded.
        self._dhcp_cpu: dict[str, str] = {}
        # Nodes whose cpu_arch is being recorded from DHCP (one background write each at a time).
        self._recording: dict[str, asyncio.Task[None]] = {}

    async def refresh(self) -> None:
        stmt = (
            select(
                Port.address,
                Node.uuid,
                Node.name,
                Node.provision_state,
                Node.maintenance,
                Node.boot_mode,
                Node.driver_info,
                Node.driver,
                Node.boot_interface,
                Node.driver_internal_info,
                Node.properties,
            )
            .join(Node, Node.id == Port.node_id)
            .where(Port.pxe_enabled.is_(True))
        )
        if self.conductor_group is not None:
            stmt = stmt.where(Node.conductor_group == self.conductor_group)
        # The bound leases of known ports only: unknown machines are checked against the DHCP
        # server's own table (lease_of), and reading every lease of a busy pool here held the event
        # loop ~170 ms per refresh at 20,000 leases (bench/netboot_dhcp.py), while DHCP requests dropped.
        leases = (
            select(Lease.mac, Lease.ip)
            .join(Port, Port.address == Lease.mac)
            .where(
                Port.pxe_enabled.is_(True),
                Lease.state == LeaseState.BOUND.value,
                Lease.expires > time.time(),
            )
        )
        async with self.db.read_conn() as conn:
            rows = (await conn.execute(stmt)).all()
            leased = (await conn.execute(leases)).all() if self.bind_to_leases else []
        by_mac: dict[str, set[str]] = {}
        for mac, ip in leased:
            by_mac.setdefault(mac, set()).add(ip)
        self._leases = by_mac
        self.by_mac = {
            mac: KnownPort(
                mac,
                uuid,
                name,
                state,
                maint,
                mode,
                (info or {}).get("deploy_kernel"),
                (info or {}).get("deploy_ramdisk"),
                self.boots_from_network(driver, boot),
                _agent_boot(internal),
                _wants_secure_boot(props),
                _cpu_arch(props),
            )
            for mac, uuid, name, state, maint, mode, info, driver, boot, internal, props in rows
        }
        self.boot_volumes = await volumes.boot_volumes(self.db)

    def note_dhcp(self, kind: str, mac: str, ip: str | None) -> None:
        """A DHCP event of this process's server: an ACK binds `ip` to `mac` at once; a release,
        decline or expiry ends it (the database's view follows at the next refresh)."""
        if kind == "dhcp.ack" and ip:
            self._acked[mac] = ip
        elif kind in ("dhcp.release", "dhcp.decline", "dhcp.expired"):
            self._acked.pop(mac, None)
            self._leases.pop(mac, None)

    def leased_to(self, mac: str) -> set[str]:
        """The addresses bootforge's DHCP has leased to `mac` now."""
        acked = self._acked.get(mac)
        return self._leases.get(mac, set()) | ({acked} if acked else set())

    def changed(self) -> None:
        """Ask for a refresh soon (a node changed state, a port was added)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("netboot view refresh failed; keeping the previous view")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_every)
            self._wake.clear()

    # --- dhcp.Reservations / dhcp.BootSource ----------------------------------------------------

    def reservation_for(self, mac: str) -> Reservation | None:
        known = self.by_mac.get(mac)
        if known is None:
            return None
        return Reservation(node_id=known.node_uuid, hostname=known.node_name)

    def boot_for(self, client: ClientInfo, node_id: str | None) -> BootDecision | dhcp.NoBootFile | None:
        if self.endpoints is None:
            return None
        known = self.by_mac.get(client.mac)
        if known is None and node_id is None and not self._discovers(str(client.link or "")):
            return None  # unknown machines are served only on discovery.subnets
        if known is not None and client.arch is not None:
            self._note_cpu_arch(known, client.arch)
        secure = self.secure_boot_always or (known is not None and known.secure_boot)
        # A UEFI architecture without an iPXE build (ARM64: Debian packages none) boots the signed
        # chain whether or not Secure Boot is on; an operator's build in loader_dirs is used instead.
        no_ipxe = self._needs_signed_chain(client.arch)
        if (secure or no_ipxe) and not client.ipxe:
            refused = self._secure_boot_chain_missing(client, secure)
            if refused is not None:
                return refused
            signed = self._secure_boot_chain(client)
            if signed is not None:
                return signed
            if secure and _http_client(client):
                return _no_secure_http_boot(client)
        # Every known machine gets iPXE; its script then says what this node boots now (ramdisk,
        # local disk) or why it refuses and retries. iPXE never gets a loader again (choose_boot).
        e = self.endpoints
        return dhcp.choose_boot(
            client,
            tftp_server=e.tftp_server,
            http_base=e.http_base,
            ipxe_script_url=e.ipxe_script_url,
            missing=self.missing_loaders.get,
        )

    def _secure_boot_chain(self, client: ClientInfo) -> BootDecision | None:
        """Shim over TFTP for a UEFI x64 PXE client: shim loads grubx64.efi from beside itself, and
        that GRUB (no http module) reads its per-node config and the ramdisk by TFTP too. HTTP-boot
        firmware keeps the iPXE chain: GRUB's prefix would then be HTTP, which it cannot read."""
        arch = client.arch
        if self.endpoints is None or arch is None or client.http_boot or arch.http:
            return None
        chain = arch.signed_chain
        return BootDecision(chain[0], self.endpoints.tftp_server) if chain else None

    def _needs_signed_chain(self, arch: Arch | None) -> bool:
        """The architecture's iPXE build is missing but it has a signed chain (ARM64 UEFI)."""
        return arch is not None and bool(arch.signed_chain) and arch.loader in self.missing_loaders

    def _secure_boot_chain_missing(self, client: ClientInfo, secure: bool = True) -> dhcp.NoBootFile | None:
        """A Secure Boot node's UEFI firmware runs only signed loaders: without shim and the
        signed GRUB it cannot boot from bootforge at all, so it is told so instead of offered one.
        The same for an architecture whose only chain is the signed one (no iPXE build)."""
        arch = client.arch
        if arch is None or arch.firmware is not Firmware.UEFI:
            return None
        chain = [n for n in arch.signed_chain if n in self.missing_loaders]
        if not chain:
            return None
        how = "; ".join(f"{n}: {self.missing_loaders[n]}" for n in chain)
        if not secure and arch.loader is not None:
            return dhcp.NoBootFile(
                dhcp.LOADER_MISSING,
                f"no boot file offered to this {arch.name} client (DHCP architecture 0x{arch.code:02x}): "
                f"it has no iPXE build ({arch.loader}: {self.missing_loaders[arch.loader]}) and its "
                f"signed boot chain is missing {', '.join(chain)} ({how})",
            )
        return dhcp.NoBootFile(
            SECURE_BOOT_LOADER_MISSING,
            f"no boot file offered to this Secure Boot node ({arch.name}, DHCP architecture "
            f"0x{arch.code:02x}): its signed boot chain is missing {', '.join(chain)} ({how})",
        )

    # --- the node's CPU architecture, from DHCP -------------------------------------------------

    def cpu_of(self, known: KnownPort) -> str | None:
        """The node's CPU architecture: what its firmware announced in this boot's DHCP, else
        properties.cpu_arch. The firmware's word comes first because the recorded value may have
        been set from a stranger's forged DHCP packet (only while unset, but it stays until
        inspection): the machine itself announces its architecture again at every boot."""
        return self._dhcp_cpu.get(known.mac) or known.cpu_arch

    def _note_cpu_arch(self, known: KnownPort, arch: Arch) -> None:
        """Remember the architecture a node's firmware announced; record it as properties.cpu_arch
        (with a timeline event) when the node has none, as inspection would."""
        if arch.cpu is None:
            return
        if len(self._dhcp_cpu) >= 10_000 and known.mac not in self._dhcp_cpu:
            self._dhcp_cpu.clear()  # a flood of strangers' MACs cannot grow it without bound
        self._dhcp_cpu[known.mac] = arch.cpu
        if known.cpu_arch or known.node_uuid in self._recording:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._record_cpu_arch(known, arch))
        except RuntimeError:  # no event loop (a synchronous caller): remembered in memory only
            return
        self._recording[known.node_uuid] = task
        task.add_done_callback(lambda _: self._recording.pop(known.node_uuid, None))

    async def _record_cpu_arch(
        self, known: KnownPort, arch: Arch, tries: int = 30, every: float = 2.0
    ) -> None:
        """properties.cpu_arch = arch.cpu, written only while nobody holds the node's lock (one
        UPDATE conditioned on no reservation and the lock generation read), retried while the
        conductor holds it (it powers the machine on around this DHCP exchange); bounded."""
        assert arch.cpu is not None
        for _ in range(tries):
            try:
                if await self._write_cpu_arch(known.node_uuid, arch):
                    self._wake.set()
                    return
            except Exception:
                log.exception("recording cpu_arch of node %s failed", known.node_uuid)
                return
            await asyncio.sleep(every)

    async def _write_cpu_arch(self, node_uuid: str, arch: Arch) -> bool:
        """True when done (written, or no longer needed); False: the node is locked, try again."""
        async with self.db.write() as s:
            row = (
                await s.execute(
                    select(Node.id, Node.properties, Node.reservation, Node.lock_generation).where(
                        Node.uuid == node_uuid
                    )
                )
            ).one_or_none()
            if row is None:
                return True
            node_id, props, reservation, generation = row
            props = dict(props or {})
            if props.get("cpu_arch"):
                return True
            if reservation is not None:
                return False
            props["cpu_arch"] = arch.cpu
            done = await s.execute(
                update(Node)
                .where(Node.id == node_id, Node.reservation.is_(None), Node.lock_generation == generation)
                .values(properties=props, updated_at=utcnow())
            )
            if getattr(done, "rowcount", 0) != 1:
                await s.rollback()
                return False
            text = (
                f"properties.cpu_arch set to {arch.cpu}: the firmware announced DHCP architecture "
                f"0x{arch.code:02x} ({arch.name})"
            )
            await s.execute(
                insert(NODE_EVENTS),
                [
                    {
                        "uuid": str(uuidlib.uuid4()),
                        "node_id": node_id,
                        "created_at": utcnow(),
                        "severity": "info",
                        # Not "dhcp": it is a fact about the node, not a step of its boot chain.
                        "event_type": "inspect",
                        "event": text,
                        "conductor": self.host,
                    }
                ],
            )
            await s.commit()
        return True

    # --- servers.http_boot.BootScripts ----------------------------------------------------------

    def plan_for(self, query: Mapping[str, str], script_url: str, client_ip: str = "") -> scripts.BootPlan:
        """What the machine asking with `query` (mac, platform, attempt) from `client_ip` boots now."""
        mac = (query.get("mac") or "").lower()
        attempt = int(query["attempt"]) if query.get("attempt", "").isdigit() else 1
        attempt = min(max(attempt, 1), 1_000_000)
        known = self.by_mac.get(mac)

        def refuse(why: str) -> scripts.RefuseBoot:
            # Anyone on the provisioning network can ask with any MAC: the script reads the same for
            # every refusal, and the reason goes to the node's timeline.
            if known is not None:
                self._tell_refusal(known.node_uuid, why)
            return scripts.RefuseBoot(REFUSED, scripts.with_attempt(script_url, attempt), attempt=attempt)

        if known is None:
            return self._discovery_plan(mac, client_ip) or refuse("unknown MAC")
        name = known.node_name or known.node_uuid
        volume = self.boot_volumes.get(known.node_uuid)
        if volume is not None and known.provision_state in volumes.SAN_BOOT_STATES:
            try:
                san = volumes.san_plan(volume)
            except (InvalidInput, scripts.ScriptError) as e:
                return refuse(
                    f"node {name} boots from volume {volume.volume_id}, which cannot be booted: {e}"
                )
            # Like a ramdisk script's boot token: a CHAP secret goes only to the address leased to the MAC.
            if san.password is not None and self.bind_to_leases and client_ip not in self.leased_to(mac):
                return refuse(
                    f"node {name}'s iSCSI boot script (it carries the CHAP secret) was asked for from an "
                    f"address that bootforge's DHCP did not lease to {mac}"
                )
            return san
        if known.provision_state in RAMDISK_STATES:
            if not known.network_boot:
                return refuse(
                    f"node {name} boots the bootforge ramdisk from virtual media, not from the network: "
                    "check the BMC's virtual media and the boot order"
                )
            if self.ramdisk is None or self.endpoints is None:
                return refuse(f"node {name} needs the bootforge ramdisk but none is configured")
            cpu = self.cpu_of(known)
            if (
                cpu is not None
                and cpu_arch(cpu) is None
                and not (known.deploy_kernel and known.deploy_ramdisk)
            ):
                return refuse(
                    f"node {name}'s CPU architecture {cpu} has no bootforge ramdisk: set its "
                    "driver_info deploy_kernel and deploy_ramdisk"
                )
            # The architecture its firmware announced, when its properties do not say it yet.
            known = dataclasses.replace(known, cpu_arch=cpu)
            if self.ramdisk.key_path is not None and not known.agent_boot:
                # Saved before the machine is powered on; the view may not have read it yet.
                return refuse(f"node {name}'s ramdisk boot is not prepared yet (no boot id)")
            # Bound to DHCPv4 leases only: over IPv6 a machine also holds SLAAC addresses that no
            # DHCP server leased, so there, as in proxy mode, the boot token alone protects.
            if self.bind_to_leases and not _is_ipv6(client_ip):
                leased = self.leased_to(mac)
                if client_ip not in leased:
                    # Not the client's address in the text: the reason stays one timeline event
                    # however many addresses a stranger asks from.
                    return refuse(
                        f"node {name}'s ramdisk script was asked for from an address that bootforge's "
                        f"DHCP did not lease to {mac} (leased: {', '.join(sorted(leased)) or 'none'})"
                    )
            if _is_ipv6(client_ip) and self.endpoints6 is not None:
                # Booted over IPv6: kernel, initrd and the agent's API on IPv6 too (the machine
                # may have no IPv4 at all).
                ramdisk = dataclasses.replace(
                    self.ramdisk, api_url=self.ramdisk.api_url6 or self.ramdisk.api_url
                )
                return self._ramdisk_plan(known, ramdisk, self.endpoints6)
            return self._ramdisk_plan(known, self.ramdisk, self.endpoints)
        if known.provision_state == states.ACTIVE:
            return scripts.LocalDiskBoot(_firmware(query, known))
        return refuse(f"node {name} is {known.provision_state}: nothing to boot until it is deployed")

    @staticmethod
    def _ramdisk_plan(
        known: KnownPort, r: RamdiskSource, e: BootEndpoints | BootEndpoints6
    ) -> scripts.RamdiskBoot:
        def url(ref: str) -> str:
            if "://" in ref:
                return ref  # someone else's server: its URL as the operator wrote it
            # The MAC in the query ties the fetch to the node on its timeline whatever address it
            # comes from (proxy mode: bootforge's DHCP did not give it).
            return f"{e.http_base.rstrip('/')}/{ref.lstrip('/')}?mac={known.mac}"

        token = None
        if r.key_path is not None and known.agent_boot:
            token = boot_token.for_boot(r.key_path, known.node_uuid, known.agent_boot)
        # The ramdisk built for the node's CPU ("bootforge/arm64/vmlinuz" for aarch64), and that
        # CPU's serial console after the operator's (the last console= one that exists wins).
        cpu = known.cpu_arch
        arch = cpu_arch(cpu) if cpu else None
        extra = r.kernel_args
        if arch is not None and arch.serial_console:
            extra = (*extra, f"console={arch.serial_console}")
        return scripts.RamdiskBoot(
            kernel_url=url(known.deploy_kernel or ramdisk_file(r.kernel, cpu)),
            initrd_url=url(known.deploy_ramdisk or ramdisk_file(r.ramdisk, cpu)),
            kernel_args=scripts.ramdisk_kernel_args(
                r.api_url, known.node_uuid, known.mac, extra, boot_token=token
            ),
            purpose=RAMDISK_PURPOSE.get(known.provision_state, "deploy"),
        )

    # --- discovery -------------------------------------------------------------------------------

    def _discovers(self, address: str) -> bool:
        return self.discovery is not None and self.discovery.allows(address)

    def _discovery_plan(self, mac: str, client_ip: str) -> scripts.RamdiskBoot | None:
        """The discovery ramdisk for an unknown MAC asking from a discovery subnet (with bootforge's
        DHCP in full mode: from the address it leased to that MAC), else None (refused like any
        unknown MAC). Its token is bound to the MAC (conductor/discovery_boot.py)."""
        offer, r, e = self.discovery, self.ramdisk, self.endpoints
        if offer is None or r is None or e is None or not offer.allows(client_ip) or _is_ipv6(client_ip):
            return None
        if not MAC_RE.match(mac):
            return None
        # No DHCP event tells the view about an unknown MAC's lease: the server's own table is asked.
        live = self.lease_of(mac) if self.lease_of is not None else None
        if self.bind_to_leases and client_ip not in self.leased_to(mac) and client_ip != live:
            return None

        def url(ref: str) -> str:
            return ref if "://" in ref else f"{e.http_base.rstrip('/')}/{ref.lstrip('/')}?mac={mac}"

        return scripts.RamdiskBoot(
            kernel_url=url(r.kernel),
            initrd_url=url(r.ramdisk),
            kernel_args=offer.kernel_args(r.api_url, mac, r.kernel_args),
            purpose="discovery",
        )

    def _tell_refusal(self, node_uuid: str, why: str) -> None:
        """The reason a node was refused a boot, to its timeline; once per reason per REFUSAL_EVENT_EVERY
        (iPXE asks again every few seconds, and anyone may ask with the node's MAC)."""
        if self.on_refusal is None:
            return
        now = time.monotonic()
        key = (node_uuid, why)
        if now - self._refusals_told.get(key, -REFUSAL_EVENT_EVERY) < REFUSAL_EVENT_EVERY:
            return
        if len(self._refusals_told) > 10_000:
            self._refusals_told.clear()
        self._refusals_told[key] = now
        self.on_refusal(node_uuid, f"boot script refused: {why}")

    def _endpoints_for(self, client_ip: str) -> BootEndpoints | BootEndpoints6 | None:
        return self.endpoints6 if _is_ipv6(client_ip) and self.endpoints6 is not None else self.endpoints

    def ipxe_script(self, query: Mapping[str, str], client_ip: str) -> str:
        e = self._endpoints_for(client_ip)
        url = e.ipxe_script_url.format(mac=query.get("mac", "")) if e else ""
        return scripts.render_ipxe(self._safe_plan(query, url, client_ip))

    def grub_config(self, query: Mapping[str, str], client_ip: str, tftp: bool = False) -> str:
        """The per-node grub.cfg. tftp: for the TFTP virtual file that Debian's signed GRUB reads
        (it has no http module), so the kernel and initrd on bootforge's HTTP root are named by
        their TFTP path on the same root instead."""
        base = self.endpoints.ipxe_script_url.split("/boot/", 1)[0] if self.endpoints else ""
        url = f"{base}/boot/grub.cfg?mac={query.get('mac', '')}"
        plan = self._safe_plan(query, url, client_ip)
        if isinstance(plan, scripts.SanBoot):
            # GRUB has no iSCSI initiator: a node on the shim -> GRUB chain cannot boot its volume.
            known = self.by_mac.get((query.get("mac") or "").lower())
            if known is not None:
                self._tell_refusal(known.node_uuid, "its boot volume needs iPXE's sanboot; GRUB has no iSCSI")
            plan = scripts.RefuseBoot(REFUSED, scripts.with_attempt(url, 1))
        if tftp and isinstance(plan, scripts.RamdiskBoot) and self.endpoints is not None:
            plan = dataclasses.replace(
                plan,
                kernel_url=_as_tftp(plan.kernel_url, self.endpoints),
                initrd_url=_as_tftp(plan.initrd_url, self.endpoints),
            )
        return scripts.render_grub(plan)

    def _safe_plan(self, query: Mapping[str, str], script_url: str, client_ip: str) -> scripts.BootPlan:
        try:
            return self.plan_for(query, script_url, client_ip)
        except scripts.ScriptError as e:
            # A node whose settings cannot go into a script must not break the boot server.
            log.error("cannot render a boot script for %s: %s", printable(query.get("mac", "")), e)
            known = self.by_mac.get((query.get("mac") or "").lower())
            if known is not None:
                self._tell_refusal(known.node_uuid, f"the node's boot settings are invalid: {e}")
            return scripts.RefuseBoot(REFUSED, scripts.with_attempt(script_url, 1))


# The signed loaders a Secure Boot node of an architecture needs, by arch-table name (HTTP rows
# share their firmware's chain); an architecture without a row here has no known chain.
SECURE_BOOT_CHAIN: dict[str, tuple[str, ...]] = {
    a.name: a.signed_chain for a in ARCHES.values() if a.signed_chain
}
SECURE_BOOT_LOADER_MISSING = "secure_boot_loader_missing"
SECURE_BOOT_NO_HTTP_BOOT = "secure_boot_http_boot"


def _http_client(client: ClientInfo) -> bool:
    return client.http_boot or (client.arch is not None and client.arch.http)


def _no_secure_http_boot(client: ClientInfo) -> dhcp.NoBootFile:
    """Why a Secure Boot node's UEFI HTTP boot gets no URL (so its firmware moves on to the next boot
    option, PXE, at once). Found by reading the binaries, Debian 12: shim (16.1) would run and fetch
    grubx64.efi over HTTP itself (its httpboot.c), but the signed grubnetx64.efi (2.06-13+deb12u2)
    has no HTTP client built in (no http module), and, booted from an HTTP URI, takes its root from
    that URI as (http,<server>), so it cannot read even its first grub.cfg; Secure Boot forbids
    loading an http.mod. Offering unsigned iPXE instead only earns "Access Denied"."""
    name = client.arch.name if client.arch is not None else "UEFI HTTP"
    return dhcp.NoBootFile(
        SECURE_BOOT_NO_HTTP_BOOT,
        f"no HTTP boot URL offered to this Secure Boot node ({name}): Debian's signed GRUB has no HTTP "
        "client, so the signed chain (shim -> GRUB) boots over PXE/TFTP only; put PXE (IPv4) in the "
        "machine's boot order",
    )


def _wants_secure_boot(properties: Any) -> bool:
    """capabilities "secure_boot:true" (Ironic's string form) or {"secure_boot": "true"}."""
    caps = properties.get("capabilities") if isinstance(properties, dict) else None
    if isinstance(caps, str):
        caps = dict(p.split(":", 1) for p in caps.split(",") if ":" in p)
    return isinstance(caps, dict) and str(caps.get("secure_boot", "")).strip().lower() == "true"


def _as_tftp(url: str, e: BootEndpoints) -> str:
    """An artifact URL on bootforge's HTTP root -> the same file on its TFTP server (both serve
    netboot.root at the top level); another server's URL is left as the operator wrote it."""
    prefix = e.http_base.rstrip("/") + "/"
    if not url.startswith(prefix):
        return url
    path = url[len(prefix) :].split("?", 1)[0]  # the ?mac= tag: TFTP fetches are tied by address
    return f"tftp://{e.tftp_server}/{path}"


def _is_ipv6(client_ip: str) -> bool:
    """A client address seen over IPv6 (not an IPv4-mapped one, which is an IPv4 client)."""
    return ":" in client_ip and not client_ip.lower().startswith("::ffff:")


def _cpu_arch(properties: Any) -> str | None:
    value = properties.get("cpu_arch") if isinstance(properties, dict) else None
    return str(value) if value else None


def _agent_boot(internal: Any) -> str | None:
    boot = internal.get("agent_boot") if isinstance(internal, dict) else None
    return str(boot) if boot else None


def _firmware(query: Mapping[str, str], known: KnownPort) -> Firmware:
    """iPXE's ${platform} says what it runs on (pcbios, efi); the node's boot_mode is the fallback."""
    platform = query.get("platform", "")
    if platform == "pcbios":
        return Firmware.BIOS
    if platform == "efi":
        return Firmware.UEFI
    return Firmware.BIOS if known.boot_mode == "bios" else Firmware.UEFI


def _lease_connection(path: str, *, wait: bool) -> sqlite3.Connection:
    """A lease connection: the database's pragmas (db/engine.py), minus the checkpoint at commit
    (DbLeaseStore checkpoints aside); transactions are begun explicitly (IMMEDIATE). Without `wait`
    a locked database fails at once instead of waiting (the event loop's connection)."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    _sqlite_pragmas(conn, None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    if not wait:
        conn.execute("PRAGMA busy_timeout=0")
    return conn


_LEASE_COLUMNS = ("ip", "mac", "state", "expires", "node_uuid", "updated_at")


def _sqlite_upsert(rows: int) -> str:
    """One multi-row upsert statement for `rows` leases, as sqlite3 runs it.

    Why one statement: sqlite3 releases the GIL around each step, and a thread taking it back waits
    for the event loop's thread to hand it over (up to sys.getswitchinterval(), 5 ms). An
    executemany on the lease thread stepped once per row, so a batch of 50 leases could wait 50
    times while the loop was busy answering: the held ACKs were late and perfdhcp counted them as
    drops. SQLAlchemy's executemany besides held the GIL for its bind processors and a dict per row.
    """
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _LEASE_COLUMNS[1:])
    return (
        f"INSERT INTO {Lease.__tablename__} ({', '.join(_LEASE_COLUMNS)}) VALUES {values} "
        f"ON CONFLICT (ip) DO UPDATE SET {updates}"
    )


class DbLeaseStore:
    """dhcp.LeaseStore on bootforge's database: one upsert transaction per grouped commit.

    The DHCP server (servers/dhcp.py) holds every ACK of a batch until `commit` returns, so a lease
    that was ACKed is committed in the database (SQLite: WAL, synchronous=NORMAL: it survives a crash
    of the process, not necessarily of the host's power; PostgreSQL: as its synchronous_commit says).
    On PostgreSQL the upsert runs on a Core connection with one executemany: the ORM's bulk-insert
    path (a session) cost ~40 us of event-loop CPU per lease, a third of a whole DORA.

    On SQLite a batch is one IMMEDIATE transaction of one multi-row upsert on a sqlite3 connection
    of the store's own (same pragmas as the database's writer). Its connections never checkpoint as
    they commit: the database's writer used to, and every ~25th lease commit then ended in a WAL
    checkpoint whose fsync held the event loop 20-40 ms (hundreds under disk load) while DHCP
    requests piled up and were dropped. Every `CHECKPOINT_EVERY` commits a thread runs a PASSIVE
    checkpoint instead, which writers do not wait for, so the WAL stays short and the database
    writer's own autocheckpoint rarely fires. Without the checkpoint, a WAL commit at
    synchronous=NORMAL is a few writes and no fsync, so the batch commits on the event loop: a
    hand-off to a thread per batch (a future, a wake-up, the GIL back and forth) cost more of the
    loop than the commit itself, and under CPU contention the GIL hand-overs held the ACKs back.
    When the database is locked (another writer, of this process between its awaits or of another
    process) the loop does not wait: that batch commits on a thread that does.
    """

    CHECKPOINT_EVERY = 32

    def __init__(self, db: Database) -> None:
        self.db = db
        ins: Any = pg_insert(Lease) if db.write_engine.dialect.name == "postgresql" else sqlite_insert(Lease)
        self._upsert = ins.on_conflict_do_update(
            index_elements=[Lease.ip],
            set_={c: ins.excluded[c] for c in _LEASE_COLUMNS[1:]},
        )
        self._sqlite: sqlite3.Connection | None = None  # the thread's, waits for a locked database
        self._inline: sqlite3.Connection | None = None  # the event loop's, never waits
        self._rows_per_statement = 1
        self.waited = 0  # batches the database was locked for, committed on the thread
        self._thread: ThreadPoolExecutor | None = None
        path = db.write_engine.url.database
        if is_sqlite(db.url) and path and path != ":memory:":
            self._sqlite = _lease_connection(path, wait=True)
            self._inline = _lease_connection(path, wait=False)
            # A batch of more rows than one statement may bind goes in several, in one transaction.
            bound = self._sqlite.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._rows_per_statement = max(bound // len(_LEASE_COLUMNS), 1)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="dhcp-leases")
            self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="dhcp-checkpoint")
            # updated_at as the database's own writer stores it (SQLAlchemy's SQLite DATETIME text).
            dialect = db.write_engine.dialect
            self._timestamp = Lease.__table__.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
        self._path = path or ""
        self._since_checkpoint = 0
        self._checkpointing = False

    def close(self) -> None:
        """Release the SQLite thread and its connection (nothing to do on PostgreSQL)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._checkpointer.shutdown(wait=True)
        for conn in (self._sqlite, self._inline):
            if conn is not None:
                conn.close()

    async def load(self) -> Sequence[LeaseRecord]:
        async with self.db.read_conn() as conn:
            rows = (
                await conn.execute(select(Lease.ip, Lease.mac, Lease.state, Lease.expires, Lease.node_uuid))
            ).all()
        return [
            LeaseRecord(IPv4Address(ip), mac, LeaseState(state), expires, node)
            for ip, mac, state, expires, node in rows
        ]

    async def commit(self, records: Sequence[LeaseRecord]) -> None:
        if not records:
            return
        if self._sqlite is not None and self._inline is not None and self._thread is not None:
            loop = asyncio.get_running_loop()
            try:
                self._commit_sqlite(self._inline, records)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                self.waited += 1
                await loop.run_in_executor(self._thread, self._commit_sqlite, self._sqlite, records)
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.CHECKPOINT_EVERY and not self._checkpointing:
                self._since_checkpoint, self._checkpointing = 0, True
                done = loop.run_in_executor(self._checkpointer, self._checkpoint)
                done.add_done_callback(self._checkpointed)
            return
        latest = {r.ip: r for r in records}  # one row per address, the newest wins
        now = utcnow()
        values = [
            {
                "ip": str(r.ip),
                "mac": r.mac,
                "state": r.state.value,
                "expires": r.expires,
                "node_uuid": r.node_id,
                "updated_at": now,
            }
            for r in latest.values()
        ]
        async with self.db.write_conn() as conn:
            await conn.execute(self._upsert, values)

    def _checkpoint(self) -> None:
        # A connection of its own per run: short-lived, never shared with the committing thread.
        with contextlib.closing(sqlite3.connect(self._path, timeout=30)) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpointing = False
        if not done.cancelled() and done.exception() is not None:
            log.warning("DHCP lease database checkpoint failed: %s", done.exception())

    def _commit_sqlite(self, conn: sqlite3.Connection, records: Sequence[LeaseRecord]) -> None:
        """One IMMEDIATE transaction of as few upserts as SQLite's bound on parameters allows, one row
        per address (the newest record wins); all or nothing."""
        stamp = self._timestamp(utcnow()) if self._timestamp is not None else None
        latest = {r.ip: r for r in records}
        params: list[Any] = []
        for r in latest.values():
            params += (str(r.ip), r.mac, r.state.value, r.expires, r.node_id, stamp)
        width = len(_LEASE_COLUMNS)
        step = self._rows_per_statement * width
        conn.execute("BEGIN IMMEDIATE")
        try:
            for at in range(0, len(params), step):
                chunk = params[at : at + step]
                conn.execute(_sqlite_upsert(len(chunk) // width), chunk)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


# The event types the netboot services write through the EventSink (cli.netboot): what anyone on the
# provisioning network can cause for a node, trimmed apart from the rest of its history.
NETBOOT_EVENT_TYPES = ("dhcp", "tftp", "http")


@dataclass(slots=True)
class _Window:
    """One node's events of one source in the current rate-limit window."""

    started: float
    written: int = 0
    suppressed: int = 0
    first: dt.datetime | None = None  # emit times of the first and last suppressed event
    last: dt.datetime | None = None
    boot_at: dt.datetime | None = None  # the first suppressed sign of a network boot


class EventSink:
    """Buffers netboot events per node UUID and writes them in one transaction every `every` seconds.

    Each event keeps the time it was emitted, not the time its batch was written: the hand-off watch
    and the timeline compare it with the moment a power action was sent.

    Anyone on the provisioning network can make netboot events for a node (an HTTP fetch with its
    MAC in the query, a DHCP packet with its MAC), so they are rate-limited: at most `burst` per
    node and source (event type: dhcp, tftp, http) in each `window` seconds are written. The rest
    are counted (`suppressed`) and summed up in one warning per node, source and window, written
    once the window ended, marked network_boot and dated at the first one if any of them was a
    network boot (else at the first event): the hand-off watch still sees a machine that
    network-booted during a flood.
    """

    def __init__(
        self,
        db: Database,
        host: str,
        every: float = 0.5,
        limit: int = 10000,
        *,
        burst: int = 20,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.host = host
        self.every = every
        self.limit = limit
        self.burst = burst
        self.window = window
        self.pending: list[tuple[str, str, str, str, dt.datetime, bool]] = []
        self.dropped = 0
        self.suppressed = 0  # events over the rate limit, summed up instead of written
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def emit(
        self,
        node_uuid: str,
        event_type: str,
        message: str,
        severity: str = "info",
        *,
        network_boot: bool = False,
    ) -> None:
        """Queue an event; `network_boot` marks a sign that the machine is booting from the network."""
        now, when = self._clock(), utcnow()
        key = (node_uuid, event_type)
        window = self._windows.get(key)
        if window is None or now - window.started >= self.window:
            if window is not None:
                self._summarize(key, window)
            window = self._windows[key] = _Window(now)
        if window.written >= self.burst:
            self.suppressed += 1
            window.suppressed += 1
            window.first = window.first or when
            window.last = when
            if network_boot and window.boot_at is None:
                window.boot_at = when
            return
        window.written += 1
        # The callers escape what clients sent; this is the backstop for every netboot event.
        message = printable(message, MESSAGE_LIMIT)
        self._queue(node_uuid, event_type, message, severity, when, network_boot)

    def _queue(
        self, node_uuid: str, event_type: str, message: str, severity: str, when: dt.datetime, boot: bool
    ) -> None:
        if len(self.pending) >= self.limit:
            self.dropped += 1  # a storm beyond what the timeline can take: counted, not queued forever
            return
        self.pending.append((node_uuid, event_type, message, severity, when, boot))

    def _summarize(self, key: tuple[str, str], window: _Window) -> None:
        if not window.suppressed or window.first is None or window.last is None:
            return
        node_uuid, event_type = key
        text = (
            f"{window.suppressed} more {event_type} events of this node were not recorded between "
            f"{window.first:%H:%M:%S} and {window.last:%H:%M:%S} UTC (rate limit: {self.burst} per "
            f"{self.window:g} s per node and source)"
        )
        # Dated at the first network boot it stands for, if any: the hand-off watch compares that
        # time with the moment the machine was powered onto its disk.
        when = window.boot_at or window.first
        self._queue(node_uuid, event_type, text, "warning", when, window.boot_at is not None)

    def _close_windows(self) -> None:
        """Sum up the windows that ended and forget them, so the map holds only busy keys."""
        now = self._clock()
        ended = [key for key, w in self._windows.items() if now - w.started >= self.window]
        for key in ended:
            self._summarize(key, self._windows.pop(key))

    async def flush(self) -> None:
        self._close_windows()
        batch, self.pending = self.pending, []
        if not batch:
            return
        uuids = {b[0] for b in batch}
        async with self.db.read_conn() as conn:
            ids = dict((await conn.execute(select(Node.uuid, Node.id).where(Node.uuid.in_(uuids)))).all())
        rows = [
            {
                "uuid": str(uuidlib.uuid4()),
                "node_id": ids[u],
                "created_at": when,
                "severity": sev,
                "event_type": kind,
                "event": msg,
                "conductor": self.host,
                "network_boot": boot,
            }
            for u, kind, msg, sev, when, boot in batch
            if u in ids
        ]
        if rows:
            async with self.db.write() as s:
                await s.execute(insert(NODE_EVENTS), rows)
                await s.commit()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.flush()
            except Exception:
                log.exception("writing netboot events failed")
