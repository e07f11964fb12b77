"""Driver interfaces: the small contracts a hardware type is composed of (Ironic's shape, async).

Every interface has `validate(task)`, which must be cheap: it runs inside API requests (node validate,
manage) and must not touch the BMC. Methods that change a machine are coroutines; drivers built on
blocking libraries (pyghmi) wrap them in `asyncio.to_thread`.

Steps: a method decorated with `@clean_step(priority=.., may_rerun=..)` or `@deploy_step(...)` is
collected when the class is defined (`__init_subclass__`). A step returns None when it is done, or `WAIT`
when the work continues outside the conductor (the ramdisk agent) and a callback will resume it.

Every step declares `may_rerun`: whether running it again from its start is safe after a conductor died
(or was taken over) while it was under way. The conductor persists "started" on the step's record
before running it; a node resumed with its step started but not finished re-runs a step that may run
again, and is failed with the reason when it may not (conductor/work.py). Only the part the conductor
runs counts: what a step hands to the agent (after `WAIT`) is not under way on the conductor.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar

if TYPE_CHECKING:
    import datetime as dt
    from pathlib import Path

    from bootforge.config import Settings
    from bootforge.db.models import Node, Port
    from bootforge.drivers.hardware import DriverSet
    from bootforge.drivers.storage import BootVolume

WAIT: Final = "wait"

POWER_ON: Final = "power on"
POWER_OFF: Final = "power off"
REBOOT: Final = "rebooting"
SOFT_POWER_OFF: Final = "soft power off"
SOFT_REBOOT: Final = "soft rebooting"
POWER_ERROR: Final = "error"

BOOT_DEVICES: Final = ("pxe", "disk", "cdrom", "bios", "safe", "wanboot")


def updated_internal(info: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """driver_internal_info with `values` applied: a None value removes its key. A new dict, since
    JSON columns track assignment, not changes made in place."""
    updated = dict(info)
    for key, value in values.items():
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated


@dataclass(frozen=True)
class NetworkBoot:
    """A sign that the machine booted from the network: DHCP offered it a boot file, it fetched over
    TFTP, or it fetched a loader or boot script over HTTP (netboot events marked `network_boot`)."""

    at: dt.datetime
    source: str  # "dhcp", "tftp", "http"
    text: str


class Task(Protocol):
    """What a driver sees of the node it works on; the conductor's task implements it."""

    @property
    def node(self) -> Node: ...

    # The node's other interfaces (a deploy interface boots the ramdisk through boot and power).
    @property
    def driver(self) -> DriverSet: ...

    @property
    def settings(self) -> Settings: ...

    def set_internal(self, **values: Any) -> None:
        """Update driver_internal_info; a None value removes the key."""
        ...

    async def agent_last_seen(self) -> dt.datetime | None:
        """When the agent of the node's current ramdisk boot last called, or None if it never did."""
        ...

    async def agent_address(self) -> str | None:
        """The address the agent of the node's current ramdisk boot looked up from, or None."""
        ...

    async def other_node(self, ident: str) -> Node | None:
        """Another node, by name or UUID, as last saved (read only, no lock), or None."""
        ...

    async def network_boots_since(self, since: dt.datetime) -> list[NetworkBoot]:
        """Signs on the node's timeline that it booted from the network since `since`, oldest first."""
        ...

    async def get_ports(self) -> list[Port]:
        """The node's ports (NICs), loaded on first use."""
        ...

    async def boot_volume(self) -> BootVolume | None:
        """The node's boot volume (its boot_index 0 volume target, opened), or None."""
        ...

    async def record(self, event_type: str, message: str, severity: str = "info") -> None: ...

    async def save(self) -> None: ...


StepResult = str | None
StepFn = Callable[..., Awaitable[StepResult]]


@dataclass(frozen=True)
class StepInfo:
    kind: str  # "clean" or "deploy"
    name: str
    priority: int
    # Safe to run again from its start when a conductor stopped in the middle of it (see above).
    may_rerun: bool
    abortable: bool = False
    argsinfo: dict[str, Any] = field(default_factory=dict)


F = TypeVar("F", bound=StepFn)


def _step(
    kind: str, priority: int, may_rerun: bool, abortable: bool, argsinfo: dict[str, Any] | None
) -> Callable[[F], F]:
    if not isinstance(may_rerun, bool):
        raise TypeError(f"{kind} step: may_rerun must be True or False, not {may_rerun!r}")

    def mark(fn: F) -> F:
        fn.__bootforge_step__ = StepInfo(  # type: ignore[attr-defined]
            kind, fn.__name__, priority, may_rerun, abortable, argsinfo or {}
        )
        return fn

    return mark


# `may_rerun` has no default: whoever writes a step says whether a second run is safe.
def clean_step(
    priority: int, *, may_rerun: bool, abortable: bool = False, argsinfo: dict[str, Any] | None = None
) -> Callable[[F], F]:
    return _step("clean", priority, may_rerun, abortable, argsinfo)


def deploy_step(
    priority: int, *, may_rerun: bool, argsinfo: dict[str, Any] | None = None
) -> Callable[[F], F]:
    return _step("deploy", priority, may_rerun, False, argsinfo)


class BaseInterface(abc.ABC):
    interface_type: ClassVar[str]
    # The name operators put in <type>_interface, e.g. "fake" or "ipmitool".
    name: ClassVar[str]
    _steps: ClassVar[dict[str, StepInfo]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        steps = dict(getattr(cls, "_steps", {}))
        for attr, value in vars(cls).items():
            info = getattr(value, "__bootforge_step__", None)
            if isinstance(info, StepInfo):
                steps[attr] = info
        cls._steps = steps

    def get_properties(self) -> dict[str, str]:
        """driver_info keys this interface reads, each with a description (shown by `driver properties`)."""
        return {}

    async def sweep(self) -> None:
        """Periodic: release what this interface keeps between operations and nobody used for a while
        (kept BMC sessions). Called by the conductor about once a minute."""
        return None

    async def close(self) -> None:
        """Conductor shutdown: release everything kept between operations (log out of BMCs)."""
        return None

    @abc.abstractmethod
    def validate(self, task: Task) -> None:
        """Raise InvalidInput if the node's configuration cannot work; never touch the hardware."""

    def steps(self, kind: str) -> list[StepInfo]:
        return [s for s in self._steps.values() if s.kind == kind]

    async def execute_step(self, task: Task, name: str, args: dict[str, Any]) -> StepResult:
        fn: StepFn = getattr(self, name)
        return await fn(task, **args)


class PowerInterface(BaseInterface):
    interface_type = "power"

    @abc.abstractmethod
    async def get_power_state(self, task: Task) -> str: ...

    @abc.abstractmethod
    async def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None: ...

    async def reboot(self, task: Task, timeout: float | None = None) -> None:
        await self.set_power_state(task, POWER_OFF, timeout)
        await self.set_power_state(task, POWER_ON, timeout)

    def get_supported_power_states(self, task: Task) -> list[str]:
        return [POWER_ON, POWER_OFF, REBOOT]


@dataclass
class BmcReport:
    """What a BMC says about itself, for `validate` and `bootforge node bmc`: read, never changed.

    None means "not known" (the BMC was not asked, or does not say); an empty list means "none".
    """

    reachable: bool
    # One line for the operator: "IPMI 2.0 at 10.0.0.5:623, cipher suite 17" or why it failed.
    detail: str
    power_state: str | None = None
    boot_devices: list[str] | None = None
    boot_modes: list[str] | None = None  # "bios", "uefi"
    virtual_media: list[str] | None = None  # media types a virtual-media boot can use: "cd", ...
    secure_boot: bool | None = None  # None: the BMC has no Secure Boot control
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ManagementInterface(BaseInterface):
    interface_type = "management"

    @abc.abstractmethod
    def get_supported_boot_devices(self, task: Task) -> list[str]: ...

    @abc.abstractmethod
    async def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None: ...

    @abc.abstractmethod
    async def get_boot_device(self, task: Task) -> dict[str, Any]:
        """Return {"boot_device": str | None, "persistent": bool | None}."""

    def get_supported_boot_modes(self, task: Task) -> list[str]:
        """Boot modes ("bios", "uefi") this interface can switch the machine to; [] if it cannot."""
        return []

    async def set_boot_mode(self, task: Task, mode: str) -> None:
        from bootforge.errors import InvalidInput

        raise InvalidInput(
            f"the {self.name} management interface cannot set the boot mode (asked: {mode})", "boot_mode"
        )

    async def get_boot_mode(self, task: Task) -> str | None:
        """The boot mode the machine will boot in, or None if the BMC does not say."""
        return None

    async def set_secure_boot_state(self, task: Task, enabled: bool) -> None:
        from bootforge.errors import InvalidInput

        raise InvalidInput(
            f"the {self.name} management interface cannot turn Secure Boot {'on' if enabled else 'off'}",
            "secure_boot",
        )

    async def get_secure_boot_state(self, task: Task) -> bool | None:
        return None

    async def bmc_report(self, task: Task) -> BmcReport:
        """Ask the BMC what it offers; a BMC that cannot be reached gives reachable=False, no exception.

        The default asks the power interface, which every hardware type has; drivers with more to say
        (Redfish: vendor, boot modes, virtual media, Secure Boot) override it.
        """
        try:
            state = await task.driver.power.get_power_state(task)
        except Exception as exc:
            return BmcReport(False, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
        return BmcReport(
            True,
            f"{self.name} answers",
            power_state=state,
            boot_devices=self.get_supported_boot_devices(task),
            boot_modes=self.get_supported_boot_modes(task),
        )


class BootInterface(BaseInterface):
    """How the node boots the bootforge ramdisk and, once deployed, its instance.

    The deploy, inspect and clean flows never pick a boot device themselves: they call
    `prepare_ramdisk` and then power the machine on (or reboot it), and `prepare_instance` before the
    power cycle onto the deployed OS. So a network-booting node (`pxe`, `ipxe`) and one booted from a
    virtual CD (`redfish-virtual-media`) go through the same steps.
    """

    interface_type = "boot"
    # True when bootforge's own DHCP / TFTP / HTTP boot servers answer this node's network boots with
    # the ramdisk; False (virtual media) makes them refuse it, so a stray network boot cannot race the
    # medium the interface inserted.
    netboot: ClassVar[bool] = False

    async def prepare_ramdisk(self, task: Task) -> None:
        """Make the node's next boot load the bootforge ramdisk (boot device, media). Lock held."""

    async def clean_up_ramdisk(self, task: Task) -> None:
        """Undo prepare_ramdisk once the ramdisk is no longer needed (eject media, ...)."""

    async def prepare_instance(self, task: Task) -> None:
        """Make the node boot the deployed instance at its next power on."""

    async def clean_up_instance(self, task: Task) -> None:
        """Undo prepare_instance."""


class DeployInterface(BaseInterface):
    interface_type = "deploy"
    # True for interfaces that write an OS image: before the first step the conductor resolves
    # instance_info's image (and config drive) into driver_internal_info["deploy_image"] (and
    # ["deploy_configdrive"]), so a bad image fails the deploy before the machine is touched.
    needs_image: ClassVar[bool] = False

    @abc.abstractmethod
    async def tear_down(self, task: Task) -> None:
        """Power the instance off and release what the deployment held."""

    async def take_over(self, task: Task) -> None:
        """Adopt an active node from a conductor that went away (rebuild boot files, etc.)."""

    async def tear_down_cleaning(self, task: Task) -> None:
        """After the last clean step: leave the machine as an available node should be."""


class InspectInterface(BaseInterface):
    interface_type = "inspect"

    @abc.abstractmethod
    async def inspect_hardware(self, task: Task) -> StepResult:
        """Fill the node's properties; return WAIT if results arrive later (agent callback)."""

    async def tear_down_inspection(self, task: Task) -> None:
        """After the inventory was stored (agent inspection): leave the machine as it should be."""


class RescueInterface(BaseInterface):
    interface_type = "rescue"

    @abc.abstractmethod
    async def rescue(self, task: Task) -> StepResult: ...

    @abc.abstractmethod
    async def unrescue(self, task: Task) -> None: ...


class _Simple(BaseInterface):
    """Interfaces bootforge lists for Ironic compatibility whose only contract is validate()."""

    def validate(self, task: Task) -> None:
        return None


def console_log_path(settings: Settings, node_uuid: str) -> Path:
    """Where a console interface that captures a machine's serial console appends what it reads."""
    return settings.state_dir / "console" / f"{node_uuid}.log"


class ConsoleInterface(_Simple):
    """A machine's serial console. Interfaces that capture it write to `console_log_path(task)`."""

    interface_type = "console"

    async def start_console(self, task: Task) -> None:
        from bootforge.errors import InvalidInput

        raise InvalidInput(f"the {self.name} console interface has no console to start", "console_enabled")

    async def stop_console(self, task: Task) -> None:
        return None

    async def get_console(self, task: Task) -> dict[str, Any]:
        """Ironic's console info: {"type": ..., "url": ...}, or {} when there is none."""
        return {}


class NetworkInterface(_Simple):
    interface_type = "network"


class StorageInterface(_Simple):
    interface_type = "storage"

    async def boot_volume(self, task: Task) -> BootVolume | None:
        """The volume the node boots from instead of a written image (drivers/storage.py), or None:
        the deploy writes the image to a local disk and the machine boots from it."""
        return None


class RaidInterface(_Simple):
    interface_type = "raid"


class BiosInterface(_Simple):
    interface_type = "bios"


class VendorInterface(_Simple):
    interface_type = "vendor"


class FirmwareInterface(_Simple):
    interface_type = "firmware"


class NoConsole(ConsoleInterface):
    name = "no-console"


class NoopNetwork(NetworkInterface):
    name = "noop"


class NoopStorage(StorageInterface):
    name = "noop"


class NoRaid(RaidInterface):
    name = "no-raid"


class NoBios(BiosInterface):
    name = "no-bios"


class NoVendor(VendorInterface):
    name = "no-vendor"


class NoFirmware(FirmwareInterface):
    name = "no-firmware"


class NoInspect(InspectInterface):
    name = "no-inspect"

    def validate(self, task: Task) -> None:
        return None

    async def inspect_hardware(self, task: Task) -> StepResult:
        from bootforge.errors import InvalidInput

        raise InvalidInput("inspection is not supported by this node's inspect interface 'no-inspect'")


class NoRescue(RescueInterface):
    name = "no-rescue"

    def validate(self, task: Task) -> None:
        from bootforge.errors import InvalidInput

        raise InvalidInput("rescue is not supported by this node's rescue interface 'no-rescue'")

    async def rescue(self, task: Task) -> StepResult:
        self.validate(task)
        return None

    async def unrescue(self, task: Task) -> None:
        self.validate(task)
