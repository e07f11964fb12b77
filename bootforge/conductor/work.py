"""The background work behind each provisioning action, run while the node's lock is held.

Every function here is safe to run again from the start for a node left in its state by a conductor
that died: steps are re-entered at the index persisted before they started, and the other phases only
converge the machine towards the target.

Steps: the ordered list of a deploy or clean is written to `driver_internal_info` before the first
step runs, each entry carrying the step's `may_rerun` declaration (drivers/base.py). Before each step
its index is saved and its entry marked `started` (conductor, time), so the node record always says
where the work is. After a step that may not run twice the next index is saved before anything else
runs. A node resumed (restart, takeover) at a step marked started was interrupted in it: a step that
may run again is run again (a warning on the timeline says so), one that may not fails the node with
the reason, so it never runs twice. A step that hands its work to the agent ends (for the conductor)
with the node's move to its wait state, saved in the same transaction as the next index and the agent's
command: a conductor that dies before that leaves no command for the agent, and one after it leaves
nothing under way.
"""

from __future__ import annotations

from typing import Any

from bootforge.conductor import states
from bootforge.conductor.task import NodeTask
from bootforge.db.models import utcnow
from bootforge.drivers import base
from bootforge.drivers.agent import DEPLOY_CONFIGDRIVE, DEPLOY_IMAGE
from bootforge.drivers.hardware import INTERFACE_TYPES
from bootforge.errors import BootforgeError, InvalidInput

# Ironic's tie-break when two steps share a priority: power first, then management, deploy, ...
STEP_INTERFACE_ORDER = ("power", "management", "deploy", "bios", "raid", "inspect", "boot", "rescue")

POWER_RESULT = {
    base.POWER_ON: base.POWER_ON,
    base.POWER_OFF: base.POWER_OFF,
    base.REBOOT: base.POWER_ON,
    base.SOFT_POWER_OFF: base.POWER_OFF,
    base.SOFT_REBOOT: base.POWER_ON,
}


class StepInterrupted(BootforgeError):
    """A conductor stopped in the middle of a step that may not run twice: the node is failed instead."""


STARTED = "started"


def collect_steps(task: NodeTask, kind: str, *, automated_only: bool = True) -> list[dict[str, Any]]:
    """The steps of `kind` the node's interfaces offer, in execution order (priority, then interface)."""
    found: list[dict[str, Any]] = []
    for iface_type in INTERFACE_TYPES:
        iface = task.driver.interfaces[iface_type]
        for info in iface.steps(kind):
            if automated_only and info.priority <= 0:
                continue
            found.append(
                {
                    "interface": iface_type,
                    "step": info.name,
                    "priority": info.priority,
                    "args": {},
                    "abortable": info.abortable,
                    "may_rerun": info.may_rerun,
                }
            )
    order = {name: i for i, name in enumerate(STEP_INTERFACE_ORDER)}
    found.sort(key=lambda s: (-s["priority"], order.get(s["interface"], 99)))
    return found


def check_requested_steps(task: NodeTask, kind: str, requested: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate operator-given steps against what the interfaces offer; InvalidInput names the bad one."""
    field = f"{kind}_steps"
    checked = []
    for i, step in enumerate(requested):
        if not isinstance(step, dict) or "interface" not in step or "step" not in step:
            raise InvalidInput(f"{field}[{i}] must be an object with 'interface' and 'step'", field)
        iface_type = step["interface"]
        if iface_type not in task.driver.interfaces:
            raise InvalidInput(f"{field}[{i}]: unknown interface {iface_type!r}", field)
        offered = {s.name: s for s in task.driver.interfaces[iface_type].steps(kind)}
        if step["step"] not in offered:
            raise InvalidInput(
                f"{field}[{i}]: {kind} step {step['step']!r} is not supported by the node's "
                f"{iface_type} interface; it offers: {', '.join(sorted(offered)) or 'none'}",
                field,
            )
        args = step.get("args", {})
        if not isinstance(args, dict):
            raise InvalidInput(f"{field}[{i}].args must be an object", field)
        checked.append(
            {
                "interface": iface_type,
                "step": step["step"],
                "args": args,
                "priority": int(step.get("priority", 0)),
                "may_rerun": offered[step["step"]].may_rerun,
            }
        )
    return checked


async def run_steps(task: NodeTask, kind: str) -> str | None:
    """Run the persisted step list of `kind` from its saved index; WAIT if a step went asynchronous.

    On WAIT nothing is saved here: the caller's move to the wait state saves the next index with it.
    """
    info = task.node.driver_internal_info
    steps: list[dict[str, Any]] = list(info.get(f"{kind}_steps", []))
    index: int = info.get(f"{kind}_step_index", 0)
    for i in range(index, len(steps)):
        step = steps[i]
        name = f"{kind} step {step['interface']}.{step['step']}"
        if step.get(STARTED):
            await _interrupted(task, kind, name, step)
        step = {**step, STARTED: {"conductor": task.conductor.host, "at": utcnow().isoformat()}}
        steps[i] = step
        setattr(task.node, f"{kind}_step", _shown(step))
        task.set_internal(**{f"{kind}_steps": list(steps), f"{kind}_step_index": i})
        # The event goes out with the index it describes: one transaction, and both or neither.
        await task.record("step", f"{name} started")
        await task.save()
        task.conductor.observer.step_started(task.node_uuid, kind, f"{step['interface']}.{step['step']}")
        iface = task.driver.interfaces[step["interface"]]
        result = await iface.execute_step(task, step["step"], step.get("args", {}))
        task.set_internal(**{f"{kind}_step_index": i + 1})
        if result == base.WAIT:
            await task.record("step", f"{name} waits for the agent")
            return base.WAIT
        await task.record("step", f"{name} done")
        if not may_rerun(task, kind, step):
            # On record before anything else runs: a crash from here on must not look like this
            # step was still under way (it would fail a node whose step in fact finished).
            await task.save()
    setattr(task.node, f"{kind}_step", {})
    task.set_internal(**{f"{kind}_steps": None, f"{kind}_step_index": None})
    task.conductor.observer.steps_finished(task.node_uuid)
    return None


def may_rerun(task: NodeTask, kind: str, step: dict[str, Any]) -> bool:
    """The step record's declaration; records persisted before steps declared it ask the interface
    (a step it no longer offers counts as one that may not run twice)."""
    declared = step.get("may_rerun")
    if isinstance(declared, bool):
        return declared
    iface = task.driver.interfaces.get(step["interface"])
    offered = {s.name: s for s in iface.steps(kind)} if iface is not None else {}
    found = offered.get(step["step"])
    return found.may_rerun if found is not None else False


async def _interrupted(task: NodeTask, kind: str, name: str, step: dict[str, Any]) -> None:
    """The node resumes at a step that was started and never finished: run it again or refuse."""
    started = step.get(STARTED) or {}
    where = f"conductor {started.get('conductor', 'unknown')}"
    if not may_rerun(task, kind, step):
        raise StepInterrupted(
            f"{name} was interrupted on {where} and may not run twice; check the machine before "
            "starting the operation again"
        )
    await task.record(
        "step",
        f"{name} was interrupted on {where} (started {started.get('at', '?')}); it may run again: "
        "running it again",
        severity="warning",
    )


def _shown(step: dict[str, Any]) -> dict[str, Any]:
    """The step as the node's deploy_step / clean_step shows it (Ironic's fields and may_rerun)."""
    return {k: v for k, v in step.items() if k != STARTED}


async def verify(task: NodeTask) -> None:
    """enroll -> manageable: prove that bootforge can read the machine's power state.

    Only power and management are checked, as in Ironic: a node is manageable as soon as its BMC
    answers; what deploy or rescue need is checked when they are asked for (and shown by validate).
    """
    for kind in ("power", "management"):
        task.driver.interfaces[kind].validate(task)
    async with task.conductor.observer.bmc(task.node.driver, "get_power_state"):
        task.node.power_state = await task.driver.power.get_power_state(task)
    await task.transition("done", release=True)


async def clean(task: NodeTask) -> None:
    """Cleaning: automated (on provide / after undeploy) or manual (steps given by the operator)."""
    manual = bool(task.node.driver_internal_info.get("clean_manual"))
    if "clean_steps" not in task.node.driver_internal_info:
        steps = collect_steps(task, "clean") if automated_clean_enabled(task) else []
        task.set_internal(clean_steps=steps, clean_step_index=0)
    if await run_steps(task, "clean") == base.WAIT:
        await task.transition("wait", release=True)
        return
    await task.driver.deploy.tear_down_cleaning(task)
    task.set_internal(clean_manual=None)
    await task.transition("manage" if manual else "done", release=True)


def automated_clean_enabled(task: NodeTask) -> bool:
    if task.node.automated_clean is not None:
        return task.node.automated_clean
    return task.conductor.settings.automated_clean


async def deploy(task: NodeTask) -> None:
    """available -> active: run the deploy steps, then hand the machine over."""
    if "deploy_steps" not in task.node.driver_internal_info:
        steps = collect_steps(task, "deploy")
        extra = task.node.driver_internal_info.get("requested_deploy_steps") or []
        steps = _merge_steps(steps, extra)
        task.set_internal(deploy_steps=steps, deploy_step_index=0, requested_deploy_steps=None)
        # A node booting from its volume (storage interface iscsi, a boot_index 0 target) gets no image.
        if task.driver.deploy.needs_image and await task.driver.storage.boot_volume(task) is None:
            await prepare_agent_deploy(task)
    if await run_steps(task, "deploy") == base.WAIT:
        await task.transition("wait", release=True)
        return
    await task.driver.boot.prepare_instance(task)
    task.node.power_state = base.POWER_ON
    await task.transition("done", release=True)


async def prepare_agent_deploy(task: NodeTask) -> None:
    """Resolve what the agent will write: the image (imported and cached if it is a URL) and the
    config drive, built from the deploy request. Done before any step, so a bad image or config drive
    fails the deploy before the machine is touched."""
    from bootforge.images.configdrive import build_configdrive

    settings = task.conductor.settings
    nb = settings.netboot
    if not (nb.http and nb.address):
        raise InvalidInput(
            "the agent downloads images from bootforge's HTTP server: set netboot.http and netboot.address",
            "netboot.http",
        )
    info = task.node.instance_info
    node_arch = (task.node.properties or {}).get("cpu_arch")
    ref = await task.conductor.images.resolve(str(info.get("image_source") or ""), info, node_arch)
    image = ref.agent_args(f"http://{nb.address}:{nb.http_port}")
    drive = build_configdrive(task.node.uuid, task.node.name, info.get("configdrive"))
    task.set_internal(**{DEPLOY_IMAGE: image, DEPLOY_CONFIGDRIVE: drive})
    source = str(info.get("image_source"))
    variant = f" (variant {ref.name} for {node_arch})" if ref.name.startswith(f"{source}-") else ""
    await task.record("deploy", f"image {source}{variant} -> {image['url']} ({image['format']})")


def _merge_steps(steps: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Operator deploy steps override the priority/args of a same-named step or add a new one."""
    by_name = {(s["interface"], s["step"]): s for s in steps}
    for step in extra:
        key = (step["interface"], step["step"])
        by_name[key] = {**by_name.get(key, {}), **step}
    merged = [s for s in by_name.values() if s.get("priority", 0) > 0]
    order = {name: i for i, name in enumerate(STEP_INTERFACE_ORDER)}
    merged.sort(key=lambda s: (-s["priority"], order.get(s["interface"], 99)))
    return merged


async def tear_down(task: NodeTask) -> None:
    """active (or failed) -> deleting -> cleaning -> available."""
    await task.driver.deploy.tear_down(task)
    await task.driver.power.set_power_state(task, base.POWER_OFF)
    task.node.power_state = base.POWER_OFF
    await task.driver.boot.clean_up_instance(task)
    instance_info = {k: v for k, v in task.node.instance_info.items() if k == "capabilities"}
    task.node.instance_info = instance_info
    task.node.instance_uuid = None
    task.set_internal(deploy_steps=None, deploy_step_index=None, clean_manual=None)
    task.node.deploy_step = {}
    await task.conductor.allocations.release_for_node(task)
    await task.transition("clean", save=False)
    await clean(task)


async def inspect(task: NodeTask) -> None:
    task.node.inspection_started_at = utcnow()
    task.node.inspection_finished_at = None
    if await task.driver.inspect.inspect_hardware(task) == base.WAIT:
        await task.transition("wait", release=True)
        return
    task.node.inspection_finished_at = utcnow()
    await task.transition("done", release=True)


async def adopt(task: NodeTask) -> None:
    for kind in ("power", "management", "boot", "deploy"):
        task.driver.interfaces[kind].validate(task)
    task.node.power_state = await task.driver.power.get_power_state(task)
    await task.transition("done", release=True)


async def rescue(task: NodeTask) -> None:
    if await task.driver.rescue.rescue(task) == base.WAIT:
        await task.transition("wait", release=True)
        return
    await task.transition("done", release=True)


async def unrescue(task: NodeTask) -> None:
    await task.driver.rescue.unrescue(task)
    await task.transition("done", release=True)


async def change_power(task: NodeTask, target: str, timeout: float | None) -> None:
    power = task.driver.power
    call = "reboot" if target == base.REBOOT else "set_power_state"
    async with task.conductor.observer.bmc(task.node.driver, call):
        if target == base.REBOOT:
            await power.reboot(task, timeout)
        else:
            await power.set_power_state(task, target, timeout)
    old = task.node.power_state
    task.node.power_state = POWER_RESULT[target]
    task.node.target_power_state = None
    task.node.last_error = None
    await task.record("power", f"{target}: {old} -> {task.node.power_state}")
    await task.release()


# What to run for a node found in each working state (after an API action or a conductor restart).
RESUMABLE = {
    states.VERIFYING: verify,
    states.CLEANING: clean,
    states.DEPLOYING: deploy,
    states.DELETING: tear_down,
    states.INSPECTING: inspect,
    states.ADOPTING: adopt,
    states.RESCUING: rescue,
    states.UNRESCUING: unrescue,
}
