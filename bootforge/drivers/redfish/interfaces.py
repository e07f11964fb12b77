"""RedfishPower and RedfishManagement: the node-facing side of the Redfish client.

Each operation opens a client for the node's driver_info, does its work and closes it. The BMC
session (if the service has a SessionService) is kept for the node's next operation for
SESSION_IDLE seconds instead of a login and a logout around every call; nothing else outlives the
operation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bootforge.drivers import base
from bootforge.drivers.base import BmcReport, Task
from bootforge.drivers.redfish.client import (
    BOOT_TARGETS,
    PowerAction,
    RedfishClient,
    RedfishError,
    close_idle_sessions,
)
from bootforge.drivers.redfish.info import PROPERTIES, RedfishInfo, parse_driver_info
from bootforge.errors import InvalidInput

ClientFactory = Callable[[RedfishInfo], RedfishClient]

# Seconds a BMC session stays open for the node's next operation (Ironic keeps them for good, in a
# cache of 1000): a power sync every minute then costs one GET per node instead of a login, a GET
# and a logout. client.close_idle_sessions() logs out of the ones left.
SESSION_IDLE = 300.0


def _pooled_client(info: RedfishInfo) -> RedfishClient:
    return RedfishClient(info, session_idle=SESSION_IDLE)


_POWER_STATES = {
    "On": base.POWER_ON,
    "PoweringOn": base.POWER_ON,
    "Off": base.POWER_OFF,
    "PoweringOff": base.POWER_OFF,
}
_ACTIONS: dict[str, PowerAction] = {
    base.POWER_ON: "on",
    base.POWER_OFF: "off",
    base.SOFT_POWER_OFF: "soft_off",
    base.REBOOT: "reboot",
    base.SOFT_REBOOT: "soft_reboot",
}
_DEVICES = {d: BOOT_TARGETS[d] for d in ("pxe", "disk", "cdrom", "bios")}
_DEVICES_BACK = {"Pxe": "pxe", "Hdd": "disk", "Cd": "cdrom", "UsbCd": "cdrom", "BiosSetup": "bios"}
_MODES = {"uefi": "UEFI", "bios": "Legacy"}
# driver_internal_info: a persistent boot device the BMC would only take as "Once"; the power
# interface sets it again before every power on (what Ironic does: Continuous is gone from newer
# Redfish schemas and some BMCs refuse it, ironic redfish/management.py _set_boot_device).
ONCE_AGAIN = "redfish_boot_device"
_MODES_BACK = {v: k for k, v in _MODES.items()}


class _RedfishBase:
    name = "redfish"

    def __init__(self, power_timeout: float = 60.0, client_factory: ClientFactory | None = None) -> None:
        self.power_timeout = power_timeout
        self._factory: ClientFactory = client_factory or _pooled_client

    def get_properties(self) -> dict[str, str]:
        return dict(PROPERTIES)

    def validate(self, task: Task) -> None:
        parse_driver_info(task.node.driver_info)

    def client(self, task: Task) -> RedfishClient:
        """A client for the node's BMC; use it as `async with`."""
        return self._factory(parse_driver_info(task.node.driver_info))

    async def sweep(self) -> None:
        await close_idle_sessions(older_than=SESSION_IDLE)

    async def close(self) -> None:
        await close_idle_sessions()


class RedfishPower(_RedfishBase, base.PowerInterface):
    def get_supported_power_states(self, task: Task) -> list[str]:
        return list(_ACTIONS)

    async def get_power_state(self, task: Task) -> str:
        async with self.client(task) as bmc:
            state = await bmc.power_state()
        return _POWER_STATES.get(state or "", base.POWER_ERROR)

    async def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None:
        action = _ACTIONS.get(state)
        if action is None:
            raise InvalidInput(f"the redfish power interface does not support {state!r}", "target")
        started = time.monotonic()
        again = task.node.driver_internal_info.get(ONCE_AGAIN)
        async with self.client(task) as bmc:
            if again in _DEVICES and action in ("on", "reboot", "soft_reboot"):
                try:
                    await bmc.set_boot(_DEVICES[again], persistent=False)
                except RedfishError as e:
                    await task.record(
                        "management",
                        f"could not set boot device {again} again before {state}; the BMC's boot order "
                        f"decides: {e.message}",
                        "warning",
                    )
            notes = await bmc.set_power(action, timeout or self.power_timeout)
            where = bmc.info.address
        if notes:
            await task.record(
                "power",
                f"Redfish {', '.join(notes)} at {where}: {state} in {time.monotonic() - started:.1f} s",
            )

    async def reboot(self, task: Task, timeout: float | None = None) -> None:
        await self.set_power_state(task, base.REBOOT, timeout)


class _NodeMedia:
    """Virtual media of one node, for the redfish-virtual-media boot interface: each call opens and
    closes its own client."""

    def __init__(self, owner: _RedfishBase, task: Task) -> None:
        self._owner = owner
        self._task = task

    async def insert_media(self, url: str, kind: str = "cd") -> None:
        async with self._owner.client(self._task) as bmc:
            await bmc.insert_media(url, kind)

    async def eject_media(self, kind: str = "cd") -> None:
        async with self._owner.client(self._task) as bmc:
            await bmc.eject_media(kind)


class RedfishManagement(_RedfishBase, base.ManagementInterface):
    def get_supported_boot_devices(self, task: Task) -> list[str]:
        return list(_DEVICES)

    async def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        target = _DEVICES.get(device)
        if target is None:
            raise InvalidInput(
                f"the redfish management interface does not support boot device {device!r}; "
                f"supported: {', '.join(_DEVICES)}",
                "boot_device",
            )
        task.set_internal(**{ONCE_AGAIN: None})
        async with self.client(task) as bmc:
            try:
                await bmc.set_boot(target, persistent=persistent)
            except RedfishError as e:
                if not persistent or e.status != 400:
                    raise
                # A BMC that refuses Continuous: boot once from it now, and again at each power on.
                await bmc.set_boot(target, persistent=False)
                task.set_internal(**{ONCE_AGAIN: device})
                await task.record(
                    "management",
                    f"the BMC refused a persistent boot device ({e.message}); {device} is set once and "
                    "again before every power on",
                    "warning",
                )

    async def get_boot_device(self, task: Task) -> dict[str, Any]:
        again = task.node.driver_internal_info.get(ONCE_AGAIN)
        if again in _DEVICES:
            return {"boot_device": again, "persistent": True}
        async with self.client(task) as bmc:
            boot = await bmc.get_boot()
        if boot.enabled == "Disabled" or boot.target in (None, "None"):
            return {"boot_device": None, "persistent": None}
        return {
            "boot_device": _DEVICES_BACK.get(boot.target or ""),
            "persistent": {"Continuous": True, "Once": False}.get(boot.enabled or ""),
        }

    def get_supported_boot_modes(self, task: Task) -> list[str]:
        return list(_MODES)

    async def set_boot_mode(self, task: Task, mode: str) -> None:
        wanted = _MODES.get(mode)
        if wanted is None:
            raise InvalidInput(f"boot mode must be one of {', '.join(_MODES)}, not {mode!r}", "boot_mode")
        async with self.client(task) as bmc:
            await bmc.set_boot(mode=wanted)

    async def get_boot_mode(self, task: Task) -> str | None:
        async with self.client(task) as bmc:
            boot = await bmc.get_boot()
        return _MODES_BACK.get(boot.mode or "")

    async def set_secure_boot_state(self, task: Task, enabled: bool) -> None:
        async with self.client(task) as bmc:
            await bmc.set_secure_boot(enabled)

    async def get_secure_boot_state(self, task: Task) -> bool | None:
        """None: the BMC has no SecureBoot resource (no link, or the link answers 404/405/501)."""
        async with self.client(task) as bmc:
            try:
                state = await bmc.secure_boot()
            except RedfishError as e:
                if e.status in (404, 405, 501):
                    return None
                raise
        return None if state is None else state.enabled

    def virtual_media_client(self, task: Task) -> _NodeMedia:
        """The insert/eject operations the redfish-virtual-media boot interface calls."""
        return _NodeMedia(self, task)

    async def bmc_report(self, task: Task) -> BmcReport:
        try:
            info = parse_driver_info(task.node.driver_info)
        except InvalidInput as e:
            return BmcReport(False, e.message)
        try:
            async with self._factory(info) as bmc:
                facts = await bmc.report()
        except Exception as e:
            return BmcReport(False, f"{type(e).__name__}: {getattr(e, 'message', e)}")
        secure = facts["secure_boot"]
        modes = [m for m in (_MODES_BACK.get(x) for x in facts["boot_modes"]) if m]
        devices = [
            d for d, t in _DEVICES.items() if facts["boot_targets"] is None or t in facts["boot_targets"]
        ]
        return BmcReport(
            True,
            f"Redfish {facts['redfish_version'] or '?'} at {info.address} ({facts['auth']} auth), "
            f"system {facts['system']}, quirks {facts['quirks']}",
            power_state=_POWER_STATES.get(facts["power_state"] or "", base.POWER_ERROR),
            boot_devices=devices,
            boot_modes=modes,
            virtual_media=list(facts["virtual_media"]),
            secure_boot=None if secure is None else bool(secure.enabled),
            vendor=facts["vendor"],
            model=facts["model"],
            firmware=facts["firmware"],
            extra={
                "reset_types": facts["reset_types"],
                "http_boot_uri": facts["http_boot_uri"],
                "quirks": facts["quirks"],
                "secure_boot_current": None if secure is None else secure.current,
            },
        )
