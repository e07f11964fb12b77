"""Hardware types: for each interface type, an ordered list of implementations; the first is the default.

A node names its hardware type in `driver`, and may pick another supported implementation per interface
(`power_interface`, ...). `Drivers.for_node()` composes the interfaces a node works with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bootforge.config import Settings
from bootforge.drivers import agent, base, burnin, fake, ipmi, qemu, redfish, rescue, storage, vmedia
from bootforge.errors import InvalidInput, NotFound
from bootforge.text import printable

log = logging.getLogger("bootforge.drivers")

INTERFACE_TYPES = (
    "bios",
    "boot",
    "console",
    "deploy",
    "firmware",
    "inspect",
    "management",
    "network",
    "power",
    "raid",
    "rescue",
    "storage",
    "vendor",
)

Factory = Callable[[Settings], base.BaseInterface]


@dataclass(frozen=True)
class HardwareType:
    name: str
    description: str
    # interface type -> ordered (name, factory); the first entry is the default.
    interfaces: dict[str, list[tuple[str, Factory]]]

    def supported(self, interface_type: str) -> list[str]:
        return [n for n, _ in self.interfaces[interface_type]]

    def default(self, interface_type: str) -> str:
        return self.interfaces[interface_type][0][0]


def plain(cls: type[base.BaseInterface]) -> tuple[str, Factory]:
    """An implementation that takes no settings, under its own name."""
    return (cls.name, lambda s: cls())


# What a hardware type gets for every interface it does not name: network boot of the bootforge
# ramdisk, the agent's deploy and inspection, and "none" for the rest. `power` and `management` have
# no default: they are what a hardware type is about.
GENERIC: dict[str, list[tuple[str, Factory]]] = {
    "bios": [plain(base.NoBios)],
    "boot": [("pxe", agent.PxeBoot), ("ipxe", agent.IpxeBoot)],
    "console": [plain(base.NoConsole)],
    # The agent's deploy and clean steps, with the burn-in clean steps (drivers/burnin.py).
    "deploy": [("direct", burnin.BurninAgentDeploy)],
    "firmware": [plain(base.NoFirmware)],
    "inspect": [("agent", agent.AgentInspect), plain(base.NoInspect)],
    "network": [plain(base.NoopNetwork)],
    "raid": [plain(base.NoRaid)],
    # no-rescue stays the default, as in Ironic: a rescue opens a login on the machine.
    "rescue": [plain(base.NoRescue), ("agent", rescue.AgentRescue)],
    "storage": [plain(base.NoopStorage), plain(storage.IscsiStorage)],
    "vendor": [plain(base.NoVendor)],
}


def hardware_type(name: str, description: str, **interfaces: list[tuple[str, Factory]]) -> HardwareType:
    """A hardware type that names only the interfaces it changes; the rest come from GENERIC."""
    unknown = set(interfaces) - set(INTERFACE_TYPES)
    if unknown:
        raise ValueError(f"hardware type {name}: unknown interface types {sorted(unknown)}")
    missing = {"power", "management"} - set(interfaces)
    if missing:
        raise ValueError(f"hardware type {name} must name its {' and '.join(sorted(missing))} interfaces")
    return HardwareType(name, description, {**GENERIC, **interfaces})


def _fake_hardware() -> HardwareType:
    def f(cls: type[Any]) -> tuple[str, Factory]:
        return ("fake", lambda s: cls(s.fake_delays))

    return hardware_type(
        "fake-hardware",
        "For tests and benchmarks only: remembers power and boot device, touches no machine.",
        bios=[f(fake.FakeBios), plain(base.NoBios)],
        # The agent's interfaces too: a test can run the real agent against a fake machine.
        boot=[f(fake.FakeBoot), ("pxe", agent.PxeBoot)],
        console=[f(fake.FakeConsole), plain(base.NoConsole)],
        deploy=[f(fake.FakeDeploy), ("direct", burnin.BurninAgentDeploy)],
        firmware=[f(fake.FakeFirmware), plain(base.NoFirmware)],
        inspect=[f(fake.FakeInspect), ("agent", agent.AgentInspect), plain(base.NoInspect)],
        management=[f(fake.FakeManagement)],
        power=[f(fake.FakePower)],
        raid=[f(fake.FakeRaid), plain(base.NoRaid)],
        rescue=[f(fake.FakeRescue), plain(base.NoRescue), ("agent", rescue.AgentRescue)],
        storage=[f(fake.FakeStorage), plain(base.NoopStorage), plain(storage.IscsiStorage)],
        vendor=[f(fake.FakeVendor), plain(base.NoVendor)],
    )


def _qemu_hardware() -> HardwareType:
    return hardware_type(
        "qemu",
        "QEMU VMs driven over QMP: power, boot device (pxe/disk/cdrom) and firmware mode.",
        boot=[("pxe", agent.PxeBoot), ("virtual-media", vmedia.QemuVirtualMedia)],
        management=[("qemu", lambda s: qemu.QemuManagement())],
        power=[("qemu", lambda s: qemu.QemuPower(soft_timeout=s.power_state_change_timeout))],
    )


def _ipmi_hardware() -> HardwareType:
    """Ironic's interface names ("ipmitool"), implemented with pyghmi, not the ipmitool binary."""
    return hardware_type(
        "ipmi",
        "Servers behind an IPMI 2.0 (lanplus) BMC, through pyghmi: power, boot device, SOL console.",
        console=[("ipmitool-sol", ipmi.IpmiConsole), plain(base.NoConsole)],
        management=[("ipmitool", ipmi.IpmiManagement)],
        power=[("ipmitool", ipmi.IpmiPower)],
    )


def _with_virtual_media(hw: HardwareType) -> HardwareType:
    """A BMC type that offers virtual media boots the ramdisk from a virtual CD too."""
    boot = [*hw.interfaces["boot"], ("redfish-virtual-media", vmedia.RedfishVirtualMedia)]
    return HardwareType(hw.name, hw.description, {**hw.interfaces, "boot": boot})


# The explicit registry: every hardware type bootforge knows, by name.
HARDWARE_TYPES: dict[str, Callable[[], HardwareType]] = {
    "fake-hardware": _fake_hardware,
    "ipmi": _ipmi_hardware,
    "qemu": _qemu_hardware,
    "redfish": lambda: _with_virtual_media(redfish.hardware()),
}


@dataclass
class DriverSet:
    """The interfaces one node works with, by interface type."""

    hardware_type: HardwareType
    interfaces: dict[str, base.BaseInterface]

    @property
    def power(self) -> base.PowerInterface:
        iface: base.PowerInterface = self._get("power", base.PowerInterface)  # type: ignore[type-abstract]
        return iface

    @property
    def management(self) -> base.ManagementInterface:
        iface: base.ManagementInterface = self._get("management", base.ManagementInterface)  # type: ignore[type-abstract]
        return iface

    @property
    def boot(self) -> base.BootInterface:
        iface: base.BootInterface = self._get("boot", base.BootInterface)  # type: ignore[type-abstract]
        return iface

    @property
    def deploy(self) -> base.DeployInterface:
        iface: base.DeployInterface = self._get("deploy", base.DeployInterface)  # type: ignore[type-abstract]
        return iface

    @property
    def inspect(self) -> base.InspectInterface:
        iface: base.InspectInterface = self._get("inspect", base.InspectInterface)  # type: ignore[type-abstract]
        return iface

    @property
    def storage(self) -> base.StorageInterface:
        iface: base.StorageInterface = self._get("storage", base.StorageInterface)
        return iface

    @property
    def rescue(self) -> base.RescueInterface:
        iface: base.RescueInterface = self._get("rescue", base.RescueInterface)  # type: ignore[type-abstract]
        return iface

    def _get(self, kind: str, cls: type[base.BaseInterface]) -> Any:
        iface = self.interfaces[kind]
        if not isinstance(iface, cls):
            raise TypeError(f"{kind} interface {iface!r} is not a {cls.__name__}")
        return iface


class Drivers:
    """The enabled hardware types of this conductor, with one shared instance per implementation."""

    def __init__(self, settings: Settings) -> None:
        unknown = [n for n in settings.enabled_hardware_types if n not in HARDWARE_TYPES]
        if unknown:
            raise ValueError(
                f"unknown hardware type(s) {unknown} in enabled_hardware_types; "
                f"known: {sorted(HARDWARE_TYPES)}"
            )
        self.settings = settings
        self.types = {n: HARDWARE_TYPES[n]() for n in settings.enabled_hardware_types}
        self._instances: dict[tuple[str, str, str], base.BaseInterface] = {}

    def get_type(self, name: str) -> HardwareType:
        try:
            return self.types[name]
        except KeyError:
            raise NotFound(
                f"Could not find the following driver(s) or hardware type(s): {printable(name)}. "
                f"Enabled hardware types: {', '.join(sorted(self.types)) or 'none'} "
                "(settings: enabled_hardware_types)."
            ) from None

    def resolve(self, hw: HardwareType, interface_type: str, requested: str | None) -> str:
        """The implementation name a node gets for `interface_type`; InvalidInput if unsupported."""
        if requested is None:
            return hw.default(interface_type)
        supported = hw.supported(interface_type)
        if requested not in supported:
            raise InvalidInput(
                f"Could not find a suitable {interface_type} interface '{requested}' for hardware "
                f"type {hw.name}; supported: {', '.join(supported)}",
                f"{interface_type}_interface",
            )
        return requested

    def boots_from_network(self, driver: str, boot_interface: str | None) -> bool:
        """Whether a node of `driver` with `boot_interface` boots the ramdisk from bootforge's network
        boot servers. A type not enabled here, or an unknown interface, says True: the boot script
        then answers as it always has, and validate() reports the misconfiguration."""
        hw = self.types.get(driver)
        if hw is None:
            return True
        try:
            boot = self._instance(hw, "boot", self.resolve(hw, "boot", boot_interface))
        except InvalidInput:
            return True
        return not isinstance(boot, base.BootInterface) or boot.netboot

    def _instance(self, hw: HardwareType, kind: str, name: str) -> base.BaseInterface:
        key = (hw.name, kind, name)
        if key not in self._instances:
            factory = dict(hw.interfaces[kind])[name]
            self._instances[key] = factory(self.settings)
        return self._instances[key]

    async def sweep(self) -> None:
        await self._each("sweep")

    async def close(self) -> None:
        await self._each("close")

    async def _each(self, method: str) -> None:
        # One failing interface (a BMC that refuses a logout) must not keep the others from theirs.
        for iface in list(self._instances.values()):
            try:
                await getattr(iface, method)()
            except Exception:
                log.exception("%s of the %s %s interface failed", method, iface.name, iface.interface_type)

    def for_node(self, driver: str, chosen: dict[str, str | None]) -> DriverSet:
        hw = self.get_type(driver)
        interfaces: dict[str, base.BaseInterface] = {}
        for kind in INTERFACE_TYPES:
            interfaces[kind] = self._instance(hw, kind, self.resolve(hw, kind, chosen.get(kind)))
        return DriverSet(hw, interfaces)
