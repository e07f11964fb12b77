"""The firmware matrix (issue #12): every firmware the lab can boot, in every DHCP mode, each timed
from power on to the moment its ramdisk reached bootforge.

    .venv/bin/python bench/firmware_matrix.py                 # one case at a time (times for the README)
    .venv/bin/python bench/firmware_matrix.py --concurrent    # one lab per DHCP mode, its VMs at once
    .venv/bin/python bench/firmware_matrix.py --json out.json --only uefi,uefi-sb

tests/integration/test_firmware_matrix.py runs the concurrent form (its CI cost is one lab per DHCP
mode); this script's default runs each case alone in its own lab, so that a time is not inflated by
the other VMs sharing the CPU. Run it as root, under the lab lock when other lab tests may run:
`flock /tmp/bootforge-lab.lock .venv/bin/python bench/firmware_matrix.py`.

What "reached" means per mode:
- In every mode (bootforge's DHCP; proxy beside the lab's site dnsmasq; bootforge's DHCPv6; proxy
  beside Kea) the deploy ramdisk's agent looked up (the `inspect` verb powers the VM on; both moments
  are the node's timeline events, so the time is the conductor's power-on -> lookup). Over IPv6 the
  ramdisk takes a SLAAC address when its API URL is IPv6, and looks up from it.
Cases the firmware or the lab cannot do are listed with the reason, never dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.lab import LabHandle  # noqa: E402 (found through the path above)

from bootforge.drivers import qemu_machine as vm  # noqa: E402
from bootforge.lab.lab import Lab, LabError, VmRecord  # noqa: E402

# A DHCP mode: (bootforge's dhcp setting, IPv6?).
Mode = tuple[str, bool]
MODES: list[Mode] = [("full", False), ("proxy", False), ("full", True), ("proxy", True)]
MODE_LABELS = {
    ("full", False): "bootforge DHCPv4",
    ("proxy", False): "proxy + dnsmasq",
    ("full", True): "bootforge DHCPv6",
    ("proxy", True): "proxy + Kea (v6)",
}
# One case's bound, power on -> reached: TCG (Secure Boot's SMM, arm64) with up to 5 VMs sharing 2 cores.
CASE_TIMEOUT = 900.0
MEMORY_MIB = 768  # the agent ramdisk unpacked plus Python; small enough for 5 VMs at once

_NO_V6_ARM64 = "arm64 boots the signed shim -> GRUB chain, which bootforge offers over DHCPv4 only"
_NO_V6_SHIM = "bootforge offers the signed chain (shim) over DHCPv4 only; lab up --ipv6 refuses uefi-sb"
_NO_V6_ROM = "not in #12's matrix: QEMU's iPXE ROM over IPv6 was not tried here"
_NO_ARM64_HTTP = "the lab has no AAVMF HTTP-boot VM (arm64 boots shim -> GRUB over TFTP; no arm64 iPXE)"
V6: list[Mode] = [("full", True), ("proxy", True)]


@dataclass(frozen=True)
class Firmware:
    label: str
    lab: str | None  # the lab's firmware name; None: the lab has no such VM
    # Why it is not run in a mode (per mode); a mode missing here is run.
    skip: dict[Mode, str]


FIRMWARES = [
    Firmware("SeaBIOS (QEMU's iPXE ROM)", "bios", dict.fromkeys(V6, _NO_V6_ROM)),
    Firmware("OVMF PXE", "uefi", {}),
    Firmware("OVMF HTTP boot", "uefi-http", {}),
    # In proxy mode beside dnsmasq the signed chains need the site's next-server to be bootforge
    # (signed GRUB reads its TFTP server from the site's ACK), which the lab's dnsmasq names.
    Firmware("OVMF Secure Boot enforced (MS keys, SMM)", "uefi-sb", dict.fromkeys(V6, _NO_V6_SHIM)),
    Firmware("AAVMF arm64 PXE", "arm64", dict.fromkeys(V6, _NO_V6_ARM64)),
    Firmware("AAVMF arm64 HTTP boot", None, dict.fromkeys(MODES, _NO_ARM64_HTTP)),
]


@dataclass
class Result:
    firmware: str
    mode: str
    status: str  # "reached", "failed", "skipped"
    seconds: float | None = None
    reached: str = ""  # what was reached: the agent's lookup
    detail: str = ""  # a skip's reason, a failure's last events


def host_reason(fw: Firmware, mode: Mode) -> str | None:
    """What this host lacks for a case (a skip), or None."""
    dhcp, ipv6 = mode
    if dhcp == "proxy" and not ipv6 and shutil.which("dnsmasq") is None:
        return "needs dnsmasq (Debian package dnsmasq-base)"
    if dhcp == "proxy" and ipv6 and shutil.which("kea-dhcp6") is None:
        return "needs kea-dhcp6 (Debian package kea-dhcp6-server)"
    if fw.lab in ("arm64", "arm64-sb"):
        if shutil.which(vm.AARCH64_BINARY) is None:
            return f"needs {vm.AARCH64_BINARY} (Debian package qemu-system-arm)"
        try:
            vm.find_ovmf(vm.AAVMF_CANDIDATES)
        except vm.QemuError as e:
            return str(e)
    elif fw.lab != "bios":
        try:
            vm.find_ovmf()
        except vm.QemuError as e:
            return str(e)
    return None


def plan(mode: Mode, only: set[str] | None = None) -> tuple[list[Firmware], list[Result]]:
    """The firmwares to boot in `mode`, and a skipped result for each of the others."""
    run: list[Firmware] = []
    skipped: list[Result] = []
    for fw in FIRMWARES:
        if only is not None and fw.lab not in only:
            continue
        reason = fw.skip.get(mode) or host_reason(fw, mode)
        if reason is None:
            run.append(fw)
        else:
            skipped.append(Result(fw.label, MODE_LABELS[mode], "skipped", detail=reason))
    return run, skipped


def _when(event: dict[str, Any]) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def _last_events(h: LabHandle, rec: VmRecord) -> str:
    return " | ".join(e["event"] for e in h.history(rec)[-8:])


def boot_all(
    h: LabHandle, mode: Mode, firmwares: list[Firmware], timeout: float, say: Callable[[str], None]
) -> list[Result]:
    """Power every VM of the lab on at once and wait until each reached bootforge (or failed)."""
    label = MODE_LABELS[mode]
    recs = list(h.vms)
    by_name = {rec.name: fw for rec, fw in zip(recs, firmwares, strict=True)}
    results: dict[str, Result] = {}
    started: dict[str, float] = {}
    for rec in recs:  # the inspect verb powers each on; its timeline says when
        started[rec.name] = time.monotonic()
        h.verb(rec, "inspect")
    say(f"{label}: {len(recs)} VMs powered on at once: {', '.join(fw.label for fw in firmwares)}")
    deadline = time.monotonic() + timeout
    while len(results) < len(recs):
        for rec in recs:
            if rec.name in results:
                continue
            fw = by_name[rec.name]
            events = h.history(rec)
            lookups = [e for e in events if e["event"].startswith("agent looked up from ")]
            power_on = [e for e in events if "network-booting the bootforge ramdisk" in e["event"]]
            if lookups and power_on:
                took = (_when(lookups[0]) - _when(power_on[0])).total_seconds()
                results[rec.name] = Result(fw.label, label, "reached", round(took, 1), "agent lookup")
            elif h.node(rec)["provision_state"].endswith("failed"):
                results[rec.name] = Result(fw.label, label, "failed", detail=_last_events(h, rec))
            if rec.name in results:
                r = results[rec.name]
                say(
                    f"  {r.firmware} ({label}): {r.status} {r.seconds if r.seconds is not None else r.detail}"
                )
        if time.monotonic() > deadline:
            for rec in recs:
                if rec.name not in results:
                    fw = by_name[rec.name]
                    results[rec.name] = Result(
                        fw.label,
                        label,
                        "failed",
                        detail=f"not reached in {timeout:.0f} s: {_last_events(h, rec)}",
                    )
            break
        time.sleep(1)
    return [results[rec.name] for rec in recs]


# A test's look at each case that got there, before the lab goes down (its timeline, its leases).
Check = Callable[[LabHandle, VmRecord, Firmware], None]


def run_mode(
    root: Path,
    mode: Mode,
    firmwares: list[Firmware],
    timeout: float = CASE_TIMEOUT,
    say: Callable[[str], None] = print,
    check: Check | None = None,
) -> list[Result]:
    """One lab for `mode` with one VM per firmware, all powered on at once; the lab always goes down.
    `check` is called for every case that reached bootforge, while the lab and its VMs are still up
    (their inspection goes on meanwhile)."""
    dhcp, ipv6 = mode
    firmware = ",".join(str(fw.lab) for fw in firmwares)
    directory = Path(tempfile.mkdtemp(prefix=f"matrix-{dhcp}{'6' if ipv6 else '4'}-", dir=root))
    lab = Lab.up(
        directory,
        len(firmwares),
        firmware,
        MEMORY_MIB,
        dhcp,
        start=False,
        say=lambda m: say(f"  lab: {m}"),
        ramdisk="agent",
        ipv6=ipv6,
    )
    try:
        with lab.client() as api:
            h = LabHandle(lab, api)
            results = boot_all(h, mode, firmwares, timeout, say)
            if check is not None:
                for rec, fw, r in zip(h.vms, firmwares, results, strict=True):
                    if r.status == "reached":
                        check(h, rec, fw)
            for rec in h.vms:
                with contextlib.suppress(LabError):  # the lab goes down next anyway
                    h.power(rec, "power off")
            return results
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)


def table(results: list[Result]) -> str:
    """Firmware x DHCP mode, a Markdown table: seconds power on -> reached, or why not."""
    notes: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for r in results:
        if r.status == "reached":
            cell = f"{r.seconds:.1f} s"
        elif r.status == "skipped":
            if r.detail not in notes:
                notes.append(r.detail)
            cell = f"skipped [{notes.index(r.detail) + 1}]"
        else:
            cell = "FAILED"
        cells[(r.firmware, r.mode)] = cell
    modes = [MODE_LABELS[m] for m in MODES]
    lines = ["| firmware | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for fw in FIRMWARES:
        if any((fw.label, m) in cells for m in modes):
            lines.append(f"| {fw.label} | " + " | ".join(cells.get((fw.label, m), "-") for m in modes) + " |")
    lines += [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    failed = [r for r in results if r.status == "failed"]
    lines += [f"FAILED {r.firmware} ({r.mode}): {r.detail}" for r in failed]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrent", action="store_true", help="one lab per mode, its VMs at once")
    parser.add_argument("--only", help="comma-separated lab firmwares (bios,uefi,uefi-http,uefi-sb,arm64)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT, help="per lab, seconds")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    results: list[Result] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bootforge-matrix-") as tmp:
        for mode in MODES:
            firmwares, skipped = plan(mode, only)
            results += skipped
            groups = [firmwares] if args.concurrent else [[fw] for fw in firmwares]
            for group in groups:
                if group:
                    try:
                        results += run_mode(Path(tmp), mode, group, args.timeout)
                    except LabError as e:
                        label = MODE_LABELS[mode]
                        results += [Result(fw.label, label, "failed", detail=f"lab up: {e}") for fw in group]
    total = time.monotonic() - start
    how = "concurrently, one lab per mode" if args.concurrent else "one case at a time"
    print(f"\nFirmware matrix ({how}; power on -> reached, this host), {total:.0f} s in all:\n")
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps({"seconds": round(total, 1), "results": [asdict(r) for r in results]}, indent=2)
        )
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
