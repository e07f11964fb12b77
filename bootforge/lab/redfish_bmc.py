"""Redfish BMCs for the lab's QEMU VMs: sushy-tools' emulator speaks Redfish, bootforge's QMP code acts.

The protocol side (URLs, JSON, actions, TLS, basic auth, virtual-media downloads) is sushy-tools'
``sushy-emulator`` Flask app, unchanged. sushy-tools ships systems drivers for libvirt, OpenStack,
Ironic and a fake one; this module adds a systems driver (:class:`QmpSystemsDriver`, a subclass of its
``AbstractSystemsDriver``) that acts on the lab's VMs through :mod:`bootforge.drivers.qemu`, and a
launcher (``python -m bootforge.lab.redfish_bmc --config FILE``) that runs the app with it.

Why QMP and not libvirt (the backend sushy-tools was built for). libvirt would give sushy-tools' own,
better-tested driver, but on a host like the lab's it needs a daemon (libvirtd + virtlogd, ~12 s cold
start for the capability probe), two host fixes (QEMU run as root, a SeaBIOS firmware descriptor) and
every lab VM redefined as a domain, with its taps made by libvirt instead of the lab; and vbmc and
sushy-tools sharing a domain freeze firmware auto-selection into explicit loaders
(shared/reference/bmc-lab.md). The lab already runs QEMU itself from a VM definition file, and
bootforge's `qemu` driver already does power and boot order over QMP, so the glue here is small and
behaves exactly like the `qemu` hardware type does for the same VM. The price: this driver is
bootforge's code, so a bug in the QMP layer could hide behind the emulator; the protocol a driver
under test speaks is still entirely sushy-tools'.

How Redfish maps onto the VM (each VM is an *owned* VM of the qemu driver: powered off means no
process; a power-on starts QEMU from a definition this module derives from the lab's):

* ``On``/``ForceOn`` start it, ``ForceOff`` ends it, ``GracefulShutdown`` presses the ACPI power button
  (a guest without an OS ignores it, as on real hardware), ``ForceRestart`` resets it (in a new
  process when the boot mode changed or a one-time boot device is pending), ``GracefulRestart``
  presses the button and powers on again once the guest has gone (within ``graceful_timeout``),
  ``Nmi`` injects an NMI.
* Boot source override ``Pxe``/``Hdd``/``Cd`` sets the VM's boot order as the qemu driver does.
  ``BootSourceOverrideEnabled: Once`` applies to the next boot only; sushy-tools' systems-driver API
  has no parameter for it (its libvirt driver treats every override as Continuous), so the driver reads
  it from the request. sushy-tools' template still reports ``Continuous``.
* ``BootSourceOverrideMode`` ``UEFI``/``Legacy`` picks OVMF or SeaBIOS; it applies at the next power-on
  (or ForceRestart). The VM keeps the NIC option ROM its definition gives it for its own firmware.
* ``SecureBoot``: ``SecureBootEnable`` picks the VM's OVMF build for its next power-on, as a real
  BMC's setting takes effect at the next boot: true = the Microsoft-key variable store with the SMM
  code (``OVMF_CODE_4M.ms.fd``, Secure Boot enforced; q35 with SMM under TCG, as the lab's uefi-sb
  VMs), false = the plain OVMF. A ForceRestart after a change restarts the process cold.
  ``SecureBootCurrentBoot`` is sushy-tools' template's (it echoes the setting). Refused (400) for a
  VM in Legacy mode or a host without the Microsoft-key OVMF.
* Virtual media: the VM gets an IDE cdrom; ``InsertMedia`` (sushy-tools downloads the image into this
  BMC's state directory) puts the file into it over QMP ``blockdev-change-medium`` while the VM runs,
  and into its definition for the next start; ``EjectMedia`` ejects it. Only ``Cd`` is offered.

One emulator process serves every VM of a lab (systems by UUID; a name redirects to the UUID): a
process per VM would cost its whole RSS per VM (73 MB measured for the lab's process, sushy-tools and
bootforge's QMP code loaded) for the same answers, while a VM more in one process costs a state file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import logging
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bootforge.drivers import base
from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.base import Task
from bootforge.drivers.qemu import QemuManagement, QemuPower, qmp_session
from bootforge.errors import BootforgeError, InvalidInput

__all__ = [
    "BmcConfig",
    "QmpSystemsDriver",
    "SystemConfig",
    "VmSystem",
    "derived_definition",
    "main",
    "make_htpasswd",
    "make_tls",
    "system_uuid",
]

LOG = logging.getLogger("bootforge.lab.redfish_bmc")
USERNAME = "admin"
CD_ID = "bmc-cd"  # qdev id of the cdrom this module adds to a VM without one
# Redfish BootSourceOverrideTarget <-> the qemu driver's boot device kinds.
TARGETS = {"Pxe": "pxe", "Hdd": "disk", "Cd": "cdrom"}
KINDS = {kind: target for target, kind in TARGETS.items()}
MODES = {"UEFI": "uefi", "Legacy": "bios"}
T = TypeVar("T")


class SystemConfig(BaseModel):
    """One VM behind the BMC."""

    model_config = ConfigDict(extra="forbid")

    name: str
    uuid: str
    definition: Path  # the lab's VM definition file (bootforge.drivers.qemu_machine.VmDefinition)
    qmp_socket: Path
    state_dir: Path  # this BMC's files for the VM: its state, the derived definition


class BmcConfig(BaseModel):
    """What the launcher reads (JSON, written by the lab)."""

    model_config = ConfigDict(extra="forbid")

    address: str
    port: int = Field(ge=1, le=65535)
    cert: Path
    key: Path
    htpasswd: Path
    state_dir: Path  # sushy-tools' own state (virtual media) and downloaded images
    graceful_timeout: float = 120.0
    systems: list[SystemConfig]


def system_uuid(definition: Path) -> str:
    """A stable UUID for a VM (also given to QEMU, so the guest's SMBIOS UUID is the Redfish one)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bootforge-lab:{definition.resolve()}"))


def make_htpasswd(path: Path, password: str, username: str = USERNAME) -> None:
    """A bcrypt htpasswd, the only kind sushy-tools reads; cost 8 (it checks it on every request)."""
    import bcrypt

    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode()
    path.write_text(f"{username}:{digest}\n")
    path.chmod(0o600)


def make_tls(directory: Path, address: str, days: int = 365) -> tuple[Path, Path]:
    """A self-signed certificate for `address` (its own CA: clients verify with the cert file itself).

    Returns (cert, key) paths; the key is readable by root only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bootforge lab BMC {address}")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(x509), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "bmc-cert.pem", directory / "bmc-key.pem"
    key_path.write_bytes(b"")
    key_path.chmod(0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _ca_key_usage(x509: Any) -> Any:
    """Signs certificates (it is its own CA) and TLS handshakes; nothing else."""
    off = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    flags = dict.fromkeys(off, False) | {"encipher_only": False, "decipher_only": False}
    return x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **flags)


def derived_definition(
    base_defn: vm.VmDefinition,
    system: SystemConfig,
    boot_mode: str,
    image: str | None,
    secure_boot: bool | None = None,
) -> tuple[dict[str, Any], str]:
    """The definition the BMC starts the VM from, and the qdev id of its cdrom.

    The lab's definition plus: the chosen firmware (with secure_boot: OVMF with Microsoft's keys,
    SMM on, TCG; None keeps the definition's), the system UUID for SMBIOS, and a cdrom (the
    definition's own if it has one, else an empty IDE one) holding `image` when media is inserted.
    Paths are absolute: the derived file lives in another directory than the lab's.
    """
    disks = [d.model_copy() for d in base_defn.disks]
    extra = [*base_defn.extra_args, "-uuid", system.uuid]
    cd_index = next((i for i, d in enumerate(disks) if d.media == "cdrom"), None)
    if cd_index is not None:
        cd_id = f"cd{cd_index}"  # bootforge.drivers.qemu_machine names a definition's cdrom cd<index>
        if image is not None:
            disks[cd_index] = disks[cd_index].model_copy(update={"path": Path(image), "format": "raw"})
    else:
        cd_id = CD_ID
        drive = f"if=none,id={CD_ID}-drive,media=cdrom,readonly=on"
        if image is not None:
            drive += f",file={image},format=raw"
        extra += ["-drive", drive, "-device", f"ide-cd,drive={CD_ID}-drive,id={CD_ID}"]
    update: dict[str, Any] = {"boot_mode": boot_mode, "disks": disks, "extra_args": extra}
    if secure_boot is not None and secure_boot != base_defn.secure_boot:
        update["secure_boot"] = secure_boot
        # Its own NVRAM: the variable store is copied from the chosen build's template once, and the
        # lab's copy (made from the other template) must not be reused: no Microsoft keys in it.
        update["state_dir"] = system.state_dir.resolve() / ("nvram-ms" if secure_boot else "nvram")
        if secure_boot:
            # The SMM build needs q35 with SMM, which this host's KVM lacks: TCG (as lab uefi-sb).
            update |= {"machine": _with_smm(base_defn.machine), "accel": "tcg"}
    defn = base_defn.model_copy(update=update)
    return defn.model_dump(mode="json"), cd_id


def _with_smm(machine: str) -> str:
    kind, _, options = machine.partition(",")
    kept = [o for o in options.split(",") if o and not o.startswith("smm=")]
    return ",".join([kind, *kept, "smm=on"])


class _VmNode:
    """The part of a node the qemu driver reads: driver_info, and driver_internal_info (boot state)."""

    def __init__(self, driver_info: dict[str, Any], internal: dict[str, Any]) -> None:
        self.driver_info = driver_info
        self.driver_internal_info = internal


class _VmTask:
    """What QemuPower and QemuManagement use of a conductor task, for one VM behind this BMC."""

    def __init__(self, node: _VmNode, name: str) -> None:
        self.node = node
        self.name = name

    async def get_ports(self) -> list[Any]:
        # A BMC does not know which NIC bootforge enrolled as the PXE port: boot device pxe keeps
        # the VM's own NIC order, as a real BMC's firmware does.
        return []

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        LOG.log(logging.WARNING if severity == "warning" else logging.INFO, "%s: %s", self.name, message)


class VmSystem:
    """One VM as a Redfish ComputerSystem: its state file, a lock, and the qemu driver acting on it.

    Every operation holds the VM's lock (a QMP socket serves one client at a time, and Flask serves
    requests in threads) and runs the qemu driver's coroutines on a loop of its own.
    """

    def __init__(self, config: SystemConfig, qmp_timeout: float = 10.0) -> None:
        self.config = config
        self.base = vm.load_definition(config.definition)
        self.lock = threading.RLock()
        self._resets = 0
        self.power = QemuPower(qmp_timeout=qmp_timeout)
        self.management = QemuManagement(qmp_timeout=qmp_timeout)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = self._load()

    # --- state kept across BMC restarts --------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.config.state_dir / "state.json"

    @property
    def _definition_file(self) -> Path:
        return self.config.state_dir / "vm.json"

    def _load(self) -> dict[str, Any]:
        try:
            raw = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            raw = {}
        return {
            "internal": raw.get("internal", {}),  # the qemu driver's driver_internal_info
            "boot_mode": raw.get("boot_mode", self.base.boot_mode),
            "started_mode": raw.get("started_mode"),  # the firmware the running process has
            "image": raw.get("image"),
            "write_protected": raw.get("write_protected", True),
            "http_boot_uri": raw.get("http_boot_uri"),
            "secure_boot": raw.get("secure_boot", self.base.secure_boot),
            "started_secure": raw.get("started_secure"),  # the OVMF build the running process has
        }

    def _save(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self._state_file)

    def _task(self) -> _VmTask:
        info = {"qemu_qmp_socket": str(self.config.qmp_socket), "qemu_command": str(self._definition_file)}
        return _VmTask(_VmNode(info, dict(self.state["internal"])), self.config.name)

    def _run(self, work: Callable[[Task], Awaitable[T]]) -> T:
        """Run a qemu driver call for this VM; keep the boot state it changed; errors as FishyError."""
        from sushy_tools import error  # type: ignore[import-untyped]

        task = self._task()

        async def call() -> T:
            return await work(cast(Task, task))

        with self.lock:
            try:
                result = asyncio.run(call())
            except InvalidInput as e:
                raise error.BadRequest(f"{self.config.name}: {e.message}") from None
            except BootforgeError as e:
                raise error.FishyError(f"{self.config.name}: {e.message}", code=500) from None
            self.state["internal"] = task.node.driver_internal_info
            self._save()
            return result

    def _write_definition(self) -> None:
        content, _ = self._derived()
        self._definition_file.write_text(json.dumps(content, indent=2))

    def _derived(self) -> tuple[dict[str, Any], str]:
        return derived_definition(
            self.base,
            self.config,
            self.state["boot_mode"],
            self.state["image"],
            bool(self.state["secure_boot"]) and self.state["boot_mode"] == "uefi",
        )

    # --- power ----------------------------------------------------------------------------------

    def power_state(self) -> str:
        state = self._run(lambda t: self.power.get_power_state(t))
        return "On" if state == base.POWER_ON else "Off"

    def reset(self, reset_type: str, graceful_timeout: float) -> None:
        from sushy_tools import error

        with self.lock:
            self._resets += 1  # a pending GracefulRestart gives way to any later reset
            on = self.power_state() == "On"
            if reset_type in ("On", "ForceOn"):
                if not on:
                    self._power_on()
            elif reset_type == "ForceOff":
                self._run(lambda t: self.power.set_power_state(t, base.POWER_OFF))
            elif reset_type == "GracefulShutdown":
                if on:
                    self._qmp("system_powerdown")
            elif reset_type == "ForceRestart":
                if on and not self._cold_restart_needed():
                    self._run(lambda t: self.power.reboot(t))
                else:
                    if on:
                        self._run(lambda t: self.power.set_power_state(t, base.POWER_OFF))
                    self._power_on()
            elif reset_type == "GracefulRestart":
                if not on:
                    raise error.Conflict(f"{self.config.name} is off: GracefulRestart needs it on")
                self._qmp("system_powerdown")
                args = (graceful_timeout, self._resets)
                threading.Thread(target=self._on_when_off, args=args, daemon=True).start()
            elif reset_type == "Nmi":
                if not on:
                    raise error.Conflict(f"{self.config.name} is off: no NMI to inject")
                self._qmp("inject-nmi")
            else:
                raise error.BadRequest(f"unsupported ResetType {reset_type!r}")

    def _cold_restart_needed(self) -> bool:
        """A reset within the running process would not boot what was asked.

        A new firmware needs a new process. A one-time boot device does too: on a *running* VM the
        firmware read the boot order after the qemu driver had already put the previous order back
        (measured: SeaBIOS booted the NIC, not the disk asked for once), while a VM started paused
        boots the one-time device.
        """
        if self.state["started_mode"] not in (None, self.state["boot_mode"]):
            return True
        if self.state["started_secure"] not in (None, self.state["secure_boot"]):
            return True  # another OVMF build: a new process
        return self._run(lambda t: self.management.get_boot_device(t)).get("persistent") is False

    def _power_on(self) -> None:
        self._write_definition()
        self._run(lambda t: self.power.set_power_state(t, base.POWER_ON))
        self.state["started_mode"] = self.state["boot_mode"]
        self.state["started_secure"] = self.state["secure_boot"]
        self._save()

    def _on_when_off(self, timeout: float, reset: int) -> None:
        """After GracefulRestart: power on once the guest has shut down, unless it ignores the button
        or another reset (a ForceOff, say) came in meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with self.lock:
                    if self._resets != reset:
                        return
                    if self.power_state() == "Off":
                        self._power_on()
                        return
            except Exception as e:  # a thread of its own: nobody else would see the failure
                LOG.error("%s: GracefulRestart could not power on again: %s", self.config.name, e)
                return
        LOG.warning("%s: the guest ignored GracefulRestart for %.0f s", self.config.name, timeout)

    def _qmp(self, command: str, args: Mapping[str, object] | None = None) -> Any:
        async def run(_: Task) -> Any:
            async with qmp_session(self.config.qmp_socket) as s:
                return await s.run(command, args)

        return self._run(run)

    # --- boot -----------------------------------------------------------------------------------

    def boot_target(self) -> str:
        got = self._run(lambda t: self.management.get_boot_device(t))
        kind = got.get("boot_device")
        # Redfish's "None": no override, the firmware's own order.
        return KINDS.get(kind, "None") if isinstance(kind, str) else "None"

    def set_boot_target(self, target: str, once: bool) -> None:
        from sushy_tools import error

        if target == "None":
            with self.lock:
                self.state["internal"] = {}  # only the qemu driver's boot state lives there
                self._save()
            return
        kind = TARGETS.get(target)
        if kind is None:
            raise error.BadRequest(
                f"unsupported BootSourceOverrideTarget {target!r}: use Pxe, Hdd, Cd or None"
            )
        self._run(lambda t: self.management.set_boot_device(t, kind, persistent=not once))

    def http_boot_uri(self) -> str:
        return str(self.state.get("http_boot_uri") or "")

    def set_http_boot_uri(self, uri: str) -> None:
        with self.lock:
            self.state["http_boot_uri"] = uri
            self._save()

    def boot_mode(self) -> str:
        return "UEFI" if self.state["boot_mode"] == "uefi" else "Legacy"

    def set_boot_mode(self, mode: str) -> None:
        from sushy_tools import error

        firmware = MODES.get(mode)
        if firmware is None:
            raise error.BadRequest(f"unsupported BootSourceOverrideMode {mode!r}: use UEFI or Legacy")
        if firmware == "uefi":
            try:
                vm.find_ovmf()
            except vm.QemuError as e:
                raise error.BadRequest(str(e)) from None
        with self.lock:
            self.state["boot_mode"] = firmware
            self._save()

    def secure_boot(self) -> bool:
        return bool(self.state["secure_boot"])

    def set_secure_boot(self, enabled: bool) -> None:
        from sushy_tools import error

        if not isinstance(enabled, bool):
            raise error.BadRequest("SecureBootEnable must be true or false")
        with self.lock:
            if enabled:
                if self.state["boot_mode"] != "uefi" or self.base.arch != "x86_64":
                    raise error.BadRequest(
                        f"{self.config.name}: Secure Boot needs BootSourceOverrideMode UEFI on an x86_64 VM"
                    )
                try:
                    vm.find_ovmf(vm.OVMF_SECURE_BOOT_CANDIDATES)
                except vm.QemuError as e:
                    raise error.BadRequest(f"{self.config.name}: {e}") from None
            self.state["secure_boot"] = enabled
            self._save()
            # The next power-on (or a cold ForceRestart) starts the other OVMF build.
            self._write_definition()

    # --- virtual media --------------------------------------------------------------------------

    def media(self) -> tuple[str | None, bool, bool]:
        image = self.state["image"]
        return image, bool(self.state["write_protected"]), image is not None

    def set_media(self, image: str | None, write_protected: bool) -> None:
        with self.lock:
            self.state["image"] = image
            self.state["write_protected"] = write_protected
            self._save()
            self._write_definition()
            if self.power_state() != "On":
                return  # in the definition: the next power-on starts with it
            _, cd_id = self._derived()
            if image is None:
                self._qmp("eject", {"id": cd_id, "force": True})
            else:
                args = {"id": cd_id, "filename": image, "format": "raw", "read-only-mode": "read-only"}
                self._qmp("blockdev-change-medium", args)

    # --- facts -----------------------------------------------------------------------------------

    def nics(self) -> list[dict[str, str]]:
        return [{"id": n.mac, "mac": n.mac} for n in self.base.nics]


def _override_enabled() -> str | None:
    """BootSourceOverrideEnabled of the PATCH being served (sushy-tools does not pass it on)."""
    import flask

    if not flask.has_request_context():
        return None
    body = flask.request.get_json(silent=True)
    boot = body.get("Boot") if isinstance(body, dict) else None
    enabled = boot.get("BootSourceOverrideEnabled") if isinstance(boot, dict) else None
    return enabled if isinstance(enabled, str) else None


def _request_identity() -> str:
    import flask

    identity = (flask.request.view_args or {}).get("identity") if flask.has_request_context() else None
    return str(identity or "")


def _systems_driver_base() -> type[Any]:
    from sushy_tools.emulator.resources.systems.base import (  # type: ignore[import-untyped]
        AbstractSystemsDriver,
    )

    return cast(type[Any], AbstractSystemsDriver)


class QmpSystemsDriver(_systems_driver_base()):  # type: ignore[misc]
    """sushy-tools systems driver over the lab's VMs (see the module docstring)."""

    def __init__(self, systems: list[VmSystem], graceful_timeout: float = 120.0) -> None:
        self._by_uuid = {s.config.uuid: s for s in systems}
        self._by_name = {s.config.name: s.config.uuid for s in systems}
        self._graceful_timeout = graceful_timeout

    def _get(self, identity: str) -> VmSystem:
        from sushy_tools import error

        found = self._by_uuid.get(identity)
        if found is not None:
            return found
        if identity in self._by_name:
            raise error.AliasAccessError(self._by_name[identity])  # sushy-tools redirects to the UUID
        raise error.NotFound(f"no system {identity}")

    @property
    def driver(self) -> str:
        return "<bootforge-qmp>"

    @property
    def systems(self) -> list[str]:
        return list(self._by_uuid)

    def uuid(self, identity: str) -> str:
        if identity in self._by_name:
            return self._by_name[identity]
        return self._get(identity).config.uuid

    def name(self, identity: str) -> str:
        if identity in self._by_name:
            return identity
        return self._get(identity).config.name

    def get_power_state(self, identity: str) -> str:
        return self._get(identity).power_state()

    def set_power_state(self, identity: str, state: str) -> None:
        self._get(identity).reset(state, self._graceful_timeout)

    def get_boot_device(self, identity: str) -> str:
        return self._get(identity).boot_target()

    def set_boot_device(self, identity: str, boot_source: str) -> None:
        self._get(identity).set_boot_target(boot_source, once=_override_enabled() == "Once")

    def get_boot_mode(self, identity: str) -> str:
        return self._get(identity).boot_mode()

    def set_boot_mode(self, identity: str, boot_mode: str) -> None:
        self._get(identity).set_boot_mode(boot_mode)

    def get_http_boot_uri(self, identity: str) -> str:
        return self._get(identity).http_boot_uri()

    def set_http_boot_uri(self, uri: str) -> None:
        # sushy-tools calls this after it attached the HttpBootUri image as a CD, without the system:
        # it is the one in the request's URL.
        self._get(_request_identity()).set_http_boot_uri(uri)

    def get_secure_boot(self, identity: str) -> bool:
        return self._get(identity).secure_boot()

    def set_secure_boot(self, identity: str, secure: bool) -> None:
        self._get(identity).set_secure_boot(secure)

    def get_total_memory(self, identity: str) -> float:
        return self._get(identity).base.memory_mib / 1024

    def get_total_cpus(self, identity: str) -> int:
        return self._get(identity).base.cpus

    def get_nics(self, identity: str) -> list[dict[str, str]]:
        return self._get(identity).nics()

    def get_boot_image(self, identity: str, device: str) -> tuple[str | None, bool, bool]:
        self._check_device(device)
        return self._get(identity).media()

    def set_boot_image(
        self, identity: str, device: str, boot_image: str | None = None, write_protected: bool = True
    ) -> None:
        self._check_device(device)
        self._get(identity).set_media(boot_image, write_protected)

    @staticmethod
    def _check_device(device: str) -> None:
        from sushy_tools import error

        if device != "Cd":
            raise error.NotFound(f"no virtual media device {device!r}: lab VMs have Cd only")


VMEDIA_DEVICES = {"Cd": {"Name": "Virtual CD", "MediaTypes": ["CD", "DVD"]}}


def build_app(config: BmcConfig) -> Any:
    """sushy-tools' Flask app, configured from `config`, with the QMP systems driver in it."""
    from sushy_tools.emulator import main as sushy  # type: ignore[import-untyped]

    config.state_dir.mkdir(parents=True, exist_ok=True)
    media = config.state_dir / "media"
    media.mkdir(exist_ok=True)
    # sushy-tools downloads InsertMedia images with tempfile: into this BMC's directory, not /tmp.
    tempfile.tempdir = str(media)
    app = sushy.app
    app.configure(
        extra_config={
            "SUSHY_EMULATOR_AUTH_FILE": str(config.htpasswd),
            "SUSHY_EMULATOR_STATE_DIR": str(config.state_dir),
            "SUSHY_EMULATOR_VMEDIA_DEVICES": VMEDIA_DEVICES,
            "SUSHY_EMULATOR_VMEDIA_VERIFY_SSL": False,
        }
    )
    driver = QmpSystemsDriver([VmSystem(s) for s in config.systems], config.graceful_timeout)
    # sushy-tools picks its systems driver from configuration flags (libvirt, nova, ironic, fake) in
    # a memoized property of its app class, and has no hook to register another one.
    sushy.Application.systems = property(lambda self: driver)
    return app


def load_config(path: Path) -> BmcConfig:
    try:
        return BmcConfig.model_validate_json(path.read_text())
    except OSError as e:
        raise SystemExit(f"redfish-bmc: cannot read {path}: {e.strerror}") from None
    except ValidationError as e:
        raise SystemExit(f"redfish-bmc: invalid config {path}: {e}") from None


def serve(config: BmcConfig, ready: Callable[[str], None] = print) -> None:
    from werkzeug.serving import make_server

    app = build_app(config)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(config.cert), str(config.key))
    server = make_server(config.address, config.port, app, threaded=True, ssl_context=context)
    host = f"[{config.address}]" if ":" in config.address else config.address
    ready(f"redfish-bmc: {len(config.systems)} system(s) on https://{host}:{config.port}")
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        "python -m bootforge.lab.redfish_bmc", description="Redfish BMC (sushy-tools) for lab VMs over QMP"
    )
    parser.add_argument("--config", type=Path, required=True, help="JSON file (BmcConfig)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = load_config(args.config)
    serve(config, ready=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
