"""The virtual rack: a namespace with a bridge, bootforge serving on it, and QEMU VMs enrolled as nodes.

Layout of a lab (all of it inside its own network namespace, ``bflab-<pid>-<n>-net``):

* bridge ``br0`` with 10.77.0.1/24; a tap ``tap<i>`` per VM on it;
* ``bootforge serve`` (started with ``ip netns exec``), its API on 10.77.0.1:6385 where the VMs'
  ramdisks reach it, DHCP (full, or proxy next to dnsmasq), TFTP and HTTP boot on ``br0``;
* VMs are *owned* qemu nodes (driver_info ``qemu_command`` = their definition file), so bootforge
  itself starts them on power on and ends them on power off; or, with ``bmc="ipmi"`` / ``"redfish"``,
  each VM sits behind an emulated BMC bootforge did not write the protocol side of (pyghmi's IPMI
  server, one process per VM: bootforge.lab.ipmi_bmc; sushy-tools' Redfish emulator, one process for
  all VMs: bootforge.lab.redfish_bmc), listening on the bridge address inside the namespace, and the
  nodes are enrolled with the ``ipmi`` or ``redfish`` driver: bootforge never touches them over QMP;
* with ``dhcp="proxy"``, dnsmasq hands out addresses from a second namespace (``...-dhcp``) joined
  to the bridge by a veth: a separate DHCP server, as on a real network, configured as a site would be
  beside bootforge (no boot file, bootforge named as next-server: see dnsmasq_config);
* with ``dhcp="off"`` nothing answers DHCP on the bridge at all: each VM gets an empty CD drive and is
  enrolled with a virtual-media boot interface and a static ``network_data`` (VM i at
  10.77.0.<10+i>), so its ramdisk boots from an ISO and configures its address itself.

How the host reaches the API: the API listens on the bridge address inside the namespace, so it
is not on loopback and must use HTTP basic auth (bootforge refuses ``noauth`` off loopback); the
lab writes an htpasswd with a random password. A forwarder process (bootforge.lab.forward) listens
on the host's 127.0.0.1 and opens its upstream sockets inside the namespace. No host interface is
created or touched.

Everything made is written to ``<dir>/lab.json`` *before* it is made (namespace names) or right
after (PIDs), so :meth:`Lab.down` works from a fresh process and after a crash: it ends the recorded
PIDs (checking each is still the process it started), every process left inside the lab's
namespaces, deletes the namespaces (the bridge and taps go with them) and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx

from bootforge.drivers import qemu
from bootforge.drivers import qemu_machine as vm
from bootforge.lab import netns, procs, ramdisk, redfish_bmc
from bootforge.netboot.boot import loaders
from bootforge.ramdisk import RamdiskError as AgentRamdiskError
from bootforge.ramdisk import build as build_agent_ramdisk

__all__ = ["BMCS", "FIRMWARES", "Lab", "LabError", "LabState", "VmRecord"]

FIRMWARES = ("bios", "uefi", "uefi-http", "uefi-sb", "arm64", "arm64-sb")
ARM64_FIRMWARES = ("arm64", "arm64-sb")  # arm64-sb: AAVMF with Microsoft's keys, Secure Boot enforced
# "mixed": one of each in turn, but not uefi-sb or arm64 (TCG only: minutes per boot).
MIXED = FIRMWARES[:3]
# arm64: qemu-system-aarch64 -M virt under TCG with AAVMF; the deploy ramdisk built from Debian's
# arm64 packages (bootforge ramdisk build --arch arm64), reached through shim -> GRUB (signed, arm64).
ARM64_CPU = "cortex-a72"  # under TCG markedly faster than "max" (no pointer authentication to emulate)
# full: bootforge's DHCP leases; proxy: dnsmasq leases, bootforge answers boots; off: no DHCP at all.
DHCP_MODES = ("full", "proxy", "off")
# With dhcp "off": the virtual-media boot interface per BMC (IPMI has no virtual media).
VMEDIA_BOOT = {"qemu": "virtual-media", "redfish": "redfish-virtual-media"}
STATIC_BASE = 10  # with dhcp "off", VM i (from 1) has the static address 10.77.0.<STATIC_BASE + i>
# What powers and boots the VMs: bootforge's qemu driver over QMP, or an emulated BMC per VM.
BMCS = ("qemu", "ipmi", "redfish")
BMC_USER = "admin"
REDFISH_PORT = 8443
IPMI_FIRST_PORT = 6230  # VM i's BMC listens on IPMI_FIRST_PORT + i
# agent: bootforge's deploy ramdisk (inspect, clean, deploy for real); probe: a busybox ramdisk that
# only proves the boot chain reaches the API (quick to build; the network boot tests use it).
RAMDISKS = ("agent", "probe")
STATE_FILE = "lab.json"
PREFIX_BASE = "bflab"  # not "bft": test sessions sweep their own leftovers by that base
SUBNET = "10.77.0.0/24"
ADDRESS = "10.77.0.1"
DNSMASQ_ADDRESS = "10.77.0.2"
# `lab up --ipv6`: an IPv6-only provisioning network on the bridge (ULA prefix), bootforge's DHCPv6
# leasing from POOL6, router advertisements with the Managed flag; no DHCPv4 answers.
PREFIX6 = "fd77::/64"
ADDRESS6 = "fd77::1"
POOL6 = "fd77::1000-fd77::1fff"
# `lab up --ipv6 --dhcp proxy`: Kea (kea-dhcp6) leases from KEA_POOL6 in the "dhcp" namespace at
# KEA_ADDRESS6; bootforge answers only netboot clients' boot options.
KEA_ADDRESS6 = "fd77::2"
KEA_POOL6 = "fd77::2000-fd77::2fff"
API_PORT = 6385
USER = "lab"
MAC_PREFIX = "52:54:00:77:00:"
READY_TIMEOUT = 60.0
API_VERSION = "1.78"


class LabError(RuntimeError):
    """The lab could not be built or used; the message says what to do."""


@dataclass
class VmRecord:
    name: str
    firmware: str
    mac: str
    tap: str
    dir: str
    node: str | None = None
    bmc: str | None = None  # e.g. "redfish https://10.77.0.1:8443/redfish/v1/Systems/<uuid>"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def definition(self) -> Path:
        return self.path / "vm.json"

    @property
    def console(self) -> Path:
        return self.path / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def pid_file(self) -> Path:
        return self.path / "qmp.sock.pid"

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"


@dataclass
class LabState:
    dir: str
    prefix: str
    dhcp: str = "full"
    namespaces: list[str] = field(default_factory=list)
    host_port: int = 0
    password: str = ""
    bmc: str = "qemu"
    bmc_password: str = ""
    ipv6: bool = False
    discovery: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    vms: list[VmRecord] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.prefix + "net"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def api_in_lab(self) -> str:
        return f"http://[{ADDRESS6}]:{API_PORT}" if self.ipv6 else f"http://{ADDRESS}:{API_PORT}"

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)  # a crash mid-write leaves the previous state, never half of one

    @classmethod
    def load(cls, directory: Path) -> LabState:
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {directory} (no {STATE_FILE})") from None
        raw["vms"] = [VmRecord(**v) for v in raw.get("vms", [])]
        return cls(**raw)


def firmware_plan(count: int, firmware: str) -> list[str]:
    if firmware == "mixed":
        return [MIXED[i % len(MIXED)] for i in range(count)]
    if "," in firmware:  # one firmware per VM, in order (bench/firmware_matrix.py: one lab, every case)
        plan = [f.strip() for f in firmware.split(",")]
        unknown = [f for f in plan if f not in FIRMWARES]
        if unknown:
            raise LabError(f"unknown firmware {unknown[0]!r} in {firmware!r}: use {', '.join(FIRMWARES)}")
        if len(plan) != count:
            raise LabError(f"--firmware names {len(plan)} firmwares for {count} VMs: name one per VM")
        return plan
    if firmware not in FIRMWARES:
        raise LabError(
            f"unknown firmware {firmware!r}: use bios, uefi, uefi-http, uefi-sb, arm64, arm64-sb or mixed"
        )
    return [firmware] * count


def vm_definition(rec: VmRecord, memory_mib: int, netns_name: str, ipv6: bool = False) -> dict[str, Any]:
    """The VM definition file's content for one lab VM (see bootforge.drivers.qemu_machine.VmDefinition)."""
    nic: dict[str, Any] = {"mac": rec.mac, "tap": rec.tap}
    extra: list[str] = []
    if ipv6 and rec.firmware == "uefi":
        # IPv6 lab: no DHCPv4 answers, so OVMF's PXEv4 would only wait out its retries first.
        extra += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"]
    if rec.firmware != "bios":
        nic["romfile"] = ""  # no iPXE ROM: OVMF's own PXE or HTTP boot (lab pitfall 11)
    if rec.firmware == "uefi-http":
        # HTTP boot is tried after PXE unless PXE is off (pitfall 13); the UEFI stack wants an RNG.
        extra += [
            "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
            "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no",
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
    secure: dict[str, Any] = {}
    if rec.firmware == "uefi-sb":
        # Secure Boot enforced with Microsoft's keys; its SMM needs TCG (this KVM has no SMM).
        secure = {"secure_boot": True, "machine": "q35,smm=on", "accel": "tcg"}
    if rec.firmware in ARM64_FIRMWARES:
        # AAVMF's own PXE (no option ROM on virt); the RNG seeds the kernel's pool at once (Python
        # waits for it) and edk2's network stack wants one.
        secure = {
            "arch": "aarch64",
            "qemu_binary": vm.AARCH64_BINARY,
            "machine": "virt",
            "cpu_model": ARM64_CPU,
            "accel": "tcg",
            "secure_boot": rec.firmware == "arm64-sb",
        }
        extra += ["-device", "virtio-rng-pci"]
    return secure | {
        "name": rec.name,
        "memory_mib": memory_mib,
        "boot_mode": "bios" if rec.firmware == "bios" else "uefi",  # arm64: AAVMF, UEFI
        "disks": [{"path": "disk.qcow2", "format": "qcow2"}],
        "nics": [nic],
        "serial_log": "console.log",
        "netns": netns_name,
        "extra_args": extra,
    }


def static_network_data(rec: VmRecord) -> dict[str, Any]:
    """The VM's static address as Ironic's network_data (OpenStack network_data.json)."""
    address = f"10.77.0.{STATIC_BASE + int(rec.name.removeprefix('vm'))}"
    return {
        "links": [{"id": "nic0", "type": "phy", "ethernet_mac_address": rec.mac}],
        "networks": [
            {
                "id": "lab",
                "type": "ipv4",
                "link": "nic0",
                "ip_address": address,
                "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": ADDRESS}],
            }
        ],
        "services": [{"type": "dns", "address": ADDRESS}],
    }


# The lab's `diagnosis_quiet` (see serve_config).
DIAGNOSIS_QUIET = 45.0


def serve_config(state: LabState, boot_root: Path) -> str:
    d = Path(state.dir)
    dhcp = state.dhcp if state.dhcp in ("full", "off") else "proxy"
    listen = f"[{ADDRESS6}]:{API_PORT}" if state.ipv6 else f"{ADDRESS}:{API_PORT}"
    if state.ipv6:
        dhcp = "off"  # IPv6 only: DHCPv6 below, nothing answers DHCPv4
    lines = [
        f'state_dir = "{d / "serve"}"',
        f'listen = "{listen}"',
        'auth_strategy = "http_basic"',
        f'htpasswd_file = "{d / "serve" / "htpasswd"}"',
        f'host = "{state.prefix}conductor"',
        f"enabled_hardware_types = {json.dumps(sorted({'qemu', state.bmc}))}",
        "power_sync_interval = 10",
        # A lab VM says something (a fetch, a lookup, a heartbeat) at least every ~20 s even under
        # TCG, so `node why` may call 45 s of silence a stall rather than wait the default 2 minutes.
        f"diagnosis_quiet = {DIAGNOSIS_QUIET:g}",
        "",
        # A lab VM runs inspect -> clean -> deploy in one ramdisk boot, as an operator would want for
        # machines that boot slowly (TCG here); the VM's disk boot is watched for 15 s.
        "[agent]",
        "fast_track = true",
        "handoff_window = 15",
        "",
        # The sample OS images are built in the lab's cache: the only host files this bootforge imports.
        "[images]",
        f"import_dirs = [{json.dumps(str(ramdisk.DEFAULT_CACHE))}]",
        "",
        "[netboot]",
        f'address = "{ADDRESS}"',
        f'dhcp = "{dhcp}"',
        'dhcp_interfaces = ["br0"]',
        "tftp = true",
        "http = true",
        f'root = "{boot_root}"',
        'kernel_args = ["console=ttyS0,115200n8", "quiet"]',
    ]
    if state.ipv6:
        lines += [
            f'address6 = "{ADDRESS6}"',
            f'dhcp6 = "{"proxy" if state.dhcp == "proxy" else "full"}"',
            'dhcp6_interfaces = ["br0"]',
            f'dhcp6_prefix = "{PREFIX6}"',
            f'public_url6 = "http://[{ADDRESS6}]:{API_PORT}"',
        ]
        if state.dhcp != "proxy":
            lines.append(f'dhcp6_pool = "{POOL6}"')
    if dhcp == "full":
        lines += ["", "[[netboot.subnets]]", f'network = "{SUBNET}"', 'pool = "10.77.0.100-10.77.0.199"']
    if state.discovery:
        lines += ["", "[discovery]", "enabled = true", f'subnets = ["{SUBNET}"]', 'driver = "qemu"']
    return "\n".join(lines) + "\n"


def kea6_config(state: LabState) -> str:
    """Kea's DHCPv6 server as a site's: addresses from KEA_POOL6, no boot options for firmware (those
    are bootforge's proxy answers), and the one line a site adds for iPXE, which has no proxy DHCPv6:
    iPXE clients (user class "iPXE") get bootforge's script URL, naming their MAC with iPXE's own
    ${netX/mac} (iPXE expands settings in the boot file name)."""
    d = Path(state.dir)
    script = f"http://[{ADDRESS6}]:8080/boot/ipxe?mac=${{netX/mac}}"
    config = {
        "Dhcp6": {
            "interfaces-config": {
                "interfaces": ["eth0"],
                # The veth's link-local address is tentative for a moment after it comes up.
                "service-sockets-max-retries": 30,
                "service-sockets-retry-wait-time": 500,
            },
            "lease-database": {"type": "memfile", "name": str(d / "kea-leases6.csv"), "lfc-interval": 0},
            # Nothing under the host's /var/lib/kea: the server DUID lives as long as the lab.
            "data-directory": str(d),
            "server-id": {"type": "LLT", "persist": False},
            "preferred-lifetime": 1800,
            "valid-lifetime": 3600,
            "subnet6": [{"id": 1, "subnet": PREFIX6, "interface": "eth0", "pools": [{"pool": KEA_POOL6}]}],
            "client-classes": [
                {
                    "name": "ipxe",
                    # Option 15 as RFC 8415 has it: a 2-byte length, then the class ("iPXE").
                    "test": "substring(option[15].hex,2,4) == 'iPXE'",
                    "option-data": [{"name": "bootfile-url", "data": script}],
                }
            ],
            "loggers": [{"name": "kea-dhcp6", "output_options": [{"output": "stdout"}], "severity": "INFO"}],
        }
    }
    return json.dumps(config, indent=2)


def dnsmasq_config(state: LabState) -> str:
    """The site's DHCP server: addresses, no boot file, so every boot decision is bootforge's
    (proxyDHCP); but bootforge's address as next-server (siaddr), the one line a site adds for signed
    GRUB (Secure Boot, arm64): Debian's GRUB 2.06 reads only the firmware's DHCP ACK (the site's),
    not the proxy offer, and takes its TFTP server for grub.cfg from that ACK's siaddr. Firmware
    still takes its boot file and server from bootforge's proxy offer: with no boot file the site's
    offer carries no boot options for edk2 (a "DHCP only" offer) nor for iPXE (which wants siaddr
    and a file), as the firmware matrix's proxy mode checks."""
    return "\n".join(
        [
            "port=0",
            "interface=eth0",
            "bind-interfaces",
            "except-interface=lo",
            "dhcp-authoritative",
            "no-ping",
            "log-dhcp",
            "dhcp-range=10.77.0.200,10.77.0.250,255.255.255.0,1h",
            # <file>,<server name>,<next-server>: both names empty, only siaddr is set.
            f"dhcp-boot=,,{ADDRESS}",
            f"dhcp-leasefile={Path(state.dir) / 'dnsmasq.leases'}",
            "",
        ]
    )


class Lab:
    """One lab, described by ``<dir>/lab.json``; see the module docstring."""

    def __init__(self, directory: Path, state: LabState | None = None) -> None:
        self.dir = directory.resolve()
        self.state = state or LabState.load(self.dir)
        self._children: list[subprocess.Popen[bytes]] = []

    # --- API access from the host -------------------------------------------------------------

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.state.url,
            auth=httpx.BasicAuth(USER, self.state.password),
            headers={"X-OpenStack-Ironic-API-Version": API_VERSION},
            timeout=timeout,
        )

    def env(self) -> dict[str, str]:
        """What the bootforge CLI (and `baremetal`) need to talk to this lab's API."""
        return {
            "BOOTFORGE_URL": self.state.url,
            "BOOTFORGE_USER": USER,
            "BOOTFORGE_PASSWORD": self.state.password,
        }

    # --- up -----------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        directory: Path,
        vms: int,
        firmware: str = "bios",
        memory_mib: int = 512,
        dhcp: str = "full",
        start: bool = True,
        say: Callable[[str], None] = lambda _: None,
        ramdisk: str = "agent",
        bmc: str = "qemu",
        ipv6: bool = False,
        discovery: bool = False,
    ) -> Lab:
        """Build a lab in `directory` (which must not hold one); on failure, remove what was made."""
        directory = directory.resolve()
        if (directory / STATE_FILE).exists():
            raise LabError(f"a lab already exists in {directory}: run `bootforge lab down` first")
        if dhcp not in DHCP_MODES:
            raise LabError(f"dhcp must be one of {', '.join(DHCP_MODES)}, not {dhcp!r}")
        if ramdisk not in RAMDISKS:
            raise LabError(f"ramdisk must be one of {', '.join(RAMDISKS)}, not {ramdisk!r}")
        if not 1 <= vms <= 99:
            raise LabError("--vms must be between 1 and 99")
        if bmc not in BMCS:
            raise LabError(f"bmc must be one of {', '.join(BMCS)}, not {bmc!r}")
        if dhcp == "off" and bmc not in VMEDIA_BOOT:
            raise LabError(
                f"--dhcp off boots the VMs from virtual media, which --bmc {bmc} does not offer: "
                f"use --bmc {' or '.join(VMEDIA_BOOT)}"
            )
        plan = firmware_plan(vms, firmware)
        if ipv6 and (dhcp == "off" or "uefi-sb" in plan):
            raise LabError(
                "--ipv6 runs bootforge's DHCPv6 (--dhcp full, or proxy beside Kea) and boots bios, uefi "
                "or uefi-http VMs (the Secure Boot chain is offered over IPv4 only)"
            )
        _preflight(plan, dhcp, bmc)
        if ipv6 and dhcp == "proxy" and shutil.which("kea-dhcp6") is None:
            raise LabError("--ipv6 --dhcp proxy needs kea-dhcp6 (Debian package kea-dhcp6-server)")
        directory.mkdir(parents=True, exist_ok=True)
        state = LabState(str(directory), netns.unique_prefix(PREFIX_BASE), dhcp, bmc=bmc, ipv6=ipv6)
        # discovery: serve discovers unknown machines on the lab's subnet, and the VMs are not enrolled
        # (started with start_unknown, each with an SMBIOS serial: its name).
        state.discovery = discovery
        state.save()
        lab = cls(directory, state)
        try:
            lab._build(plan, memory_mib, start, say, ramdisk)
        except BaseException:
            lab.down()
            raise
        return lab

    def _build(
        self, plan: list[str], memory_mib: int, start: bool, say: Callable[[str], None], kind: str
    ) -> None:
        boot = self.dir / "boot" / "bootforge"
        boot.mkdir(parents=True, exist_ok=True)
        if any(fw in ARM64_FIRMWARES for fw in plan):
            self._arm64_boot(boot, say)
        if all(fw in ARM64_FIRMWARES for fw in plan):
            pass  # no x86 VM: no x86 ramdisk
        elif kind == "agent":
            say("building the deploy ramdisk (bootforge ramdisk build; cached after the first time)")
            built = build_agent_ramdisk(boot, say=lambda m: say(f"  {m}"))
            say(f"deploy ramdisk: {built.total_size / 2**20:.1f} MiB in {built.seconds:.1f} s")
        else:
            say("building the probe ramdisk (cached after the first time)")
            rd = ramdisk.build()
            for src, name in ((rd.kernel, "vmlinuz"), (rd.initrd, "initrd")):
                shutil.copyfile(src, boot / name)
        if "uefi-sb" in plan:
            say("fetching Debian's signed shim and GRUB into the loader cache (cached after the first time)")
            try:
                loaders.fetch_signed_loaders()
            except (AgentRamdiskError, OSError) as e:
                raise LabError(
                    f"uefi-sb needs Debian's signed shim and GRUB, which were not fetched: {e}"
                ) from e
        say(f"creating namespace {self.state.netns} with bridge br0 ({ADDRESS}/24)")
        topo = self._network(len(plan))
        self._plan_vms(plan)
        if self.state.dhcp == "proxy" and self.state.ipv6:
            self._start_kea()
        elif self.state.dhcp == "proxy":
            self._start_dnsmasq(topo)
        self._start_serve()
        self._start_router_adverts()
        self._start_forwarder()
        say(f"waiting for the API ({self.state.api_in_lab} in the lab, {self.state.url} on this host)")
        self._wait_ready()
        for rec in self.state.vms:
            self._write_vm(rec, memory_mib)
        if self.state.bmc != "qemu":
            say(f"starting {self.state.bmc} BMCs on {ADDRESS} in the lab")
            self._start_bmcs()
        with self.client() as api:
            for rec in [] if self.state.discovery else self.state.vms:
                self._enrol(api, rec)
                via = f" behind {rec.bmc}" if rec.bmc else ""
                say(f"enrolled {rec.name} ({rec.firmware}, {rec.mac}) as node {rec.node}{via}")
            if start:
                for rec in self.state.vms:
                    self.power(api, rec, "power on")
                    say(f"powered on {rec.name} through the API")

    @staticmethod
    def _arm64_boot(boot: Path, say: Callable[[str], None]) -> None:
        """The arm64 deploy ramdisk (whatever `ramdisk` says: the probe ramdisk is x86 only) under
        bootforge/arm64/, where serve looks for an aarch64 node's, and the signed arm64 chain."""
        say("building the arm64 deploy ramdisk (ramdisk build --arch arm64; cached after the first time)")
        built = build_agent_ramdisk(boot / "arm64", say=lambda m: say(f"  {m}"), arch="arm64")
        say(f"arm64 deploy ramdisk: {built.total_size / 2**20:.1f} MiB in {built.seconds:.1f} s")
        say("fetching Debian's signed arm64 shim and GRUB into the loader cache")
        try:
            loaders.fetch_signed_loaders(arch="arm64")
        except (AgentRamdiskError, OSError) as e:
            raise LabError(
                f"arm64 VMs need Debian's signed arm64 shim and GRUB, which were not fetched: {e}"
            ) from e

    def _network(self, count: int) -> netns.Topology:
        topo = netns.Topology(self.state.prefix)
        roles = ["net", "dhcp"] if self.state.dhcp == "proxy" else ["net"]
        # Recorded before creation: a crash right after `ip netns add` still leaves a name to delete.
        self.state.namespaces = [self.state.prefix + r for r in roles]
        self.state.save()
        ns = topo.namespace("net")
        bridge = topo.bridge(ns, "br0", f"{ADDRESS}/24")
        if self.state.ipv6:
            # nodad: serve binds it at once (duplicate address detection would hold it ~1 s).
            ns.ip("-6", "addr", "add", f"{ADDRESS6}/64", "dev", "br0", "nodad")
        for i in range(count):
            topo.tap(ns, f"tap{i}", bridge)
        if self.state.dhcp == "proxy":
            site = topo.attach(bridge, topo.namespace("dhcp"), "eth0", f"{DNSMASQ_ADDRESS}/24")
            if self.state.ipv6:
                site.ns.ip("-6", "addr", "add", f"{KEA_ADDRESS6}/64", "dev", "eth0", "nodad")
        return topo

    def _plan_vms(self, plan: list[str]) -> None:
        for i, fw in enumerate(plan):
            name = f"vm{i + 1}"
            rec = VmRecord(name, fw, f"{MAC_PREFIX}{i + 1:02x}", f"tap{i}", str(self.dir / "vms" / name))
            self.state.vms.append(rec)
        self.state.save()

    def _spawn(self, key: str, argv: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the `lab up` command; ended by PID on `lab down`
            )
        self._children.append(proc)  # reaped by down(); the PID is what survives this process
        self.state.pids[key] = proc.pid
        self.state.save()

    def _start_dnsmasq(self, topo: netns.Topology) -> None:
        conf = self.dir / "dnsmasq.conf"
        conf.write_text(dnsmasq_config(self.state))
        ns = self.state.prefix + "dhcp"
        argv = ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
        self._spawn("dnsmasq", [*argv, "--pid-file=", "--log-facility=-"], self.dir / "dnsmasq.log")

    def _start_kea(self) -> None:
        conf = self.dir / "kea-dhcp6.conf"
        conf.write_text(kea6_config(self.state))
        ns = self.state.prefix + "dhcp"
        # Its lock and PID files go into the lab directory, not /run/kea (nothing of the host's).
        env = ["env", f"KEA_LOCKFILE_DIR={self.dir}", f"KEA_PIDFILE_DIR={self.dir}"]
        argv = ["ip", "netns", "exec", ns, *env, "kea-dhcp6", "-c", str(conf)]
        self._spawn("kea", argv, self.dir / "kea.log")

    def _start_serve(self) -> None:
        serve_dir = self.dir / "serve"
        serve_dir.mkdir(parents=True, exist_ok=True)
        self.state.password = secrets.token_urlsafe(18)
        digest = bcrypt.hashpw(self.state.password.encode(), bcrypt.gensalt(rounds=8)).decode()
        (serve_dir / "htpasswd").write_text(f"{USER}:{digest}\n")
        (serve_dir / "htpasswd").chmod(0o600)
        config = self.dir / "serve.toml"
        config.write_text(serve_config(self.state, self.dir / "boot"))
        argv = ["ip", "netns", "exec", self.state.netns, sys.executable, "-m", "bootforge", "serve"]
        env_clean = ["env", *(f"-u{k}" for k in os.environ if k.startswith("BOOTFORGE_"))]
        self._spawn("serve", [*env_clean, *argv, "--config", str(config)], self.dir / "serve.log")

    def _start_router_adverts(self) -> None:
        # Without them every iPXE boot waits ~13 s for IPv6 router discovery (see bootforge.lab.ra).
        argv = ["ip", "netns", "exec", self.state.netns, sys.executable, "-m", "bootforge.lab.ra", "br0"]
        managed = ["--managed", PREFIX6] if self.state.ipv6 else []
        self._spawn("ra", [*argv, str(self.dir), *managed], self.dir / "ra.log")

    def _start_forwarder(self) -> None:
        self.state.host_port = procs.free_port()
        target = f"[{ADDRESS6}]:{API_PORT}" if self.state.ipv6 else f"{ADDRESS}:{API_PORT}"
        argv = [sys.executable, "-m", "bootforge.lab.forward", f"127.0.0.1:{self.state.host_port}"]
        argv += [self.state.netns, target, str(self.dir)]
        self._spawn("forwarder", argv, self.dir / "forwarder.log")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for key in ("serve", "forwarder", "dnsmasq", "kea", "ra"):
                pid = self.state.pids.get(key)
                if pid is not None and procs.exited(pid):
                    log = self.dir / f"{key}.log"
                    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                    raise LabError(f"{key} exited while the lab was starting:\n{tail}")
            try:
                with self.client(timeout=2) as api:
                    if api.get("/v1/nodes").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise LabError(f"the lab's API did not answer within {READY_TIMEOUT:.0f} s; see {self.dir}/serve.log")

    def _write_vm(self, rec: VmRecord, memory_mib: int) -> None:
        rec.path.mkdir(parents=True, exist_ok=True)
        definition = vm_definition(rec, memory_mib, self.state.netns, self.state.ipv6)
        if self._vmedia_boot() == "virtual-media":
            definition["cdrom"] = True  # where the qemu virtual-media interface inserts its ISO
        rec.definition.write_text(json.dumps(definition, indent=2))
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(rec.disk), "1G"],
            check=True,
            capture_output=True,
            timeout=60,
        )

    # --- BMCs ---------------------------------------------------------------------------------

    def _start_bmcs(self) -> None:
        self.state.bmc_password = secrets.token_urlsafe(12)
        self.state.save()
        bmc_dir = self.dir / "bmc"
        bmc_dir.mkdir(parents=True, exist_ok=True)
        if self.state.bmc == "redfish":
            self._start_redfish(bmc_dir)
        else:
            for i, rec in enumerate(self.state.vms):
                self._start_ipmi(rec, IPMI_FIRST_PORT + i)
        logs = [self.dir / f"{key}.log" for key in self.state.pids if key.startswith("bmc-")]
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(_said_ready(log) for log in logs):
            self._check_alive([k for k in self.state.pids if k.startswith("bmc-")])
            if time.monotonic() > deadline:
                raise LabError(
                    f"the BMCs did not start within {READY_TIMEOUT:.0f} s; see {self.dir}/bmc-*.log"
                )
            time.sleep(0.1)

    def _start_redfish(self, bmc_dir: Path) -> None:
        cert, key = redfish_bmc.make_tls(bmc_dir, ADDRESS)
        htpasswd = bmc_dir / "htpasswd"
        redfish_bmc.make_htpasswd(htpasswd, self.state.bmc_password, BMC_USER)
        systems = []
        for rec in self.state.vms:
            uuid = redfish_bmc.system_uuid(rec.definition)
            systems.append(
                redfish_bmc.SystemConfig(
                    name=rec.name,
                    uuid=uuid,
                    definition=rec.definition,
                    qmp_socket=rec.qmp_socket,
                    state_dir=bmc_dir / rec.name,
                )
            )
            rec.bmc = f"redfish https://{ADDRESS}:{REDFISH_PORT}/redfish/v1/Systems/{uuid}"
        config = redfish_bmc.BmcConfig(
            address=ADDRESS,
            port=REDFISH_PORT,
            cert=cert,
            key=key,
            htpasswd=htpasswd,
            state_dir=bmc_dir / "redfish",
            systems=systems,
        )
        path = bmc_dir / "redfish.json"
        path.write_text(config.model_dump_json(indent=2))
        argv = ["ip", "netns", "exec", self.state.netns, sys.executable, "-m", "bootforge.lab.redfish_bmc"]
        self._spawn("bmc-redfish", [*argv, "--config", str(path)], self.dir / "bmc-redfish.log")

    def _start_ipmi(self, rec: VmRecord, port: int) -> None:
        argv = ["ip", "netns", "exec", self.state.netns, sys.executable, "-m", "bootforge.lab.ipmi_bmc"]
        argv += ["--address", ADDRESS, "--port", str(port), "--username", BMC_USER]
        argv += ["--password", self.state.bmc_password, "--qmp-socket", str(rec.qmp_socket)]
        argv += ["--qemu-command", str(rec.definition), "--serial-log", str(rec.console)]
        rec.bmc = f"ipmi {ADDRESS}:{port}"
        self._spawn(f"bmc-{rec.name}", argv, self.dir / f"bmc-{rec.name}.log")

    def _check_alive(self, keys: list[str]) -> None:
        for key in keys:
            pid = self.state.pids.get(key)
            if pid is not None and procs.exited(pid):
                log = self.dir / f"{key}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise LabError(f"{key} exited while the lab was starting:\n{tail}")

    def _driver(self, rec: VmRecord) -> tuple[str, dict[str, Any]]:
        """The driver a VM is enrolled with and its driver_info."""
        if self.state.bmc == "qemu":
            return "qemu", {"qemu_qmp_socket": str(rec.qmp_socket), "qemu_command": str(rec.definition)}
        assert rec.bmc is not None
        kind, where = rec.bmc.split(" ", 1)
        if kind == "ipmi":
            host, port = where.rsplit(":", 1)
            info: dict[str, Any] = {"ipmi_address": host, "ipmi_port": int(port)}
            return "ipmi", info | {"ipmi_username": BMC_USER, "ipmi_password": self.state.bmc_password}
        address, system = where.split("/redfish/v1/Systems/", 1)
        return "redfish", {
            "redfish_address": address,
            "redfish_system_id": f"/redfish/v1/Systems/{system}",
            "redfish_username": BMC_USER,
            "redfish_password": self.state.bmc_password,
            "redfish_verify_ca": str(self.dir / "bmc" / "bmc-cert.pem"),
        }

    def _enrol(self, api: httpx.Client, rec: VmRecord) -> None:
        driver, info = self._driver(rec)
        body = {"driver": driver, "name": f"lab-{rec.name}", "driver_info": info}
        if rec.firmware in ("uefi-sb", "arm64-sb"):  # DHCP then offers it the signed chain (shim -> GRUB)
            body["properties"] = {"capabilities": "boot_mode:uefi,secure_boot:true"}
        vmedia = self._vmedia_boot()
        if vmedia:
            body |= {"boot_interface": vmedia, "network_data": static_network_data(rec)}
        node = _ok(api.post("/v1/nodes", json=body), 201)
        rec.node = str(node["uuid"])
        self.state.save()
        _ok(api.post("/v1/ports", json={"node_uuid": rec.node, "address": rec.mac}), 201)
        _ok(api.put(f"/v1/nodes/{rec.node}/states/provision", json={"target": "manage"}), 202)
        self.wait_node(api, rec, lambda n: n["provision_state"] == "manageable" and not n["reservation"])
        # What a network boot interface does before it boots a node: the NIC first, for good. A
        # virtual-media node never boots from the network: its disk, until a CD is inserted.
        device = "disk" if self._vmedia_boot() else "pxe"
        boot = {"boot_device": device, "persistent": True}
        _ok(api.put(f"/v1/nodes/{rec.node}/management/boot_device", json=boot), 204)

    def _vmedia_boot(self) -> str | None:
        """The boot interface of nodes that boot the ramdisk from a virtual CD (the lab runs no DHCP)."""
        return VMEDIA_BOOT.get(self.state.bmc) if self.state.dhcp == "off" else None

    # --- discovery -----------------------------------------------------------------------------

    def start_unknown(self, rec: VmRecord, mac: str | None = None, timeout: float = 60.0) -> None:
        """Start a VM that bootforge does not know, as someone racking a machine would: its QEMU
        process from its definition, with an SMBIOS serial (the VM's name) and, with `mac`, a new NIC
        MAC (the same machine with its NIC replaced)."""
        definition = json.loads(rec.definition.read_text())
        if mac is not None:
            definition["nics"][0]["mac"] = mac
        serial = ["-smbios", f"type=1,manufacturer=QEMU,serial={rec.name}"]
        if serial[1] not in definition["extra_args"]:
            definition["extra_args"] += serial
        rec.definition.write_text(json.dumps(definition, indent=2))
        info = qemu.QemuInfo(rec.qmp_socket, definition=rec.definition, pid_file=rec.pid_file)

        async def start() -> None:
            await qemu.start_process(info, f"cannot start {rec.name}")
            async with qemu.qmp_session(rec.qmp_socket) as s:
                await s.run("cont")  # started paused (-S)

        asyncio.run(asyncio.wait_for(start(), timeout))

    # --- operations on nodes ------------------------------------------------------------------

    def vm(self, name: str) -> VmRecord:
        for rec in self.state.vms:
            if rec.name == name:
                return rec
        raise LabError(f"no VM {name!r} in this lab")

    def power(self, api: httpx.Client, rec: VmRecord, target: str, timeout: float = 90.0) -> None:
        """Change the power state through the API and wait until the conductor reports it."""
        _ok(api.put(f"/v1/nodes/{rec.node}/states/power", json={"target": target}), 202)
        want = "power off" if target in ("power off", "soft power off") else "power on"
        self.wait_node(api, rec, lambda n: n["power_state"] == want and not n["target_power_state"], timeout)

    def wait_node(
        self, api: httpx.Client, rec: VmRecord, done: Callable[[dict[str, Any]], bool], timeout: float = 90.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        node: dict[str, Any] = {}
        while time.monotonic() < deadline:
            node = _ok(api.get(f"/v1/nodes/{rec.node}"), 200)
            if done(node):
                return node
            if node.get("last_error") and not node.get("reservation") and not node.get("target_power_state"):
                raise LabError(f"{rec.name}: {node['last_error']}")
            time.sleep(0.3)
        raise LabError(f"{rec.name} did not get there within {timeout:.0f} s; last seen: {node}")

    # --- down ---------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything this lab made; idempotent, and safe after a crash. Returns what went."""
        gone: list[str] = []
        marker = str(self.dir)
        for rec in self.state.vms:
            pid = vm.read_pid(rec.pid_file)
            if pid is not None and vm.pid_alive(pid) and procs.end_process(pid, marker):
                gone.append(f"qemu {rec.name} (pid {pid})")
        for key, pid in sorted(self.state.pids.items()):
            if procs.end_process(pid, marker):
                gone.append(f"{key} (pid {pid})")
        # A `lab up` killed between starting a process and recording its PID: find it by the lab dir.
        for pid in procs.lab_processes(marker):
            if procs.end_process(pid, marker):
                gone.append(f"process {pid}")
        for name in self.state.namespaces:
            gone += self._remove_namespace(name)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)
        gone.append(f"directory {self.dir}")
        return gone

    @staticmethod
    def _remove_namespace(name: str) -> list[str]:
        if name not in netns.list_namespaces():
            return []
        gone = []
        # Every process in a namespace the lab created was started for the lab.
        for pid in netns.Namespace(name).pids():
            if procs.end_process(pid, "", grace=3.0):
                gone.append(f"process {pid} in {name}")
        netns.Namespace(name).delete()
        return [*gone, f"namespace {name} (with its bridge, taps and veths)"]

    # --- status -------------------------------------------------------------------------------

    def status(self, console_lines: int = 5) -> list[dict[str, Any]]:
        """Per VM: node, power and provision state (from the API when it answers) and the console tail."""
        nodes: dict[str, dict[str, Any]] = {}
        try:
            with self.client(timeout=5) as api:
                for n in _ok(api.get("/v1/nodes?fields=uuid,power_state,provision_state,reservation"), 200)[
                    "nodes"
                ]:
                    nodes[n["uuid"]] = n
        except (httpx.HTTPError, LabError):
            pass
        rows = []
        for rec in self.state.vms:
            node = nodes.get(rec.node or "", {})
            pid = vm.read_pid(rec.pid_file)
            running = pid is not None and vm.pid_alive(pid)
            rows.append(
                {
                    "name": rec.name,
                    "firmware": rec.firmware,
                    "mac": rec.mac,
                    "node": rec.node,
                    "power": node.get("power_state")
                    or ("process running" if running else "off (no process)"),
                    "provision": node.get("provision_state", "?"),
                    "bmc": rec.bmc or "qemu (QMP, by bootforge)",
                    "reservation": node.get("reservation"),
                    "console": tail(rec.console, console_lines),
                }
            )
        return rows


def tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    # Firmware output carries ANSI escapes and carriage returns; keep the printable text.
    clean = [line.replace("\r", "").strip() for line in text.splitlines()]
    return [_printable(line) for line in clean if line][-lines:]


def _printable(line: str) -> str:
    return "".join(ch for ch in line if ch.isprintable())


def _ok(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        request = response.request
        raise LabError(f"{request.method} {request.url.path}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def _said_ready(log: Path) -> bool:
    """The BMC processes print one line once they listen ("ready <port>", "redfish-bmc: ...")."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return any(line.startswith(("ready ", "redfish-bmc: ")) for line in text.splitlines())


def _preflight(plan: list[str], dhcp: str, bmc: str = "qemu") -> None:
    """Name every missing piece before anything is created."""
    netns.check_available()
    module = {"redfish": "sushy_tools", "ipmi": "pyghmi"}.get(bmc)
    if module is not None and importlib.util.find_spec(module) is None:
        extra = " (pip install 'bootforge[lab]')" if bmc == "redfish" else ""
        raise LabError(f"--bmc {bmc} needs the Python package {module}{extra}")
    missing = [b for b in (vm.DEFAULT_BINARY, "qemu-img", "apt-get", "dpkg-deb") if shutil.which(b) is None]
    if dhcp == "proxy" and shutil.which("dnsmasq") is None:
        missing.append("dnsmasq (Debian package dnsmasq-base)")
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)}")
    if any(fw in ARM64_FIRMWARES for fw in plan):
        if shutil.which(vm.AARCH64_BINARY) is None:
            raise LabError(f"arm64 VMs need {vm.AARCH64_BINARY} (Debian package qemu-system-arm)")
        try:
            vm.find_ovmf(vm.AAVMF_SECURE_BOOT_CANDIDATES if "arm64-sb" in plan else vm.AAVMF_CANDIDATES)
        except vm.QemuError as e:
            raise LabError(str(e)) from None
    if any(fw not in ("bios", *ARM64_FIRMWARES) for fw in plan):
        try:
            vm.find_ovmf()
        except vm.QemuError as e:
            raise LabError(str(e)) from None
