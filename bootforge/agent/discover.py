"""Discovery mode: the ramdisk of a machine bootforge does not know reports its inventory, then powers off.

Booted with ``bootforge.discovery=<boot id>`` (and ``bootforge.boot_token=``, ``BOOTIF=``) by a discovery
boot script, the agent does not look a node up: it inspects the machine (the same inventory as the
inspect command, without waiting for LLDP), posts it with the boot id and token to
/v1/discovery/report, and powers the machine off itself, since no BMC is known for it yet. A refusal
(404: not expected, 409: already a node's) also ends in power off: there is nothing else to do. A
busy or unreachable conductor (429, 5xx, no connection) is retried with backoff for at most
REPORT_DEADLINE seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import log
from .client import AgentApiError, Client, Conflict, HttpError, NotFound
from .cmdline import BOOT_TOKEN, boot_mac
from .common import Context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

KERNEL_ARG = "bootforge.discovery"
REPORT_PATH = "/v1/discovery/report"
REPORT_DEADLINE = 1800.0
BACKOFF_FIRST = 2.0
BACKOFF_MAX = 30.0


def report(
    client: Client,
    body: dict[str, Any],
    *,
    deadline: float = REPORT_DEADLINE,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any] | None:
    """Post the report until it is answered for good; the answer, or None when refused or given up."""
    end = clock() + deadline
    pause = BACKOFF_FIRST
    while True:
        try:
            _, answer = client.call("POST", REPORT_PATH, body, auth=False)
            return answer if isinstance(answer, dict) else {}
        except (NotFound, Conflict) as exc:
            log(f"discovery: refused ({exc})")
            return None
        except HttpError as exc:
            if exc.status != 429 and exc.status < 500:
                log(f"discovery: refused ({exc})")
                return None
            log(f"discovery: {exc}; retrying in {pause:.0f} s")
        except AgentApiError as exc:  # no connection, a reply we cannot read
            log(f"discovery: {exc}; retrying in {pause:.0f} s")
        if clock() + pause > end:
            log(f"discovery: no answer within {deadline:.0f} s; giving up")
            return None
        sleep(pause)
        pause = min(pause * 2, BACKOFF_MAX)


def power_off(sys_root: str = "/") -> None:
    """Power the machine off now (sysrq 'o' after a sync; nothing on disk is ours to flush)."""
    if os.path.realpath(sys_root) != "/":
        log("discovery: not the real machine (--sys-root): not powering off")
        return
    os.sync()
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("o")
    except OSError as exc:
        log(f"discovery: sysrq power off failed ({exc}); trying poweroff -f")
        os.execvp("poweroff", ["poweroff", "-f"])
    time.sleep(30)  # the kernel powers off meanwhile


def run(api: str, params: dict[str, str], sys_root: str = "/", cafile: str | None = None) -> int:
    from .inspect import collect

    mac = boot_mac(params)
    if mac is None:
        log("discovery: no BOOTIF= on the kernel command line: cannot report")
        power_off(sys_root)
        return 1
    context = Context(sys_root=Path(sys_root), cmdline=dict(params))
    inventory = collect(context)
    log(
        f"discovery: {inventory['cpu']['count']} CPUs, {inventory['memory']['physical_mb']} MiB, "
        f"serial {inventory['system_vendor']['serial_number']!r}, BMC {inventory.get('bmc_address')}"
    )
    body = {
        "mac": mac,
        "boot_id": params.get(KERNEL_ARG, ""),
        "token": params.get(BOOT_TOKEN, ""),
        "inventory": inventory,
    }
    answer = report(Client(api, cafile=cafile), body)
    if answer is not None:
        node = answer.get("node") or {}
        verb = "enrolled as" if answer.get("enrolled") else "known as"
        log(f"discovery: {verb} node {node.get('name') or node.get('uuid')}; powering off")
    power_off(sys_root)
    return 0 if answer is not None else 1
