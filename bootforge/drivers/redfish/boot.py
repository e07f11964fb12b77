"""Secure Boot as the node asks, for the `redfish` hardware type's network boot interfaces.

A node whose properties.capabilities say `secure_boot:true` gets the BMC's SecureBootEnable set to
true before its machine boots for a deploy (the ramdisk, over bootforge's shim -> GRUB chain) and
before the instance boots (prepare_instance), and set back to false when the instance is torn down,
but only if bootforge turned it on (driver_internal_info SECURE_BOOT_SET): a machine the operator
enforces Secure Boot on keeps it. That is Ironic's rule (boot_mode_utils.configure_secure_boot_if_
needed in prepare_instance, deconfigure_secure_boot_if_needed in clean_up_instance); bootforge also
turns it on for the deploy's ramdisk boot, so the signed chain the node is offered is the one the
instance boots under, and a key or firmware problem shows while the agent can still report it.

A BMC without a SecureBoot resource fails the operation with a DriverError naming the BMC: a node
that asks for Secure Boot must not be deployed without it. The setting takes effect at the next
power-on (real BMCs apply it at POST); the agent's boot_ramdisk powers on or reboots right after.
"""

from __future__ import annotations

from typing import Any

from bootforge.drivers import agent, base
from bootforge.errors import DriverError

__all__ = ["SECURE_BOOT_SET", "RedfishIpxeBoot", "RedfishPxeBoot", "wants_secure_boot"]

# driver_internal_info: bootforge turned the BMC's Secure Boot on for this node (turn it off again
# at tear-down).
SECURE_BOOT_SET = "redfish_secure_boot_set"
# Provision states whose ramdisk boot is a deploy (or rebuild): the instance's Secure Boot applies.
_DEPLOY_STATES = frozenset({"deploying", "wait call-back"})


def wants_secure_boot(properties: Any) -> bool:
    """capabilities "secure_boot:true" (Ironic's string form) or {"secure_boot": "true"}."""
    caps = properties.get("capabilities") if isinstance(properties, dict) else None
    if isinstance(caps, str):
        caps = dict(p.split(":", 1) for p in caps.split(",") if ":" in p)
    return isinstance(caps, dict) and str(caps.get("secure_boot", "")).strip().lower() == "true"


def _bmc(task: base.Task) -> str:
    info = task.node.driver_info or {}
    return str(info.get("redfish_address") or "the node's BMC")


async def configure_secure_boot(task: base.Task) -> None:
    """Secure Boot on for a node that asks for it; remembered when bootforge changed it."""
    if not wants_secure_boot(task.node.properties):
        return
    management = task.driver.management
    state = await management.get_secure_boot_state(task)
    if state is None:
        raise DriverError(
            f"node asks for Secure Boot (capabilities secure_boot:true) but the BMC at {_bmc(task)} "
            "has no SecureBoot resource: enable it in the firmware setup or remove the capability"
        )
    if state:
        return
    await management.set_secure_boot_state(task, True)
    task.set_internal(**{SECURE_BOOT_SET: True})
    await task.record("management", f"Secure Boot turned on at {_bmc(task)} (capabilities secure_boot:true)")


async def deconfigure_secure_boot(task: base.Task) -> None:
    """Secure Boot back off if bootforge turned it on (an operator's own setting stays)."""
    if not task.node.driver_internal_info.get(SECURE_BOOT_SET):
        return
    await task.driver.management.set_secure_boot_state(task, False)
    task.set_internal(**{SECURE_BOOT_SET: None})
    await task.record("management", f"Secure Boot turned off at {_bmc(task)} (bootforge had turned it on)")


class RedfishPxeBoot(agent.PxeBoot):
    """The generic network boot, with the node's Secure Boot set through the BMC (module docstring)."""

    async def prepare_ramdisk(self, task: base.Task) -> None:
        if task.node.provision_state in _DEPLOY_STATES:
            await configure_secure_boot(task)
        await super().prepare_ramdisk(task)

    async def prepare_instance(self, task: base.Task) -> None:
        await configure_secure_boot(task)
        await super().prepare_instance(task)

    async def clean_up_instance(self, task: base.Task) -> None:
        await super().clean_up_instance(task)
        await deconfigure_secure_boot(task)


class RedfishIpxeBoot(RedfishPxeBoot):
    name = "ipxe"
