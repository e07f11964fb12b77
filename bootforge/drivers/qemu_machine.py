"""QEMU VM processes: VM definition files, argv building, firmware discovery, accelerator choice.

Part of the `qemu` hardware type (which starts a stopped VM on power on); `bootforge lab` uses it
too, so the arrow points lab -> drivers (drivers never import the lab).

A VM definition is a small JSON file (:class:`VmDefinition`) from which bootforge builds the QEMU argv,
so an operator describes *what* the VM is (memory, disks, NICs, firmware) and bootforge adds *how* it
is controlled (QMP socket, pid file, daemonizing). Rules the argv follows, and why:

* The VM starts paused (``-S``): the driver sets the boot order over QMP and resets before ``cont``,
  because the firmware reads the boot order QEMU computed at the last reset (see drivers/qemu.py).
* ``-daemonize``: the VM outlives the conductor that started it; a conductor restart must not power
  off a fleet. ``-nographic`` cannot be combined with it, so the display is ``none`` and the serial
  port goes to an append-mode log file (the console history of every boot of the node).
* BIOS mode adds SeaBIOS's serial console (fw_cfg ``etc/sercon-port``) so SeaBIOS and iPXE ROM messages
  reach the serial log; OVMF writes to the serial port by itself.
* UEFI mode gets its own copy of the OVMF variable store, kept across power cycles, as on real hardware.
* The accelerator is chosen by :func:`detect_accel`: KVM only where it can really run firmware.
* ``arch = "aarch64"``: qemu-system-aarch64's ``virt`` machine with AAVMF (edk2 for arm64) in two
  pflash devices, always UEFI; it has no IDE, so a CD drive hangs off virtio-scsi. KVM is never used
  for it on an x86 host (detect_accel answers for the host's own CPU): TCG.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DEFAULT_BINARY",
    "Disk",
    "Firmware",
    "Nic",
    "QemuError",
    "VmDefinition",
    "build_argv",
    "control_args",
    "detect_accel",
    "find_ovmf",
    "firmware_for",
    "kill_pid",
    "load_definition",
    "pid_alive",
    "prepare_state_files",
    "read_pid",
    "spawn_daemon",
]

DEFAULT_BINARY = "qemu-system-x86_64"
SERCON_PORT = 0x3F8  # COM1: SeaBIOS mirrors its text console there when etc/sercon-port names it

# (code, variable store template) pairs, most preferred first: Debian 4M, Debian 2M, Fedora/RHEL, Arch.
OVMF_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
)
# Secure Boot enforced: the SMM build with Microsoft's keys enrolled (Debian's ovmf package), so
# only Microsoft-signed loaders (shim) run; it needs SMM (TCG: KVM here lacks it) and a secure pflash.
OVMF_SECURE_BOOT_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
)
# arm64 (qemu-system-aarch64 -M virt): Debian's qemu-efi-aarch64, then Fedora's edk2-aarch64.
AAVMF_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
    ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
)
# Secure Boot enforced on arm64: the same code with Microsoft's keys enrolled in the variable store
# (no SMM on arm64: the store is not protected from the OS, which a lab does not need).
AAVMF_SECURE_BOOT_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("/usr/share/AAVMF/AAVMF_CODE.ms.fd", "/usr/share/AAVMF/AAVMF_VARS.ms.fd"),
)
AARCH64_BINARY = "qemu-system-aarch64"


class QemuError(RuntimeError):
    """A VM definition is unusable, or the QEMU process could not be started or stopped."""


class Disk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    format: Literal["raw", "qcow2"] = "raw"
    media: Literal["disk", "cdrom"] = "disk"


class Nic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mac: str = Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
    # A tap device (in `netns` if set). None leaves the NIC on a hub of its own: no network at all.
    tap: str | None = None
    model: str = "virtio-net-pci"
    # None keeps QEMU's iPXE option ROM; "" removes it (OVMF then uses its own PXE / HTTP boot).
    romfile: str | None = None


class VmDefinition(BaseModel):
    """What a VM is. Paths are taken as given; relative ones are relative to the definition file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    memory_mib: int = Field(default=256, ge=64)
    cpus: int = Field(default=1, ge=1)
    machine: str = "q35"
    boot_mode: Literal["bios", "uefi"] = "bios"
    accel: Literal["auto", "tcg", "kvm"] = "auto"
    disks: list[Disk] = []
    # An empty CD drive (id "cdrom"): virtual-media boot inserts its ISO over QMP.
    cdrom: bool = False
    nics: list[Nic] = []
    serial_log: Path | None = None
    # Where the VM's own files live (OVMF variable store); defaults to the definition's directory.
    state_dir: Path | None = None
    netns: str | None = None
    qemu_binary: str = DEFAULT_BINARY
    extra_args: list[str] = []
    # UEFI with Secure Boot enforced (OVMF_SECURE_BOOT_CANDIDATES; machine should say smm=on).
    secure_boot: bool = False
    # The guest CPU architecture: aarch64 needs qemu_binary qemu-system-aarch64, machine "virt",
    # boot_mode "uefi" (AAVMF), and a cpu_model (the virt machine's default is a 32-bit core).
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    # -cpu; None: QEMU's default for the machine.
    cpu_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")


def load_definition(path: Path, boot_mode: str | None = None) -> VmDefinition:
    """Read a VM definition file; `boot_mode` (from driver_info) overrides the file's."""
    try:
        raw = json.loads(path.read_text())
        if boot_mode is not None:
            raw["boot_mode"] = boot_mode
        defn = VmDefinition.model_validate(raw)
    except OSError as e:
        raise QemuError(f"cannot read VM definition {path}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise QemuError(f"invalid VM definition {path}: {_short(e)}") from None
    return _resolve_paths(defn, path.parent)


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
    return str(e)


def _resolve_paths(defn: VmDefinition, base: Path) -> VmDefinition:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    return defn.model_copy(
        update={
            "disks": [d.model_copy(update={"path": absolute(d.path)}) for d in defn.disks],
            "serial_log": absolute(defn.serial_log) if defn.serial_log else None,
            "state_dir": absolute(defn.state_dir) if defn.state_dir else base,
        }
    )


def detect_accel(sys_root: Path = Path("/")) -> str:
    """Return "kvm" where KVM can run firmware and kernels, else "tcg".

    A nested PVM host (module kvm_pvm) offers a /dev/kvm that opens fine but fails inside SeaBIOS,
    OVMF and Linux with emulation errors, and a CPU without vmx/svm has no usable KVM at all.
    """
    if (sys_root / "sys/module/kvm_pvm").exists():
        return "tcg"
    kvm = sys_root / "dev/kvm"
    if not kvm.exists() or not os.access(kvm, os.R_OK | os.W_OK):
        return "tcg"
    try:
        cpuinfo = (sys_root / "proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return "kvm" if flags & {"vmx", "svm"} else "tcg"


@dataclass(frozen=True)
class Firmware:
    """OVMF code and variable-store template; None for both means SeaBIOS (QEMU's default)."""

    code: Path | None = None
    vars_template: Path | None = None


def find_ovmf(candidates: Sequence[tuple[str, str]] = OVMF_CANDIDATES) -> Firmware:
    for code, template in candidates:
        if Path(code).is_file() and Path(template).is_file():
            return Firmware(Path(code), Path(template))
    if candidates and candidates[0][0].startswith("/usr/share/AAVMF/"):
        raise QemuError(
            "arm64 UEFI boot needs AAVMF firmware; none found (Debian: apt-get install qemu-efi-aarch64)"
        )
    raise QemuError("UEFI boot needs OVMF firmware; none found (Debian: apt-get install ovmf)")


def firmware_for(defn: VmDefinition) -> Firmware:
    """The firmware a definition boots: SeaBIOS (nothing to find), OVMF or AAVMF, with Secure Boot
    keys when it asks for them."""
    if defn.arch == "aarch64":
        return find_ovmf(AAVMF_SECURE_BOOT_CANDIDATES if defn.secure_boot else AAVMF_CANDIDATES)
    if defn.boot_mode != "uefi":
        return Firmware()
    return find_ovmf(OVMF_SECURE_BOOT_CANDIDATES if defn.secure_boot else OVMF_CANDIDATES)


def vars_path(defn: VmDefinition) -> Path:
    return _state_dir(defn) / f"{defn.name}-OVMF_VARS.fd"


def sercon_path(defn: VmDefinition) -> Path:
    return _state_dir(defn) / "sercon-port.bin"


def _state_dir(defn: VmDefinition) -> Path:
    if defn.state_dir is None:
        raise QemuError(f"VM definition {defn.name} has no state_dir")
    return defn.state_dir


def prepare_state_files(defn: VmDefinition, firmware: Firmware) -> None:
    """Create the VM's own files once: its OVMF variable store, SeaBIOS's serial-console setting."""
    _state_dir(defn).mkdir(parents=True, exist_ok=True)
    if defn.boot_mode == "uefi":
        if firmware.vars_template is None:
            raise QemuError("UEFI boot mode needs an OVMF variable store template")
        target = vars_path(defn)
        if not target.exists():  # the store is the VM's NVRAM: never reset it behind the operator's back
            shutil.copyfile(firmware.vars_template, target)
    else:
        sercon_path(defn).write_bytes(SERCON_PORT.to_bytes(2, "little"))


def build_argv(defn: VmDefinition, accel: str, firmware: Firmware) -> list[str]:
    """The QEMU argv for a definition (no control arguments: see control_args)."""
    arm = defn.arch == "aarch64"
    if arm and defn.boot_mode != "uefi":
        raise QemuError(f'VM definition {defn.name}: an aarch64 VM boots UEFI only (boot_mode "uefi")')
    if arm and accel == "kvm" and platform.machine() != "aarch64":
        accel = "tcg"  # the host's KVM runs its own CPU architecture, not arm64
    prefix = ["ip", "netns", "exec", defn.netns] if defn.netns else []
    argv = [
        *prefix,
        defn.qemu_binary,
        "-name", defn.name,
        "-machine", defn.machine,
        "-accel", accel,
        "-m", str(defn.memory_mib),
        "-smp", str(defn.cpus),
        "-display", "none",
    ]  # fmt: skip
    if defn.cpu_model:
        argv += ["-cpu", defn.cpu_model]
    argv += _firmware_args(defn, firmware)
    if defn.serial_log is not None:
        chardev = f"file,id=serial0,path={defn.serial_log},append=on"
        argv += ["-chardev", chardev, "-serial", "chardev:serial0"]
    if arm and (defn.cdrom or any(d.media == "cdrom" for d in defn.disks)):
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]  # virt has no IDE: CDs are SCSI
    cd_device = "scsi-cd" if arm else "ide-cd"
    for i, disk in enumerate(defn.disks):
        argv += _disk_args(i, disk, cd_device)
    if defn.cdrom:
        drive = "if=none,id=cdrom-drive,media=cdrom,readonly=on"
        argv += ["-drive", drive, "-device", f"{cd_device},drive=cdrom-drive,id=cdrom"]
    for i, nic in enumerate(defn.nics):
        argv += _nic_args(i, nic)
    return argv + list(defn.extra_args)


def _firmware_args(defn: VmDefinition, firmware: Firmware) -> list[str]:
    if defn.boot_mode == "bios":
        return ["-fw_cfg", f"name=etc/sercon-port,file={sercon_path(defn)}"]
    if firmware.code is None:
        raise QemuError("UEFI boot mode needs OVMF firmware code")
    # SMM's secure flash is an x86 notion; arm64's Secure Boot keys are in the variable store alone.
    smm = defn.secure_boot and defn.arch == "x86_64"
    secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if smm else []
    return [
        *secure,
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_path(defn)}",
    ]  # fmt: skip


def _disk_args(i: int, disk: Disk, cd_device: str = "ide-cd") -> list[str]:
    # Device ids make the QOM paths (/machine/peripheral/disk0) readable in logs and errors.
    if disk.media == "cdrom":
        dev_id = f"cd{i}"
        drive = f"file={disk.path},format={disk.format},if=none,id={dev_id}-drive,media=cdrom,readonly=on"
        return ["-drive", drive, "-device", f"{cd_device},drive={dev_id}-drive,id={dev_id}"]
    dev_id = f"disk{i}"
    drive = f"file={disk.path},format={disk.format},if=none,id={dev_id}-drive"
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive={dev_id}-drive,id={dev_id}"]


def _nic_args(i: int, nic: Nic) -> list[str]:
    if nic.tap:
        netdev = f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no"
    else:
        netdev = f"hubport,id=net{i},hubid={100 + i}"
    device = f"{nic.model},netdev=net{i},mac={nic.mac},id=nic{i}"
    if nic.romfile is not None:
        device += f",romfile={nic.romfile}"
    return ["-netdev", netdev, "-device", device]


def control_args(qmp_socket: Path, pid_file: Path) -> list[str]:
    """What bootforge appends to every argv it starts: QMP, pid file, paused start, background."""
    return [
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-pidfile", str(pid_file),
        "-S",
        "-daemonize",
    ]  # fmt: skip


async def spawn_daemon(argv: Sequence[str], timeout: float) -> None:
    """Run a daemonizing QEMU argv; return once the VM is set up (its QMP socket exists).

    With -daemonize the first process exits only after QEMU has initialised, with a non-zero status
    and a message on stderr if anything in the argv was wrong.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        raise QemuError(f"cannot run {argv[0]}: {e.strerror}") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise QemuError(f"QEMU did not finish starting within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        detail = " | ".join(lines[-3:]) or f"exit status {proc.returncode}"
        raise QemuError(f"QEMU failed to start: {detail}")


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True if `pid` is a live QEMU process (a recycled pid of another program does not count)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"qemu" in cmdline.split(b"\0", 1)[0]


async def kill_pid(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: only used when QMP `quit` did not work."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if await wait_gone(pid, grace):
            return
    raise QemuError(f"QEMU process {pid} survived SIGKILL")


async def wait_gone(pid: int, timeout: float, interval: float = 0.1) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pid_alive(pid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True
