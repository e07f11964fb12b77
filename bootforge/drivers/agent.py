"""Interfaces whose work is done by bootforge's deploy agent, running in the ramdisk the node network-boots.

- `pxe` (boot): the node's next network boot loads the ramdisk. bootforge's own DHCP/TFTP/HTTP servers
  answer by the node's provision state, so there is nothing to write per node: this interface only makes
  the machine boot from the network (or, for the instance, from its disk).
- `direct` (deploy): clean steps that erase disks and deploy steps that stream the image, through the agent.
- `agent` (inspect): the agent reports the machine's inventory.

How a command reaches the agent: a step stores it in `driver_internal_info["agent_command"]` and returns
WAIT; the agent long-polls for it, runs it and posts the outcome; the conductor (conductor/agent.py) then
resumes the node from the next step. Each ramdisk boot has its own id (`agent_boot`): the agent's token
is bound to it, so an agent from an earlier boot can never act on the node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid as uuidlib
from pathlib import Path
from typing import Any, Final

from bootforge.config import Settings
from bootforge.drivers import base, storage
from bootforge.errors import DriverError, InvalidInput
from bootforge.netboot.boot import arch as arches

AGENT_BOOT: Final = "agent_boot"
AGENT_COMMAND: Final = "agent_command"
DEPLOY_IMAGE: Final = "deploy_image"
DEPLOY_CONFIGDRIVE: Final = "deploy_configdrive"


def netboot_root(settings: Settings) -> Path:
    return settings.netboot.root or settings.state_dir / "boot"


async def agent_alive(task: base.Task) -> bool:
    """True when the agent of the node's current ramdisk boot was heard recently enough to reuse."""
    if not task.node.driver_internal_info.get(AGENT_BOOT) or task.node.power_state != base.POWER_ON:
        return False
    seen = await task.agent_last_seen()
    if seen is None:
        return False
    agent = task.settings.agent
    # Within one operation a running agent is always reused; across operations only with fast track.
    limit = agent.fast_track_timeout if agent.fast_track else 3.0 * agent.poll_timeout
    return (dt.datetime.now(dt.UTC) - seen).total_seconds() < limit


async def boot_ramdisk(task: base.Task, why: str) -> None:
    """Make the node run the agent: reuse a live one, else network-boot the ramdisk with a new boot id."""
    if await agent_alive(task):
        await task.record("agent", f"{why}: the agent is running already (no reboot)")
        return
    task.set_internal(**{AGENT_BOOT: str(uuidlib.uuid4()), AGENT_COMMAND: None})
    await task.driver.boot.prepare_ramdisk(task)
    # Saved before the power-on: the netboot view reads the boot id from the database to put this
    # boot's token (bootforge/boot_token.py) into the node's boot script.
    await task.save()
    power = task.driver.power
    if await power.get_power_state(task) == base.POWER_ON:
        await power.reboot(task)
    else:
        await power.set_power_state(task, base.POWER_ON)
    task.node.power_state = base.POWER_ON
    how = "network-booting" if task.driver.boot.netboot else f"booting ({task.driver.boot.name})"
    await task.record("agent", f"{why}: {how} the bootforge ramdisk")


async def send_command(task: base.Task, name: str, args: dict[str, Any], what: str) -> str:
    """Queue `name` for the agent and tell the step runner to wait for its outcome."""
    command_id = str(uuidlib.uuid4())
    command = {
        "id": command_id,
        "name": name,
        "args": args,
        "sent_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    task.set_internal(**{AGENT_COMMAND: command})
    await task.record("agent", f"waiting for the agent to {what} (command {name} {command_id[:8]})")
    return base.WAIT


async def leave_ramdisk(task: base.Task, why: str) -> None:
    """End of an operation: power off, unless fast track keeps the agent running for the next one."""
    if task.settings.agent.fast_track:
        await task.record("agent", f"{why}: fast track keeps the agent running")
        return
    task.set_internal(**{AGENT_BOOT: None, AGENT_COMMAND: None})
    await task.driver.power.set_power_state(task, base.POWER_OFF)
    task.node.power_state = base.POWER_OFF
    await task.driver.boot.clean_up_ramdisk(task)


class PxeBoot(base.BootInterface):
    """Network boot from bootforge's own DHCP/TFTP/HTTP servers; the instance boots from its disk.

    Firmware gets iPXE (over TFTP, or HTTP for UEFI HTTP boot) and iPXE gets the node's script, so
    `pxe` and `ipxe` boot the same way here; both names exist because Ironic's node definitions use them.
    """

    name = "pxe"
    netboot = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get_properties(self) -> dict[str, str]:
        return {
            "deploy_kernel": "The ramdisk's kernel: a file under the netboot root or a URL. Optional.",
            "deploy_ramdisk": "The ramdisk's initrd: a file under the netboot root or a URL. Optional.",
        }

    def validate(self, task: base.Task) -> None:
        info = task.node.driver_info
        root = netboot_root(self.settings)
        # The ramdisk of the node's CPU architecture (bootforge/arm64/... for aarch64); while it is
        # unknown (no DHCP or inspection yet), any architecture's build will do.
        cpu = (task.node.properties or {}).get("cpu_arch")
        cpus = [str(cpu)] if cpu else list(arches.CPU_ARCHES)
        for key, default in (
            ("deploy_kernel", self.settings.netboot.deploy_kernel),
            ("deploy_ramdisk", self.settings.netboot.deploy_ramdisk),
        ):
            refs = [info[key]] if info.get(key) else [arches.ramdisk_file(default, c) for c in cpus]
            if any("://" in ref or (root / ref).is_file() for ref in refs):
                continue
            found = arches.cpu_arch(cpus[0]) if len(cpus) == 1 else None
            flag = f" --arch {found.debian}" if found is not None and found.cpu != arches.DEFAULT_CPU else ""
            raise InvalidInput(
                f"the bootforge ramdisk's {key.split('_')[1]} {root / refs[0]} does not exist: "
                f"build it with `bootforge ramdisk build{flag}`",
                f"driver_info.{key}",
            )

    async def prepare_ramdisk(self, task: base.Task) -> None:
        # Once: a machine that reboots itself later (or after a failed deploy) falls back to its
        # normal order instead of looping into the ramdisk.
        await task.driver.management.set_boot_device(task, "pxe", persistent=False)

    async def prepare_instance(self, task: base.Task) -> None:
        # A node that boots from a volume has every boot go through iPXE, whose script sanboots it.
        from_volume = await task.driver.storage.boot_volume(task) is not None
        await task.driver.management.set_boot_device(task, "pxe" if from_volume else "disk", persistent=True)


class IpxeBoot(PxeBoot):
    name = "ipxe"


class AgentDeploy(base.DeployInterface):
    """Deploy and clean through the agent: erase disks, stream the image, write the config drive."""

    name = "direct"
    needs_image = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def validate(self, task: base.Task) -> None:
        # With the iscsi storage interface a node may boot from its volume with no image at all; the
        # volume targets are read (and the rule applied) when the deploy starts (storage.boot_volume).
        if isinstance(task.driver.storage, storage.IscsiStorage):
            return
        if not task.node.instance_info.get("image_source"):
            raise InvalidInput(
                "instance_info.image_source is required: a URL or a name from `bootforge image list`",
                "instance_info.image_source",
            )

    # May run again: the conductor's part boots the ramdisk (a new boot id: an agent of the earlier
    # boot can no longer act) and queues the command, which is persisted only with the node's move to
    # its wait state; writing the same image over a half-written disk gives the same disk.
    @base.deploy_step(priority=100, may_rerun=True)
    async def deploy(self, task: base.Task) -> base.StepResult:
        """Boot the ramdisk and have the agent write the image (and config drive) to the root disk."""
        volume = await task.driver.storage.boot_volume(task)
        if volume is not None:
            await task.record("deploy", f"the node boots from volume {volume.volume_id}: no image is written")
            return None
        info = task.node.driver_internal_info
        image = info.get(DEPLOY_IMAGE)
        if not image:
            raise DriverError("no image was resolved for this deployment (deploy_image is missing)")
        await boot_ramdisk(task, "deployment")
        args = {
            "image": image,
            "root_device_hints": task.node.properties.get("root_device") or {},
            "configdrive": info.get(DEPLOY_CONFIGDRIVE),
        }
        return await send_command(task, "write_image", args, f"write {image['url']}")

    # May run again: boot device and power are set to the same end state, and the hand-off watch
    # starts over from the new power-on.
    @base.deploy_step(priority=20, may_rerun=True)
    async def boot_instance(self, task: base.Task) -> base.StepResult:
        """Hand the machine to its disk and watch that it does not come back to the network."""
        volume = await task.driver.storage.boot_volume(task)
        if volume is not None:
            await storage.boot_from_volume(task, volume)
            return None
        task.set_internal(**{AGENT_BOOT: None, AGENT_COMMAND: None, DEPLOY_CONFIGDRIVE: None})
        await task.driver.boot.clean_up_ramdisk(task)
        await task.driver.boot.prepare_instance(task)
        power = task.driver.power
        await power.set_power_state(task, base.POWER_OFF)
        started = dt.datetime.now(dt.UTC)
        await power.set_power_state(task, base.POWER_ON)
        task.node.power_state = base.POWER_ON
        window = self.settings.agent.handoff_window
        await task.record("deploy", f"power cycled onto the disk; watching {window:g} s for a network boot")
        await task.save()
        deadline = asyncio.get_running_loop().time() + window
        while True:
            seen = await task.network_boots_since(started)
            if seen:
                raise DriverError(
                    "the machine network-booted again after it was handed over to its disk, so its "
                    f"disk did not boot: {seen[0].text}"
                )
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(min(1.0, max(0.0, deadline - asyncio.get_running_loop().time())))
        await task.record("deploy", f"handoff seen: no network boot from the machine within {window:g} s")
        return None

    # May run again: erasing signatures that are already gone changes nothing.
    @base.clean_step(priority=99, may_rerun=True)
    async def erase_devices_metadata(self, task: base.Task) -> base.StepResult:
        """Erase partition tables (both ends) and filesystem signatures on every disk."""
        await boot_ramdisk(task, "cleaning")
        return await send_command(task, "erase", {"mode": "metadata"}, "erase disk metadata")

    # May run again, for the same reason as `deploy`: the conductor only boots the ramdisk and queues
    # the erase; the agent gets the command after the node's move to clean wait, never during the step.
    # (An interrupted ATA/NVMe secure erase inside the agent is the agent's to resume, not a re-run.)
    @base.clean_step(
        priority=0,
        may_rerun=True,
        abortable=True,
        argsinfo={
            "mode": {"description": "'full' (write zeros, the default) or 'secure'", "required": False}
        },
    )
    async def erase_devices(self, task: base.Task, mode: str = "full") -> base.StepResult:
        """Erase every byte of every disk (manual cleaning only: it takes as long as the disks are big)."""
        if mode not in ("full", "secure"):
            raise InvalidInput(f"erase_devices mode must be 'full' or 'secure', not {mode!r}", "clean_steps")
        await boot_ramdisk(task, "cleaning")
        return await send_command(task, "erase", {"mode": mode}, f"erase the disks ({mode})")

    async def tear_down_cleaning(self, task: base.Task) -> None:
        if task.node.driver_internal_info.get(AGENT_BOOT):
            await leave_ramdisk(task, "cleaning done")

    async def tear_down(self, task: base.Task) -> None:
        task.set_internal(
            **{AGENT_BOOT: None, AGENT_COMMAND: None, DEPLOY_IMAGE: None, DEPLOY_CONFIGDRIVE: None}
        )
        # A deploy that failed with the ramdisk still booted (a virtual CD still inserted) is undone
        # here, when the node is torn down: the medium must not outlive the deployment.
        await task.driver.boot.clean_up_ramdisk(task)


class AgentInspect(base.InspectInterface):
    """Inspection by the agent: CPUs, memory, disks, NICs (with LLDP neighbours), system and boot mode."""

    name = "agent"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def validate(self, task: base.Task) -> None:
        # The agent comes from the network boot: no ramdisk to boot, no inspection.
        task.driver.boot.validate(task)

    async def inspect_hardware(self, task: base.Task) -> base.StepResult:
        await boot_ramdisk(task, "inspection")
        args = {"lldp_wait": self.settings.agent.lldp_wait}
        return await send_command(task, "inspect", args, "report the inventory")

    async def tear_down_inspection(self, task: base.Task) -> None:
        await leave_ramdisk(task, "inspection done")
