"""The diagnosis rules (bootforge.conductor.diagnosis) over real timelines.

The event texts below are copied from real runs, not written for the test: the network boot chain from
tests/integration/test_lab_boot.py's UEFI and BIOS VMs (OVMF's PXE -> TFTP ipxe.efi -> iPXE -> HTTP
script, kernel, initrd; SeaBIOS' iPXE ROM straight to the script), the agent's lookup, write and
hand-off from tests/integration/test_agent_deploy_loopback.py (a real serve and agent process), with
only MACs, UUIDs and times shortened. Failure texts are the formats the conductor writes
(conductor.py's timeout check, task.transition's "old -> new (event): error", agent.py's refusals).
`network_boot` is set as bootforge/cli/netboot.py sets it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootforge.conductor.diagnosis import AgentFacts, Event, NodeFacts, Status, diagnose

T0 = dt.datetime(2026, 12, 7, 15, 39, 20, tzinfo=dt.UTC)
UUID = "6f1c1b9e-5f7e-4c55-9d35-0b3f1b2a7c11"
BOOT = "b00710d0-0000-4000-8000-000000000001"
MAC = "52:54:00:77:00:01"

Row = tuple[float, str, str, str]  # seconds after T0, source, severity, message

ENROL: list[Row] = [
    (0.0, "provisioning", "info", "created in enroll"),
    (0.1, "port", "info", f"port {MAC} added"),
    (0.2, "provisioning", "info", "enroll -> verifying (manage)"),
    (0.3, "provisioning", "info", "verifying -> manageable (done)"),
    (1.0, "provisioning", "info", "manageable -> cleaning (provide)"),
    (1.1, "step", "info", "clean step deploy.erase_devices_metadata started"),
    (1.2, "agent", "info", "cleaning: network-booting the bootforge ramdisk"),
    (1.3, "agent", "info", "waiting for the agent to erase disk metadata (command erase a2a42ea2)"),
    (1.4, "step", "info", "clean step deploy.erase_devices_metadata waits for the agent"),
    (1.5, "provisioning", "info", "cleaning -> clean wait (wait)"),
    (30.0, "agent", "info", "agent looked up from 10.77.0.100"),
    (31.0, "agent", "info", "erase succeeded: disks /dev/vda"),
    (31.1, "provisioning", "info", "clean wait -> cleaning (resume)"),
    (31.2, "provisioning", "info", "cleaning -> available (done)"),
]
DEPLOY: list[Row] = [
    (40.0, "update", "info", "updated instance_info"),
    (40.1, "provisioning", "info", "available -> deploying (active)"),
    (40.2, "deploy", "info", "image tiny -> http://10.77.0.1:8080/images/f697ec8e.simg (simg)"),
    (40.3, "step", "info", "deploy step deploy.deploy started"),
    (40.4, "agent", "info", "deployment: network-booting the bootforge ramdisk"),
    (
        40.5,
        "agent",
        "info",
        "waiting for the agent to write http://10.77.0.1:8080/images/f697ec8e.simg "
        "(command write_image 5a5995b9)",
    ),
    (40.6, "step", "info", "deploy step deploy.deploy waits for the agent"),
    (40.7, "provisioning", "info", "deploying -> wait call-back (wait)"),
]
# OVMF: PXE, TFTP ipxe.efi, then iPXE's own DHCP and the script, kernel, initrd over HTTP.
UEFI_CHAIN: list[Row] = [
    (45.0, "dhcp", "info", f"dhcp.offer {MAC} 10.77.0.100 on br0: pxe x64-uefi boot=ipxe.efi"),
    (48.6, "dhcp", "info", f"dhcp.ack {MAC} 10.77.0.100 on br0: pxe x64-uefi boot=ipxe.efi"),
    (
        48.7,
        "tftp",
        "info",
        "tftp ipxe.efi size_probe: 0 bytes in 0.00 s (blksize 1468, windowsize 4, 0 retransmits): "
        "User aborted the transfer",
    ),
    (
        48.8,
        "tftp",
        "info",
        "tftp ipxe.efi completed: 850528 bytes in 0.08 s (blksize 1468, windowsize 4, 0 retransmits)",
    ),
    (
        55.1,
        "dhcp",
        "info",
        f"dhcp.offer {MAC} 10.77.0.100 on br0: ipxe x64-uefi boot=http://10.77.0.1:8080/boot/ipxe?mac={MAC}",
    ),
    (
        55.2,
        "dhcp",
        "info",
        f"dhcp.ack {MAC} 10.77.0.100 on br0: ipxe x64-uefi boot=http://10.77.0.1:8080/boot/ipxe?mac={MAC}",
    ),
    (55.3, "http", "info", "http GET /boot/ipxe 200: 1733 bytes in 0.00 s"),
    (55.5, "http", "info", "http GET /bootforge/vmlinuz 200: 8247232 bytes in 0.18 s"),
    (55.6, "http", "info", "http GET /bootforge/initrd 200: 1150417 bytes in 0.10 s"),
    # The ramdisk's own DHCP: no boot file.
    (60.1, "dhcp", "info", f"dhcp.offer {MAC} 10.77.0.100 on br0"),
    (60.2, "dhcp", "info", f"dhcp.ack {MAC} 10.77.0.100 on br0"),
]
BIOS_CHAIN: list[Row] = [
    (
        45.0,
        "dhcp",
        "info",
        f"dhcp.offer {MAC} 10.77.0.100 on br0: ipxe x86-bios boot=http://10.77.0.1:8080/boot/ipxe?mac={MAC}",
    ),
    (
        45.1,
        "dhcp",
        "info",
        f"dhcp.ack {MAC} 10.77.0.100 on br0: ipxe x86-bios boot=http://10.77.0.1:8080/boot/ipxe?mac={MAC}",
    ),
    (45.2, "http", "info", "http GET /boot/ipxe 200: 1733 bytes in 0.00 s"),
    (45.4, "http", "info", "http GET /bootforge/vmlinuz 200: 8247232 bytes in 0.26 s"),
    (45.5, "http", "info", "http GET /bootforge/initrd 200: 1150417 bytes in 0.04 s"),
]
AGENT_DONE: list[Row] = [
    (62.0, "agent", "info", "agent looked up from 10.77.0.100"),
    (
        70.0,
        "agent",
        "info",
        "write_image succeeded: root device /dev/vda, 4 MiB written, 4 MiB zeroed, sha256 abd8909f, in 0.0 s",
    ),
    (70.1, "provisioning", "info", "wait call-back -> deploying (resume)"),
    (70.2, "step", "info", "deploy step deploy.boot_instance started"),
    (70.3, "deploy", "info", "power cycled onto the disk; watching 1 s for a network boot"),
]
HANDED_OVER: list[Row] = [
    (71.3, "deploy", "info", "handoff seen: no network boot from the machine within 1 s"),
    (71.4, "step", "info", "deploy step deploy.boot_instance done"),
    (71.5, "provisioning", "info", "deploying -> active (done)"),
]


def timeout(at: float, state: str = "wait call-back", fail: str = "deploy failed", agent: str = "") -> Row:
    heard = agent or "no agent called from the ramdisk"
    return (
        at,
        "provisioning",
        "error",
        f"{state} -> {fail} (fail): Timeout reached while waiting for callback for node {UUID} in state "
        f"'{state}' after 1800 s: {heard}",
    )


def marked(source: str, message: str) -> bool:
    """network_boot as bootforge/cli/netboot.py sets it."""
    if source == "dhcp":
        return " boot=" in message
    if source == "tftp":
        return True
    if source == "http":
        path = message.split(" ")[2]
        return not path.startswith(("/images/", "/vmedia/"))
    return False


def events(rows: list[Row]) -> list[Event]:
    return [
        Event(i + 1, f"e{i + 1}", T0 + dt.timedelta(seconds=t), src, sev, msg, marked(src, msg))
        for i, (t, src, sev, msg) in enumerate(rows)
    ]


def facts(state: str, last_error: str | None = None, **kw: Any) -> NodeFacts:
    values: dict[str, Any] = {
        "uuid": UUID,
        "name": "lab-vm1",
        "provision_state": state,
        "target_provision_state": {"wait call-back": "active", "clean wait": "available"}.get(state),
        "power_state": "power on",
        "last_error": last_error,
        "maintenance": False,
        "maintenance_reason": None,
        "fault": None,
        "provision_updated_at": T0 + dt.timedelta(seconds=40.7),
        "agent_boot": BOOT,
        "agent_command": "write_image",
        "wait_timeout": 1800.0,
    }
    values.update(kw)
    return NodeFacts(**values)


def failed(rows: list[Row]) -> NodeFacts:
    return facts("deploy failed", rows[-1][3].split(": ", 1)[1], target_provision_state=None)


def session(status: str | None, error: str | None = None, at: float = 62.0, **progress: Any) -> AgentFacts:
    when = T0 + dt.timedelta(seconds=at)
    return AgentFacts(BOOT, when, when, status, error, progress)


NOW = T0 + dt.timedelta(seconds=2000)


def test_a_deployed_node_is_healthy() -> None:
    rows = ENROL + DEPLOY + UEFI_CHAIN + AGENT_DONE + HANDED_OVER
    v = diagnose(facts("active", agent_boot=None, target_provision_state=None), events(rows), NOW)
    assert v.status == Status.OK and not v.wrong
    assert v.summary == "nothing wrong: the node is active, power on"
    assert v.failing_event is None and v.evidence == ()


# (name, the chain up to where it stopped, stage, words the summary must say, the failing event's text)
STOPPED = [
    (
        "dhcp offered, no boot file fetched",
        UEFI_CHAIN[:2],
        "DHCP offers were sent but the machine never requested the boot file",
        "Secure Boot",
        "dhcp.offer",
    ),
    (
        # OVMF asked for the loader's size and went no further: a size probe is not a fetch.
        "dhcp offered, only a size probe",
        UEFI_CHAIN[:3],
        "DHCP offers were sent but the machine never requested the boot file",
        "Secure Boot",
        "dhcp.offer",
    ),
    (
        "loader fetched, no script",
        UEFI_CHAIN[:6],
        "the firmware fetched the loader (ipxe.efi over TFTP) but never asked for the script",
        "HTTP boot server",
        "tftp ipxe.efi completed",
    ),
    (
        "script fetched, no kernel",
        UEFI_CHAIN[:7],
        "iPXE fetched the boot script but never fetched the kernel or initrd",
        "kernel/initrd URLs",
        "http GET /boot/ipxe 200",
    ),
    (
        "kernel and initrd fetched, no lookup (uefi)",
        UEFI_CHAIN,
        "the machine fetched the ramdisk (GET /bootforge/initrd, GET /bootforge/vmlinuz) but its agent "
        "never looked up",
        "console",
        "http GET /bootforge/vmlinuz 200",
    ),
    (
        "kernel and initrd fetched, no lookup (bios)",
        BIOS_CHAIN,
        "the machine fetched the ramdisk (GET /bootforge/initrd, GET /bootforge/vmlinuz) but its agent "
        "never looked up",
        "kernel panic",
        "http GET /bootforge/vmlinuz 200",
    ),
    (
        "nothing heard at all",
        [],
        "nothing was heard from the machine after it was powered on to boot the ramdisk",
        "boot order",
        "deployment: network-booting the bootforge ramdisk",
    ),
]


@pytest.mark.parametrize(
    ("name", "chain", "summary", "cause", "failing"), STOPPED, ids=[s[0] for s in STOPPED]
)
def test_a_timed_out_deploy_says_where_the_boot_chain_stopped(
    name: str, chain: list[Row], summary: str, cause: str, failing: str
) -> None:
    rows = ENROL + DEPLOY + chain + [timeout(1900.0)]
    v = diagnose(failed(rows), events(rows), NOW)
    assert v.status == Status.FAILED and v.wrong
    assert v.stage == "boot-chain"
    assert v.summary == summary
    assert cause in v.cause
    assert v.failing_event is not None and v.failing_event.message.startswith(failing)
    assert v.failing_event in v.evidence
    # The evidence is this attempt's: nothing of the cleaning before it.
    assert all(e.at >= T0 + dt.timedelta(seconds=40.1) for e in v.evidence)


def test_a_refused_lookup_gives_the_reason_from_the_timeline() -> None:
    refused = (
        62.0,
        "agent",
        "warning",
        "agent lookup from 10.77.0.100 refused: its boot token is wrong (not the one of the node's current "
        "ramdisk boot)",
    )
    rows = ENROL + DEPLOY + UEFI_CHAIN + [refused, timeout(1900.0)]
    v = diagnose(failed(rows), events(rows), NOW)
    assert v.stage == "lookup-refused"
    assert v.summary == "the agent's lookup was refused"
    assert v.cause == "its boot token is wrong (not the one of the node's current ramdisk boot)"
    assert v.failing_event is not None and v.failing_event.severity == "warning"


def test_a_refused_boot_script_is_the_cause_when_no_kernel_followed() -> None:
    refusal = (
        55.3,
        "boot",
        "warning",
        "boot script refused: node lab-vm1's ramdisk script was asked for from an address that bootforge's "
        f"DHCP did not lease to {MAC} (leased: 10.77.0.100)",
    )
    rows = ENROL + DEPLOY + UEFI_CHAIN[:6] + [refusal, (55.31, *UEFI_CHAIN[6][1:]), timeout(1900.0)]
    v = diagnose(failed(rows), events(rows), NOW)
    assert v.stage == "script-refused"
    assert v.cause.startswith("node lab-vm1's ramdisk script was asked for from an address")


def test_a_failed_agent_command_quotes_the_agent() -> None:
    error = "write_image failed: no disk matches the root device hints {'size': 100}"
    rows = (
        ENROL
        + DEPLOY
        + BIOS_CHAIN
        + [
            (62.0, "agent", "info", "agent looked up from 10.77.0.100"),
            (63.0, "agent", "error", error),
            (
                63.1,
                "provisioning",
                "error",
                "wait call-back -> deploy failed (fail): the agent's write_image failed: no disk matches the "
                "root device hints {'size': 100}",
            ),
        ]
    )
    agent = session("failed", "no disk matches the root device hints {'size': 100}")
    v = diagnose(failed(rows), events(rows), NOW, agent)
    assert v.stage == "agent-command-failed"
    assert v.cause == "the agent said: no disk matches the root device hints {'size': 100}"
    assert v.failing_event is not None and v.failing_event.message == error


def test_a_failure_before_the_ramdisk_boot_is_put_on_the_bmc_or_the_preparation() -> None:
    # From the loopback run: the image's checksum was wrong, found before the machine was touched.
    rows = [
        *ENROL,
        (40.1, "provisioning", "info", "available -> deploying (active)"),
        (
            40.2,
            "provisioning",
            "error",
            "deploying -> deploy failed (fail): deploy failed: image checksum mismatch for tiny: expected "
            "sha256 0000, got 6988",
        ),
    ]
    v = diagnose(failed(rows), events(rows), NOW, None)
    assert v.stage == "before-power-on"
    assert v.summary == "the attempt failed before anything was done to the machine"
    assert "image checksum mismatch" in v.cause
    # A BMC that refused the power on inside the deploy step.
    bmc = "deploy failed: IPMI BMC at 192.0.2.9:623: power on failed: insufficient privilege"
    rows = ENROL + DEPLOY[:4] + [(40.4, "provisioning", "error", f"deploying -> deploy failed (fail): {bmc}")]
    v = diagnose(failed(rows), events(rows), NOW, None)
    assert v.stage == "before-power-on"
    assert v.summary == (
        "the attempt failed before the machine was powered into the ramdisk "
        "(deploy step deploy.deploy started)"
    )
    assert v.cause.endswith(bmc) and "BMC call" in v.cause


def test_a_failed_verification_points_at_the_bmc() -> None:
    reason = "verify failed: QMP socket /run/lab/vm1.qmp: connection refused"
    rows = [*ENROL[:3], (0.4, "provisioning", "error", f"verifying -> enroll (fail): {reason}")]
    v = diagnose(facts("enroll", reason, agent_boot=None), events(rows), NOW)
    assert v.status == Status.FAILED
    assert v.summary == "bootforge could not read the machine's power state through its BMC"
    assert v.cause.startswith(reason) and "bootforge node bmc lab-vm1" in v.cause


def test_a_disk_that_does_not_boot_shows_as_a_network_boot_after_the_handoff() -> None:
    again = (75.0, "dhcp", "info", f"dhcp.offer {MAC} 10.77.0.100 on br0: pxe x64-uefi boot=ipxe.efi")
    fail = (
        76.0,
        "provisioning",
        "error",
        "deploying -> deploy failed (fail): deploy failed: the machine network-booted again after it was "
        f"handed over to its disk, so its disk did not boot: {again[3]}",
    )
    rows = ENROL + DEPLOY + UEFI_CHAIN + AGENT_DONE + [again, fail]
    v = diagnose(failed(rows), events(rows), NOW, session("succeeded"))
    assert v.stage == "handoff-network-boot"
    assert v.failing_event is not None and v.failing_event.at == T0 + dt.timedelta(seconds=75)
    assert "boot order and boot mode" in v.cause


def test_a_waiting_node_says_since_when_and_until_when() -> None:
    rows = ENROL + DEPLOY + UEFI_CHAIN[:2]
    # Heard from 3 s ago: in progress, nothing wrong yet.
    now = T0 + dt.timedelta(seconds=51.6)
    v = diagnose(facts("wait call-back"), events(rows), now)
    assert v.status == Status.IN_PROGRESS and not v.wrong
    assert v.summary.startswith("wait call-back: waiting for the agent since 2026-12-07 15:40:08 UTC")
    assert "(timeout at 2026-12-07 16:10:08 UTC)" in v.summary
    # Silent for 10 minutes: stalled, with where the chain stopped.
    later = T0 + dt.timedelta(seconds=648.6)
    v = diagnose(facts("wait call-back"), events(rows), later)
    assert v.status == Status.STALLED and v.wrong
    assert v.stage == "boot-chain"
    assert "DHCP offers were sent but the machine never requested the boot file" in v.summary


def test_an_agent_at_work_is_in_progress_with_its_report() -> None:
    rows = ENROL + DEPLOY + BIOS_CHAIN + [(62.0, "agent", "info", "agent looked up from 10.77.0.100")]
    agent = session("running", at=900.0, done=512 * 1024**2, total=2048 * 1024**2, message="writing /dev/vda")
    v = diagnose(facts("wait call-back"), events(rows), T0 + dt.timedelta(seconds=905), agent)
    assert v.status == Status.IN_PROGRESS
    assert v.summary.endswith("the agent runs write_image: writing /dev/vda (25 %)")


def test_a_power_failure_maintenance_is_wrong_even_when_idle() -> None:
    reason = "3 power state reads failed in a row: IPMI BMC at 192.0.2.9:623: timed out"
    v = diagnose(
        facts(
            "available",
            None,
            agent_boot=None,
            maintenance=True,
            maintenance_reason=reason,
            fault="power failure",
            target_provision_state=None,
        ),
        events(ENROL),
        NOW,
    )
    assert v.status == Status.FAILED and v.stage == "maintenance-fault" and v.cause == reason


NOISE = [
    ("update", "info", "updated extra"),
    ("power", "info", "power state changed outside bootforge: power off -> power on"),
    ("management", "info", "boot device set to pxe (persistent=False)"),
    ("http", "info", "http GET /images/f697ec8e.simg 206: 1048576 bytes in 0.01 s (range bytes=0-1048575)"),
]


@settings(max_examples=60, deadline=None)
@given(
    stop=st.integers(min_value=0, max_value=len(UEFI_CHAIN)),
    noise=st.lists(st.tuples(st.floats(min_value=40.8, max_value=1899), st.sampled_from(NOISE)), max_size=8),
)
def test_unrelated_events_never_change_the_verdict(
    stop: int, noise: list[tuple[float, tuple[str, str, str]]]
) -> None:
    """Anywhere the chain stops, power syncs, updates and image range reads around it change nothing,
    and the failing event is always one of the attempt's, dated before the failure."""
    rows = ENROL + DEPLOY + UEFI_CHAIN[:stop] + [timeout(1900.0)]
    plain = diagnose(failed(rows), events(rows), NOW)
    noisy_rows = sorted(rows + [(t, *n) for t, n in noise], key=lambda r: r[0])
    noisy = diagnose(failed(rows), events(noisy_rows), NOW)
    assert (noisy.stage, noisy.summary, noisy.cause) == (plain.stage, plain.summary, plain.cause)
    assert noisy.failing_event is not None and plain.failing_event is not None
    assert noisy.failing_event.message == plain.failing_event.message
    assert T0 + dt.timedelta(seconds=40.1) <= noisy.failing_event.at < T0 + dt.timedelta(seconds=1900)


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(list(range(len(UEFI_CHAIN)))))
def test_events_written_out_of_order_are_read_by_time(order: list[int]) -> None:
    """Netboot events reach the table in batches, so ids do not follow time: the verdict does not care."""
    rows = ENROL + DEPLOY + UEFI_CHAIN[:7] + [timeout(1900.0)]
    evs = events(rows)
    head, chain, tail = evs[: len(ENROL + DEPLOY)], evs[len(ENROL + DEPLOY) : -1], evs[-1:]
    shuffled = [chain[i] for i in order if i < len(chain)]
    renumbered = [
        Event(len(head) + 1 + k, e.uuid, e.at, e.source, e.severity, e.message, e.network_boot)
        for k, e in enumerate(shuffled)
    ]
    v = diagnose(failed(rows), head + renumbered + tail, NOW)
    assert v.summary == "iPXE fetched the boot script but never fetched the kernel or initrd"


def test_a_node_stuck_before_its_ramdisk_boot_is_stalled_without_blaming_the_network() -> None:
    # The deploy step started, then nothing: a BMC call that hangs (its timeout will fail the node).
    rows = ENROL + DEPLOY[:4]
    state = facts(
        "deploying",
        target_provision_state="active",
        provision_updated_at=T0 + dt.timedelta(seconds=40.1),
        agent_boot=None,
    )
    v = diagnose(state, events(rows), T0 + dt.timedelta(seconds=40.3 + 200))
    assert v.status == Status.STALLED and v.stage == "waiting"
    assert v.summary == "deploying -> active, last news at 2026-12-07 15:40:00 UTC"
    assert "DHCP" not in v.summary + v.cause


def test_an_error_of_an_earlier_attempt_is_mentioned_but_nothing_is_wrong() -> None:
    old = "the agent's write_image failed: no disk matches the root device hints {'size': 100}"
    rows = (
        ENROL
        + DEPLOY
        + [
            (63.1, "provisioning", "error", f"wait call-back -> deploy failed (fail): {old}"),
            (64.0, "provisioning", "info", "deploy failed -> deleting (undeploy)"),
            (64.1, "provisioning", "info", "deleting -> cleaning (clean)"),
            (65.0, "provisioning", "info", "cleaning -> available (done)"),
        ]
    )
    state = facts("available", old, target_provision_state=None, agent_boot=None, power_state="power off")
    v = diagnose(state, events(rows), NOW)
    assert v.status == Status.OK and not v.wrong
    assert v.summary == (
        f"nothing wrong: the node is available, power off; the last error, from an earlier attempt: {old}"
    )
