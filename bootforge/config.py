"""Settings: one pydantic-settings class, built once by the composition root and passed down.

Sources, strongest first: flags given to `bootforge serve` (passed as init values), BOOTFORGE_*
environment variables, a TOML config file (`--config FILE` or BOOTFORGE_CONFIG), then the defaults below,
which run a complete single-process service on loopback with SQLite in the state directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bootforge.conductor.discovery_settings import DiscoverySettings
from bootforge.conductor.rollout_settings import RolloutSettings
from bootforge.drivers.burnin_settings import BurninSettings
from bootforge.observe.settings import EventSettings, MetricsSettings

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "bootforge"


class FakeDelays(BaseSettings):
    """Seconds the fake-hardware interfaces sleep per operation (for tests and benchmarks only)."""

    power: float = 0.0
    management: float = 0.0
    boot: float = 0.0
    deploy: float = 0.0
    inspect: float = 0.0
    clean: float = 0.0
    rescue: float = 0.0


class AgentSettings(BaseModel):
    """The deploy agent in the bootforge ramdisk, and how the conductor works with it."""

    # How long the agent's long-poll for a command waits before it asks again (its heartbeat).
    poll_timeout: int = Field(default=20, ge=1, le=120)
    # Seconds between the agent's progress reports during long commands.
    progress_interval: float = Field(default=2.0, gt=0)
    # Ironic's fast track: a node whose agent was heard within fast_track_timeout is given its next
    # command without a reboot (inspect -> clean -> deploy in one ramdisk boot), and is left running
    # the ramdisk after cleaning and inspection instead of being powered off.
    fast_track: bool = False
    fast_track_timeout: float = Field(default=300.0, gt=0)
    # After the deployed machine is power cycled onto its disk, how long bootforge watches for it to
    # network-boot again (which means boot from disk failed) before declaring the node active.
    handoff_window: float = Field(default=20.0, ge=0)
    # Ports inspection creates for the NICs it finds: "all", "pxe" (the NIC the ramdisk booted
    # from, as Ironic) or "none".
    inspection_add_ports: Literal["all", "pxe", "none"] = "pxe"
    # Seconds the agent listens for LLDP frames during inspection (0: none).
    lldp_wait: float = Field(default=3.0, ge=0, le=60)
    # A lookup must carry the per-boot token of the node's boot configuration (bootforge.boot_token=
    # on the ramdisk's kernel command line, see bootforge/boot_token.py). Turn off ONLY while nodes
    # still boot a ramdisk built before bootforge sent the token: then anyone on the provisioning
    # network who knows a waiting node's MAC can take over its agent session.
    require_boot_token: bool = True


class IpmiSettings(BaseModel):
    """The `ipmi` hardware type (pyghmi)."""

    # Outer limit on one BMC call, above the driver's own (a BMC that never answers fails its
    # probe after 3 s; pyghmi gives up on a session after about 5 s): a DriverError by then.
    timeout: float = Field(default=15.0, gt=0)
    # Threads that run pyghmi calls; a BMC that never answers holds one until pyghmi gives up.
    workers: int = Field(default=16, ge=1, le=512)
    # A BMC's session is reused for calls less than this many seconds apart, else logged out and
    # opened anew (BMCs drop idle sessions, often after 60 s). 0: a session per call.
    session_idle: float = Field(default=20.0, ge=0)
    # Seconds between power-state reads while waiting for a power change to show.
    power_poll_interval: float = Field(default=1.0, gt=0)
    # A node's SOL console log is rotated to <log>.1 when it would grow past this many bytes.
    console_log_max_bytes: int = Field(default=8 << 20, ge=4096)


class ApiLimits(BaseModel):
    """What one API request may carry; beyond it the answer is 413 (body), 431 (headers) or 400 (JSON).

    Checked before a body is read whole (Content-Length) and while it is read (chunked), so a client
    costs the server at most a limit's worth of memory.
    """

    max_body_bytes: int = Field(default=1 << 20, ge=4096)
    # PUT /v1/nodes/{node}/states/provision carries the config drive (a gzipped, base64-encoded ISO;
    # bootforge builds ISOs of up to 64 MiB, as Ironic accepts).
    max_provision_body_bytes: int = Field(default=(64 << 20) + (64 << 10), ge=4096)
    # The agent's reports carry the inspection inventory (tens of KiB; LLDP data on many ports more).
    max_agent_body_bytes: int = Field(default=8 << 20, ge=4096)
    max_headers: int = Field(default=100, ge=10)
    # The request target and every header name and value, together.
    max_header_bytes: int = Field(default=32 << 10, ge=1024)
    # Objects and lists nested deeper than this in a JSON body are refused (Ironic's documents
    # nest a few levels; the JSON encoder gives up at 254).
    max_json_depth: int = Field(default=32, ge=4, le=200)
    # Each top-level field of a JSON body (a node's extra, driver_info, ...; a JSON-PATCH value), as
    # JSON: Ironic's columns for them hold 64 KiB. The config drive has the provision body's limit.
    max_json_field_bytes: int = Field(default=64 << 10, ge=1024)
    # PUT /v1/images/{name}/file: an image file uploaded by `bootforge image add`, streamed to disk.
    max_image_upload_bytes: int = Field(default=64 << 30, ge=1 << 20)


class ImageSettings(BaseModel):
    """Where image imports may read from. Whatever an import reads, HTTP boot then serves without
    credentials (images/<uuid>.simg), so a source must never be a host file or an internal service."""

    # Directories on the bootforge host whose files `POST /v1/images` may import by path (checked
    # after symlinks and '..' are resolved, and again on the opened file). Empty: no host path is
    # imported; `bootforge image add NAME FILE` uploads the file instead (PUT /v1/images/{name}/file).
    import_dirs: list[Path] = []
    # URL sources (and deploys' http(s) image_source) may be fetched from public addresses, and from
    # these networks: e.g. ["10.20.0.0/24"] for an internal image mirror. Loopback, link-local (cloud
    # metadata), private, shared, multicast, unspecified and reserved addresses are refused otherwise.
    allow_url_networks: list[str] = []
    # A download larger than this is stopped and refused (the source's bytes, before any conversion).
    max_download_bytes: int = Field(default=64 << 30, ge=1 << 20)
    # Seconds a whole download may take, redirects included.
    download_timeout: float = Field(default=3600.0, gt=0)
    max_redirects: int = Field(default=5, ge=0, le=20)
    # Seconds an upload may go without sending a byte before it is abandoned.
    upload_idle_timeout: float = Field(default=60.0, gt=0)

    @field_validator("import_dirs")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        for d in value:
            if not d.is_absolute():
                raise ValueError(f"images.import_dirs must be absolute paths, got {str(d)!r}")
        return value

    @field_validator("allow_url_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"images.allow_url_networks: {net!r} is not a network (CIDR such as 10.20.0.0/24)"
                ) from None
        return value


class SubnetSettings(BaseModel):
    """A subnet bootforge's DHCP server leases addresses in (full mode)."""

    network: str  # "10.77.0.0/24"
    pool: str  # "10.77.0.100-10.77.0.199"
    routers: list[str] = []
    dns_servers: list[str] = []
    lease_time: int = 3600


class NetbootSettings(BaseModel):
    """The DHCP, TFTP and HTTP boot services. All are off on the embedded defaults: nothing can
    network-boot from loopback, and DHCP must never answer on a segment nobody named."""

    # The IPv4 address machines reach bootforge at on the provisioning network (next-server, URLs).
    address: str = ""
    dhcp: Literal["off", "full", "proxy"] = "off"
    # Interfaces DHCP serves, by name; there is deliberately no "all interfaces" default.
    dhcp_interfaces: list[str] = []
    subnets: list[SubnetSettings] = []
    unknown_clients: Literal["ignore", "discover"] = "ignore"
    tftp: bool = False
    tftp_port: int = 69
    # TFTP processes sharing the port (SO_REUSEPORT): 1 serves TFTP in the main process; N > 1
    # adds N-1 worker processes, so many concurrent lockstep transfers can use more cores. Default
    # 1: measured on 2 cores (bench/netboot_tftp.py --bf-procs 2) it bought no throughput, only CPU.
    tftp_workers: int = Field(default=1, ge=1, le=64)
    # Who runs the data phase of lockstep (windowsize 1) transfers of real files: "native" (a C
    # thread per transfer, bootforge/servers/_tftp_dataplane.c), "python" (the event loop), or
    # "auto": native when the extension is built (pip needs a C compiler), else python. Measured
    # against tftpd-hpa's lockstep throughput: native 0.9x-1.1x at 1 client and 1.0x-1.4x at
    # 16-64, python 0.8x-1.0x (bench/netboot_tftp.py --bf-dataplane).
    tftp_dataplane: Literal["auto", "native", "python"] = "auto"
    # TFTP transfers one client address may run at once; more are dropped and counted. A machine's
    # firmware fetches one file at a time; the bound keeps one address from holding every slot.
    tftp_max_transfers_per_client: int = Field(default=16, ge=1, le=4096)
    http: bool = False
    http_port: int = 8080
    # Where boot artifacts live (kernels, initrds, images); loaders come from Debian's packages.
    root: Path | None = None
    # Directories searched in order, before Debian's package paths, for boot loaders by the name
    # clients ask for (ipxe.efi, undionly.kpxe, ipxe-arm64.efi, snponly.efi, shimx64.efi, grubx64.efi):
    # an iPXE build for an architecture Debian does not package, or a shim/GRUB from elsewhere.
    loader_dirs: list[Path] = []
    # Which UEFI x64 nodes DHCP sends to the signed chain (shimx64.efi -> grubx64.efi -> kernel, the
    # GRUB config by TFTP) instead of iPXE: those whose capabilities say secure_boot:true, or all.
    secure_boot: Literal["capability", "always"] = "capability"
    # The bootforge ramdisk, as file names under `root` or URLs; a node's driver_info
    # deploy_kernel / deploy_ramdisk overrides them.
    deploy_kernel: str = "bootforge/vmlinuz"
    deploy_ramdisk: str = "bootforge/initrd"
    # The last console= is the one init and the agent write to: the serial port, where BMCs (SOL) and
    # the lab read it.
    kernel_args: list[str] = ["console=tty0", "console=ttyS0,115200n8"]
    # The API URL boot scripts and the ramdisk's agent are given; empty: public_url. A netboot-only
    # process (serve --role netboot) runs no API and names an API process here.
    api_url: str = ""

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"netboot.api_url must be an http:// or https:// URL, got {value[:100]!r}")
        return value.rstrip("/")

    # IPv6 (dual stack): with address6 set, TFTP and HTTP boot listen on it too, and boot URLs for
    # clients that came over IPv6 name it ("tftp://[fd00::1]/ipxe.efi"). DHCPv6 (RFC 8415) "full"
    # leases addresses from dhcp6_pool inside dhcp6_prefix and hands out boot file URLs; "proxy"
    # answers only netboot clients' boot options (59) beside a site DHCPv6 server.
    address6: str = ""
    dhcp6: Literal["off", "full", "proxy"] = "off"
    dhcp6_interfaces: list[str] = []
    dhcp6_prefix: str = ""  # "fd00:77::/64": the link's prefix
    dhcp6_pool: str = ""  # "fd00:77::1000-fd00:77::1fff" (full mode)
    dhcp6_dns_servers: list[str] = []
    dhcp6_lease_time: int = Field(default=3600, ge=60, le=86400 * 7)
    # The API URL given to ramdisks that booted over IPv6 ("http://[fd00::1]:6385"); empty: public_url.
    public_url6: str = ""

    @model_validator(mode="after")
    def _check6(self) -> NetbootSettings:
        if self.address6:
            try:
                address = ipaddress.IPv6Address(self.address6)
            except ValueError:
                raise ValueError(f"netboot.address6: {self.address6!r} is not an IPv6 address") from None
            if address.is_link_local or address.is_multicast or address.is_unspecified:
                raise ValueError("netboot.address6: a unicast, non-link-local address (boot URLs name it)")
        if self.dhcp6 == "off":
            return self
        if not self.address6:
            raise ValueError("netboot.address6 is required when dhcp6 is on (boot URLs name it)")
        if not self.dhcp6_interfaces:
            raise ValueError("netboot.dhcp6_interfaces must name the interfaces to serve")
        try:
            prefix = ipaddress.IPv6Network(self.dhcp6_prefix)
        except ValueError:
            raise ValueError(
                f"netboot.dhcp6_prefix: {self.dhcp6_prefix!r} is not an IPv6 prefix (such as fd00:77::/64)"
            ) from None
        if self.dhcp6 == "full":
            first, sep, last = self.dhcp6_pool.partition("-")
            try:
                lo, hi = ipaddress.IPv6Address(first.strip()), ipaddress.IPv6Address(last.strip())
            except ValueError:
                raise ValueError(
                    f"netboot.dhcp6_pool: {self.dhcp6_pool!r} is not FIRST-LAST "
                    "(such as fd00:77::1000-fd00:77::1fff)"
                ) from None
            if not sep or lo not in prefix or hi not in prefix or lo > hi:
                raise ValueError(f"netboot.dhcp6_pool: must be FIRST-LAST inside dhcp6_prefix {prefix}")
        for d in self.dhcp6_dns_servers:
            try:
                ipaddress.IPv6Address(d)
            except ValueError:
                raise ValueError(f"netboot.dhcp6_dns_servers: {d!r} is not an IPv6 address") from None
        return self

    @model_validator(mode="after")
    def _check(self) -> NetbootSettings:
        if (self.dhcp != "off" or self.tftp or self.http) and not self.address:
            raise ValueError(
                "netboot.address (the provisioning network address) is required "
                "when DHCP, TFTP or HTTP boot is on"
            )
        if self.dhcp != "off" and not self.dhcp_interfaces:
            raise ValueError("netboot.dhcp_interfaces must name the interfaces to serve")
        if self.dhcp == "full" and not self.subnets:
            raise ValueError("netboot.dhcp = 'full' needs at least one subnet")
        for d in self.loader_dirs:
            if not d.is_absolute():
                raise ValueError(f"netboot.loader_dirs: {str(d)!r} is not an absolute path")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BOOTFORGE_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = DEFAULT_STATE_DIR
    listen: str = "127.0.0.1:6385"
    # False runs only what else is switched on (e.g. one netboot service alone) without the REST API.
    api: bool = True
    # What this process runs (serve --role): "all" (API, conductor, netboot: one process), "api" (the
    # REST API only; node work goes to the nodes' conductors), "conductor" (periodics and node work,
    # no API, no netboot), "netboot" (DHCP/TFTP/HTTP boot for the nodes of conductor_group only).
    role: Literal["all", "api", "conductor", "netboot"] = "all"
    # The URL clients (and later the deploy agent) use to reach the API; derived from `listen` if empty.
    public_url: str = ""
    # HTTPS for the API, the agent's routes included: a PEM certificate (chain) and its private key.
    # The ramdisk verifies the certificate against the CA bundle built into it (`bootforge ramdisk
    # build --ca-bundle FILE`); public_url, which the ramdisk is given, must then be https://.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    database_url: str = ""
    # The conductor's name in the conductors table and in node reservations; unique per process.
    host: str = Field(default_factory=socket.gethostname)
    conductor_group: str = ""

    # The secret key (bootforge/keys.py) for secrets at rest and agent boot tokens; created on first
    # start if missing. Back it up with the database; every conductor of one fleet needs the same file.
    # Empty: <state_dir>/secret.key.
    secret_key_file: Path | None = None

    auth_strategy: Literal["noauth", "http_basic"] = "noauth"
    htpasswd_file: Path | None = None
    api_limits: ApiLimits = ApiLimits()

    # Hardware types this conductor drives; a node of another type is refused (and left to a conductor
    # that has it). fake-hardware (tests and benchmarks) only when listed here: a production serve must
    # not enrol nodes that pretend to power on.
    enabled_hardware_types: list[str] = ["ipmi", "redfish", "qemu"]
    default_resource_class: str | None = None
    automated_clean: bool = True

    # Periodic work, in seconds. 0 switches a periodic task off.
    # The pause between the end of one power-sync round and the start of the next (rounds never
    # overlap). Ironic's sync_power_state_interval is 60 s in its docs, 120 s in its current conf.
    power_sync_interval: float = 60.0
    # BMCs read at once in a power-sync round. The workers are coroutines, so one that waits on a
    # silent BMC costs nothing but its place: with more workers than BMCs that hang in a round, a
    # round lasts about max(power_sync_timeout, nodes / workers x one read). 16 keeps a round of a
    # rack with a dozen dead BMCs to one timeout (Ironic's 8 threads would need two), while no more
    # than 16 IPMI sessions are in flight: Ironic's power-sync guide reports client-side UDP loss
    # with 8 ipmitool workers on large fleets, so this is not raised further by default.
    power_sync_workers: int = Field(default=16, ge=1, le=1024)
    # Seconds one power-state read may take; then it counts as a failure (three in a row put the
    # node in maintenance). A BMC that accepts a connection and never answers holds one worker this
    # long and nothing else. A healthy BMC answers in well under a second (an iDRAC's Redfish in a
    # few); Ironic lets ipmitool retry for 60 s (command_retry_timeout), which is what makes its
    # rounds as long as its interval when BMCs hang.
    power_sync_timeout: float = Field(default=8.0, gt=0, le=600)
    # Seconds `bootforge node bmc` (GET /v1/nodes/{ident}/bmc) waits for the BMC's report: several
    # reads (Redfish: system, manager, virtual media, Secure Boot), so longer than one read.
    bmc_report_timeout: float = Field(default=30.0, gt=0, le=600)
    timeout_check_interval: float = 15.0
    conductor_heartbeat_interval: float = 10.0
    conductor_offline_after: float = 60.0
    # How long a node may sit in a wait state before it fails with the reason recorded.
    deploy_callback_timeout: float = 1800.0
    clean_callback_timeout: float = 1800.0
    inspect_wait_timeout: float = 1800.0
    rescue_callback_timeout: float = 1800.0
    power_state_change_timeout: float = 60.0
    # Seconds a waiting node may stay silent (no event, no agent call) before `node why` and the
    # dashboard call its wait stalled rather than in progress. A server whose POST takes minutes
    # needs more; a lab of VMs less.
    diagnosis_quiet: float = Field(default=120.0, gt=0, le=86400)
    node_events_keep: int = 500

    fake_delays: FakeDelays = FakeDelays()
    ipmi: IpmiSettings = IpmiSettings()
    agent: AgentSettings = AgentSettings()
    netboot: NetbootSettings = NetbootSettings()
    # HOST:PORT of a listener answering GET /healthz and /livez for a supervisor (observe/health.py),
    # in every role: the only probe a conductor or netboot process has. Empty: off.
    health_listen: str = ""
    # Prometheus metrics, webhooks and event streams (bootforge/observe/).
    metrics: MetricsSettings = MetricsSettings()
    events: EventSettings = EventSettings()
    images: ImageSettings = ImageSettings()
    # Rolling re-provisioning: the drain/undrain hooks rollouts may name (conductor/rollout_settings.py).
    rollouts: RolloutSettings = RolloutSettings()
    # Burn-in clean steps: which run in automated cleaning, default arguments (drivers/burnin_settings.py).
    burnin: BurninSettings = BurninSettings()
    # Discovery of unknown machines on the subnets it names (conductor/discovery_settings.py); off by default.
    discovery: DiscoverySettings = DiscoverySettings()

    log_level: str = "info"

    @field_validator("conductor_group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        # The same rule as a node's conductor_group (Ironic's), stored lower-case like it.
        if not re.fullmatch(r"[a-zA-Z0-9_\-.]{0,255}", value):
            raise ValueError(
                f"conductor_group must be letters, digits, '_', '-' or '.' (at most 255), got {value!r}"
            )
        return value.lower()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen must be HOST:PORT, got {value!r}")
        return value

    @field_validator("health_listen")
    @classmethod
    def _check_health_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if value and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"health_listen must be HOST:PORT or empty, got {value!r}")
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.state_dir / 'bootforge.sqlite'}"
        elif self.database_url.startswith(("postgres://", "postgresql://")):
            self.database_url = "postgresql+asyncpg://" + self.database_url.split("://", 1)[1]
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        for name, tls_file in (("tls_cert_file", self.tls_cert_file), ("tls_key_file", self.tls_key_file)):
            if tls_file is not None and not tls_file.is_file():
                raise ValueError(f"{name} {tls_file} does not exist or is not a file")
        if not self.public_url:
            host, port = self.listen_host_port
            shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
            shown = f"[{shown}]" if ":" in shown else shown  # an IPv6 literal in a URL
            scheme = "https" if self.tls_cert_file else "http"
            self.public_url = f"{scheme}://{shown}:{port}"
        self.public_url = self.public_url.rstrip("/")
        if self.auth_strategy == "noauth" and not self.listens_on_loopback:
            raise ValueError(
                "auth_strategy 'noauth' is only allowed when listening on loopback; "
                f"listen={self.listen!r} needs auth_strategy='http_basic' and an htpasswd_file"
            )
        if self.auth_strategy == "http_basic" and self.htpasswd_file is None:
            raise ValueError("auth_strategy 'http_basic' needs htpasswd_file")
        if self.auth_strategy == "http_basic" and self.htpasswd_file and not self.htpasswd_file.is_file():
            raise ValueError(f"htpasswd_file {self.htpasswd_file} does not exist or is not a file")
        return self

    @property
    def secret_key_path(self) -> Path:
        return self.secret_key_file or self.state_dir / "secret.key"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def health_listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.health_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def listens_on_loopback(self) -> bool:
        host = self.listen_host_port[0]
        return host in ("localhost", "::1") or host.startswith("127.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by BOOTFORGE_CONFIG (set by `--config`), if any."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("BOOTFORGE_CONFIG")
        if not path:
            return {}
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
        section: dict[str, Any] = data.get("bootforge", data)
        return section
