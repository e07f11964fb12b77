"""Why a node did not boot or deploy: its state, last_error and timeline read as one story, in words.

Pure: no database, no clock of its own (`now` is given). `diagnose(facts, events, now)` returns a
`Verdict` naming where the boot chain stopped, the likely cause, and the failing event (its id, so a
dashboard can highlight it) with the events that show it.

Theory. A ramdisk boot climbs a ladder (MILESTONES): DHCP answered with a boot file -> the firmware
fetched the loader (TFTP or HTTP) -> iPXE fetched the node's boot script -> kernel and initrd fetched
-> the agent looked up -> the agent ran its command. Each rung is recognised from an event's
structured fields (its source `event_type`, `severity`, the `network_boot` mark) and, for netboot
fetches, from the fixed shape the servers write ("tftp FILE OUTCOME: ...", "http METHOD PATH STATUS:
..."; bootforge/cli/netboot.py). The highest rung reached since the attempt started says where it
stopped; RULES, a table checked in order, turn that (and the agent session) into the verdict.

Only the current attempt counts: the events after the latest provisioning change that left a stable
or failed state (an operator's verb), and within a deploy, the hand-off to the disk is its own phase.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from bootforge.conductor import states

__all__ = ["AgentFacts", "Event", "NodeFacts", "Status", "Verdict", "diagnose"]


class Status:
    OK = "ok"  # nothing wrong
    IN_PROGRESS = "in progress"  # working, and the machine was heard from recently
    STALLED = "stalled"  # waiting, but nothing was heard from the machine for a while
    FAILED = "failed"  # the last attempt failed, or the node is in maintenance for a fault

    WRONG = frozenset({STALLED, FAILED})


@dataclass(frozen=True, slots=True)
class Event:
    """One timeline row, as the diagnosis needs it."""

    id: int
    uuid: str
    at: dt.datetime
    source: str  # event_type: dhcp, tftp, http, boot, agent, step, provisioning, power, deploy, ...
    severity: str
    message: str
    network_boot: bool = False


@dataclass(frozen=True, slots=True)
class AgentFacts:
    """The node's agent session: issued at the agent's successful lookup for one ramdisk boot."""

    boot_id: str
    issued_at: dt.datetime
    last_seen: dt.datetime
    command_status: str | None
    error: str | None
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    uuid: str
    name: str | None
    provision_state: str
    target_provision_state: str | None
    power_state: str | None
    last_error: str | None
    maintenance: bool
    maintenance_reason: str | None
    fault: str | None
    provision_updated_at: dt.datetime | None
    # driver_internal_info: the ramdisk boot in progress and the command the agent was given.
    agent_boot: str | None = None
    agent_command: str | None = None
    # Seconds the current wait state may stay silent (deploy_callback_timeout, ...); None: no wait.
    wait_timeout: float | None = None
    # Does the node's boot interface boot the ramdisk from the network (not virtual media)?
    netboot: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str
    stage: str  # a stable name of the rule that decided (for tests and dashboards)
    summary: str  # one sentence: where it stopped
    cause: str  # the likely cause and what to check; "" when nothing is wrong
    failing_event: Event | None
    evidence: tuple[Event, ...]

    @property
    def wrong(self) -> bool:
        return self.status in Status.WRONG


class Rung(IntEnum):
    NOTHING = 0
    DHCP = 1  # some DHCP exchange, without a boot file
    OFFER = 2  # DHCP (or proxyDHCP) offered a boot file
    LOADER = 3  # the firmware fetched a loader (TFTP, or HTTP boot)
    SCRIPT = 4  # iPXE fetched the node's boot script
    KERNEL = 5  # kernel or initrd fetched
    LOOKUP = 6  # the agent looked up (its session was issued)
    COMMAND = 7  # the agent reported on its command


_TFTP = re.compile(r"^tftp (?P<file>.+) (?P<outcome>\S+): \d+ bytes")
_HTTP = re.compile(r"^http (?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}):")
_TRANSITION = re.compile(r"^(?P<old>[a-z -]+) -> (?P<new>[a-z -]+) \((?P<event>[a-z]+)\)")
_LOADER_SUFFIXES = (".efi", ".kpxe", ".pxe", ".0", ".lkrn")
_SCRIPT_PATHS = ("/boot/ipxe", "/boot/grub.cfg")
# drivers/agent.py's boot_ramdisk ends its event with this when it powered the machine into the ramdisk.
_RAMDISK_BOOTED = "the bootforge ramdisk"
# conductor/agent.py's refused lookup: "agent lookup from ADDRESS refused: REASON".
_LOOKUP_REFUSED = re.compile(r"^agent lookup from \S+ refused: (?P<why>.*)$")
_SCRIPT_REFUSED = "boot script refused: "
# conductor/agent.py's successful lookup: "agent looked up from ADDRESS".
_LOOKED_UP = "agent looked up from "
# conductor/work.py's power action, named in the reason of its failure ("change_power failed: ...").
_POWER_WORK = "change_power failed"
# How long a waiting node may stay silent (no event, no agent call) before the wait looks stalled;
# the default of the `diagnosis_quiet` setting.
QUIET = 120.0


@dataclass(frozen=True, slots=True)
class Fetch:
    rung: Rung
    what: str  # "ipxe.efi over TFTP", "GET /bootforge/vmlinuz"
    ok: bool


def classify(e: Event) -> Fetch | None:
    """The rung a netboot event stands for, or None for events that are not part of the boot chain."""
    if e.source == "dhcp":
        kind = e.message.split(" ", 1)[0]
        if e.network_boot:
            return Fetch(Rung.OFFER, kind, True)
        return Fetch(Rung.DHCP, kind, e.severity == "info")
    if e.source == "tftp":
        m = _TFTP.match(e.message)
        if m is None:
            return None
        if m["outcome"] == "size_probe":
            return None  # the firmware asking for the size only: the real fetch follows
        return Fetch(Rung.LOADER, f"{m['file']} over TFTP", m["outcome"] == "completed")
    if e.source == "http" and e.network_boot:
        m = _HTTP.match(e.message)
        if m is None:
            return None
        path, status = m["path"], int(m["status"])
        bare = path.split("?", 1)[0]
        ok = status < 400
        if bare in _SCRIPT_PATHS:
            return Fetch(Rung.SCRIPT, f"{m['method']} {bare}", ok)
        if bare.endswith(_LOADER_SUFFIXES):
            return Fetch(Rung.LOADER, f"{bare.rsplit('/', 1)[-1]} over HTTP", ok)
        return Fetch(Rung.KERNEL, f"{m['method']} {bare}", ok)
    return None


@dataclass
class Story:
    """What the attempt's events show, gathered once for the rules."""

    facts: NodeFacts
    agent: AgentFacts | None
    now: dt.datetime
    attempt: list[Event]  # the current attempt's events, oldest first
    boot: list[Event]  # since the latest ramdisk boot was started (or the attempt, if none)
    booted: Event | None  # the event that says the ramdisk boot was started
    handoff: Event | None  # the deploy's power cycle onto the disk, if it came to that
    rung: Rung = Rung.NOTHING
    top: Event | None = None  # the event of the highest rung reached (its first success)
    failure: Event | None = None  # the provisioning change that failed the attempt
    fetches: dict[Rung, list[tuple[Event, Fetch]]] = field(default_factory=dict)

    def first(self, rung: Rung, ok: bool = True) -> Event | None:
        for e, f in self.fetches.get(rung, []):
            if f.ok == ok:
                return e
        return None

    def what(self, rung: Rung) -> str:
        for _e, f in self.fetches.get(rung, []):
            if f.ok:
                return f.what
        return ""


def _attempt(events: Sequence[Event]) -> list[Event]:
    """The events since the latest provisioning change out of a stable or failed state."""
    start = 0
    for i, e in enumerate(events):
        if e.source != "provisioning":
            continue
        m = _TRANSITION.match(e.message)
        if m and (m["old"] in states.STABLE_STATES or m["old"] in states.FAILED_STATES):
            start = i
    return list(events[start:])


def _story(facts: NodeFacts, agent: AgentFacts | None, events: Sequence[Event], now: dt.datetime) -> Story:
    # By time, not id: netboot events are written in batches, each dated when it happened.
    attempt = _attempt(sorted(events, key=lambda e: (e.at, e.id)))
    booted = None
    handoff = None
    start = 0
    for i, e in enumerate(attempt):
        if e.source == "agent" and e.severity == "info" and e.message.endswith(_RAMDISK_BOOTED):
            booted, start, handoff = e, i, None
        elif e.source == "deploy" and "power cycled onto the disk" in e.message:
            handoff = e
    story = Story(facts, agent, now, attempt, attempt[start:], booted, handoff)
    for e in story.boot:
        fetch = classify(e)
        if fetch is not None:
            story.fetches.setdefault(fetch.rung, []).append((e, fetch))
            if fetch.ok and fetch.rung > story.rung:
                story.rung, story.top = fetch.rung, e
        if e.source == "provisioning" and e.severity == "error":
            story.failure = e
        if e.source == "agent" and e.message.startswith(_LOOKED_UP) and story.rung < Rung.LOOKUP:
            story.rung, story.top = Rung.LOOKUP, e
    if _current(story) and agent is not None:
        rung = Rung.COMMAND if agent.command_status else Rung.LOOKUP
        if rung > story.rung:
            story.rung = rung
    if story.failure is None:
        story.failure = next(
            (e for e in reversed(attempt) if e.source in ("provisioning", "error") and e.severity == "error"),
            None,
        )
    return story


def _current(s: Story) -> bool:
    """Is the agent session the one of this attempt's ramdisk boot?"""
    a = s.agent
    if a is None:
        return False
    if s.facts.agent_boot:
        return a.boot_id == s.facts.agent_boot
    start = s.booted.at if s.booted else (s.attempt[0].at if s.attempt else None)
    return start is not None and a.issued_at >= start


def _quiet_since(s: Story) -> dt.datetime | None:
    """When the machine or its agent was last heard from in this boot (None: never)."""
    heard = [e.at for e in s.boot if classify(e) is not None or e.source == "agent"]
    if s.agent is not None and _current(s):
        heard.append(s.agent.last_seen)
    return max(heard) if heard else None


def _waiting(s: Story) -> bool:
    return s.facts.provision_state in states.WAIT_STATES or (
        s.facts.provision_state in states.TARGETS and s.facts.provision_state not in states.STABLE_STATES
    )


def _is_failed(s: Story) -> bool:
    return s.facts.provision_state in states.FAILED_STATES or (
        s.failure is not None and not _waiting(s) and bool(s.facts.last_error)
    )


def _evidence(s: Story, *extra: Event | None) -> tuple[Event, ...]:
    """The attempt's boot-chain, agent, step and error events (the ones that tell the story), oldest
    first, at most 30, always keeping the given ones."""
    keep = {e.id for e in extra if e is not None}
    chosen = [
        e
        for e in s.attempt
        if e.id in keep
        or e.severity in ("warning", "error")
        or e.source in ("agent", "boot", "step", "provisioning", "deploy", "power", "management")
        or classify(e) is not None
    ]
    if len(chosen) > 30:
        chosen = [e for e in chosen[:-30] if e.id in keep] + chosen[-30:]
    return tuple(chosen)


def _reason(s: Story) -> str:
    return s.facts.last_error or (s.failure.message if s.failure else "")


# --- the rules ----------------------------------------------------------------------------------

Found = tuple[str, str, Event | None] | None  # (summary, cause, failing event) when the rule applies


def rule_maintenance_fault(s: Story) -> Found:
    if s.facts.maintenance and s.facts.fault:
        return (
            f"the node is in maintenance for a fault ({s.facts.fault})",
            s.facts.maintenance_reason or "no reason was recorded",
            next((e for e in reversed(s.attempt) if e.source == "maintenance"), None),
        )
    return None


def rule_agent_failed(s: Story) -> Found:
    a = s.agent
    if a is None or a.command_status != "failed" or not _current(s):
        return None
    event = next((e for e in reversed(s.boot) if e.source == "agent" and e.severity == "error"), None)
    return (
        "the agent ran its command and reported a failure",
        f"the agent said: {a.error or 'no reason'}",
        event,
    )


def rule_handoff(s: Story) -> Found:
    if s.handoff is None:
        return None
    after = [e for e in s.attempt if e.at > s.handoff.at and e.network_boot]
    if not after:
        return None
    return (
        "the image was written and the machine was power cycled onto its disk, but it network-booted again",
        "its disk did not boot: check the boot order and boot mode (an image without a boot loader for "
        "this firmware, BIOS vs UEFI), and the image itself",
        after[0],
    )


def rule_lookup_refused(s: Story) -> Found:
    if s.rung >= Rung.LOOKUP:
        return None
    for e in reversed(s.boot):
        if e.source == "agent" and e.severity == "warning":
            m = _LOOKUP_REFUSED.match(e.message)
            if m:
                return ("the agent's lookup was refused", m["why"], e)
    return None


def rule_script_refused(s: Story) -> Found:
    if s.rung >= Rung.KERNEL:
        return None
    for e in reversed(s.boot):
        if e.source == "boot" and e.message.startswith(_SCRIPT_REFUSED):
            return (
                "the machine asked for its boot script but bootforge refused it the ramdisk",
                e.message.removeprefix(_SCRIPT_REFUSED),
                e,
            )
    return None


def rule_failed_fetch(s: Story) -> Found:
    """A fetch of the rung just above the one reached, which failed (TFTP error, HTTP 404)."""
    for e, f in s.fetches.get(Rung(min(s.rung + 1, Rung.COMMAND)), []):
        if not f.ok:
            return (
                f"the fetch of {f.what} failed",
                f"{e.message}: check that the file exists under the netboot root (`bootforge ramdisk build`) "
                "and that nothing between the machine and bootforge drops the transfer",
                e,
            )
    return None


def rule_no_power(s: Story) -> Found:
    """Failed before the machine was powered into the ramdisk: at the BMC, or in what came before."""
    if not _is_failed(s) or s.booted is not None or s.rung > Rung.NOTHING or s.handoff is not None:
        return None
    if _current(s):
        return None
    reason = _reason(s)
    m = _TRANSITION.match(s.failure.message) if s.failure else None
    node = s.facts.name or s.facts.uuid
    check = f"`bootforge node bmc {node}` checks that the BMC answers and takes its credentials"
    if m and m["old"] == states.VERIFYING:
        return (
            "bootforge could not read the machine's power state through its BMC",
            f"{reason}; {check}",
            s.failure,
        )
    if s.failure is not None and s.failure.source == "error" and reason.startswith(_POWER_WORK):
        return ("the power action failed at the BMC", f"{reason}; {check}", s.failure)
    step = next((e for e in reversed(s.attempt) if e.source == "step"), None)
    if step is not None:
        return (
            f"the attempt failed before the machine was powered into the ramdisk ({step.message})",
            f"the BMC call (boot device, power on) or the step's preparation failed: {reason}",
            s.failure,
        )
    return ("the attempt failed before anything was done to the machine", reason, s.failure)


def rule_ladder(s: Story) -> Found:
    """Where the network boot chain stopped, for a failed or stalled ramdisk boot."""
    if s.rung >= Rung.COMMAND:
        return None
    if not s.facts.netboot:
        if s.rung >= Rung.LOOKUP:
            return None
        return (
            "the ramdisk was booted from virtual media but its agent never looked up",
            "check that the BMC inserted and booted the ISO (the node's console), and that the ramdisk "
            "reaches the API (its network_data and the API's address)",
            s.booted,
        )
    r, top = s.rung, s.top
    if r == Rung.NOTHING and s.booted is None and not _is_failed(s):
        return None  # not powered into the ramdisk yet: nothing to say about the boot chain
    if r == Rung.LOOKUP:
        return (
            "the agent looked up but never reported on its command",
            "the agent may have crashed or lost the network: see the node's console",
            top,
        )
    if r == Rung.KERNEL:
        fetched = ", ".join(sorted({f.what for _e, f in s.fetches.get(Rung.KERNEL, []) if f.ok}))
        return (
            f"the machine fetched the ramdisk ({fetched}) but its agent never looked up",
            "the kernel or the ramdisk did not come up, or its agent cannot reach the API: check the "
            "node's console (a kernel panic, no NIC driver, no DHCP in the ramdisk, the API URL on the "
            "kernel command line)",
            top,
        )
    if r == Rung.SCRIPT:
        return (
            "iPXE fetched the boot script but never fetched the kernel or initrd",
            "the script's kernel/initrd URLs are not reachable from the machine (netboot.address, "
            "http_port, a firewall), or iPXE failed on them: see the node's console",
            top,
        )
    if r == Rung.LOADER:
        return (
            f"the firmware fetched the loader ({s.what(Rung.LOADER)}) but never asked for the script",
            "iPXE started but did not reach bootforge's HTTP boot server: check netboot.address and "
            "http_port are reachable from the machine, that iPXE got an address (DHCP for iPXE's own "
            "request), and under Secure Boot that the loader is signed",
            top,
        )
    if r == Rung.OFFER:
        return (
            "DHCP offers were sent but the machine never requested the boot file",
            "check the firmware's boot order and network boot setting, Secure Boot (an unsigned loader "
            "is refused), and that TFTP (udp/69) or HTTP boot is reachable from the machine",
            top,
        )
    if r == Rung.DHCP:
        return (
            "the machine spoke DHCP but was never offered a boot file",
            "its DHCP requests did not look like a network boot (no PXE/HTTP client class) or the node "
            "has no PXE-enabled port with this MAC: check the node's ports and the firmware's network boot",
            top,
        )
    return (
        "nothing was heard from the machine after it was powered on to boot the ramdisk",
        "no DHCP request reached bootforge: check that the machine powered on, that it boots from the "
        "network (boot order, the BMC's boot device), the provisioning port's cabling and VLAN, that "
        "the node's port MAC is the NIC that boots, and that bootforge's DHCP listens on that network",
        s.booted,
    )


def rule_generic_failure(s: Story) -> Found:
    if not _is_failed(s):
        return None
    return ("the last attempt failed", _reason(s) or "no reason was recorded", s.failure)


Rule = Callable[[Story], Found]
# (stage, rule, applies to): "failed" rules run for failed nodes, "stalled" ones for waiting nodes
# whose machine went quiet; the first rule that finds something decides.
RULES: tuple[tuple[str, Rule, frozenset[str]], ...] = (
    ("maintenance-fault", rule_maintenance_fault, frozenset({"failed", "stalled", "idle"})),
    ("agent-command-failed", rule_agent_failed, frozenset({"failed", "stalled"})),
    ("handoff-network-boot", rule_handoff, frozenset({"failed", "stalled"})),
    ("lookup-refused", rule_lookup_refused, frozenset({"failed", "stalled"})),
    ("script-refused", rule_script_refused, frozenset({"failed", "stalled"})),
    ("fetch-failed", rule_failed_fetch, frozenset({"failed", "stalled"})),
    ("before-power-on", rule_no_power, frozenset({"failed"})),
    ("boot-chain", rule_ladder, frozenset({"failed", "stalled"})),
    ("failed", rule_generic_failure, frozenset({"failed"})),
)


def _fmt(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _progress_text(progress: dict[str, Any]) -> str:
    done, total = progress.get("done"), progress.get("total")
    text = str(progress.get("message") or "running")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        text += f" ({done * 100 // total} %)"
    return text


def diagnose(
    facts: NodeFacts,
    events: Sequence[Event],
    now: dt.datetime,
    agent: AgentFacts | None = None,
    quiet: float = QUIET,
) -> Verdict:
    """Where the node's current or last attempt stands or stopped, and why. `events` oldest first."""
    s = _story(facts, agent, events, now)
    waiting = _waiting(s)
    heard = _quiet_since(s)
    since = max((t for t in (facts.provision_updated_at, heard) if t is not None), default=None)
    if _is_failed(s):
        mode = "failed"
    elif waiting and since is not None and (now - since).total_seconds() >= quiet:
        mode = "stalled"
    elif waiting:
        mode = "busy"
    else:
        mode = "idle"
    for stage, rule, modes in RULES:
        if mode not in modes:
            continue
        found = rule(s)
        if found is None:
            continue
        summary, cause, failing = found
        status = Status.FAILED if mode in ("failed", "idle") else Status.STALLED
        if mode == "stalled":
            summary = f"{_wait_text(s, since)}; {summary}"
        return Verdict(status, stage, summary, cause, failing, _evidence(s, failing))
    if waiting:
        return Verdict(
            Status.STALLED if mode == "stalled" else Status.IN_PROGRESS,
            "waiting",
            _wait_text(s, since) + _doing(s),
            "",
            None,
            _evidence(s),
        )
    summary = (
        f"nothing wrong: the node is {facts.provision_state}, {facts.power_state or 'power state unknown'}"
    )
    if facts.maintenance:
        summary += f" (in maintenance: {facts.maintenance_reason or 'no reason given'})"
    if facts.last_error:
        # Kept by the node from an attempt before this one, which ended well.
        summary += f"; the last error, from an earlier attempt: {facts.last_error}"
    return Verdict(Status.OK, "healthy", summary, "", None, ())


def _wait_text(s: Story, since: dt.datetime | None) -> str:
    f = s.facts
    if f.provision_state not in states.WAIT_STATES:
        target = f" -> {f.target_provision_state}" if f.target_provision_state else ""
        heard = f", last news at {_fmt(since)}" if since is not None else ""
        return f"{f.provision_state}{target}{heard}"
    text = f"{f.provision_state}: waiting for the agent"
    if since is not None:
        text += f" since {_fmt(since)}"
        if f.wait_timeout:
            text += f" (timeout at {_fmt(since + dt.timedelta(seconds=f.wait_timeout))})"
    return text


def _doing(s: Story) -> str:
    a = s.agent
    if a is not None and _current(s) and a.command_status == "running":
        return f"; the agent runs {s.facts.agent_command or 'its command'}: {_progress_text(a.progress)}"
    if s.rung > Rung.NOTHING and s.top is not None:
        return f"; so far: {s.top.message}"
    return ""
