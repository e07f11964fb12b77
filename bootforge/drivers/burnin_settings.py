"""Burn-in clean steps: their arguments (what to measure and the thresholds that fail a node), and the
`[burnin]` settings that run them in automated cleaning with defaults for those arguments.

Kept apart from drivers/burnin.py so that config.py can import it without importing the drivers.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, model_validator

from bootforge.errors import InvalidInput

KINDS = ("cpu", "memory", "disk", "network")
# The server side of a paired network burn-in: a step, not a kind [burnin] has settings for (a
# pair is two manual cleans started together, never automated cleaning).
SERVE = "network_serve"
STEP_KINDS = (*KINDS, SERVE)
FIO_JOBS = ("seqread_1m", "seqwrite_1m", "randread_4k", "randwrite_4k")
DAY = 24 * 3600


# kind -> argument -> (type, low, high, description). Thresholds are judged by the conductor; the
# other arguments go to the agent.
ARGS: dict[str, dict[str, tuple[str, float, float, str]]] = {
    "cpu": {
        "seconds": ("int", 1, DAY, "how long stress-ng loads every CPU (default 60)"),
        "cpus": ("int", 0, 4096, "workers; 0 (the default) is one per online CPU"),
        "method": ("name", 0, 0, "stress-ng --cpu-method (default matrixprod)"),
        "min_bogo_ops_per_s": ("number", 0, 1e15, "fail below this many bogo-ops/s (all workers, real time)"),
    },
    "memory": {
        "size_mib": ("int", 1, 1 << 24, "MiB memtester locks and tests (default: half the free memory)"),
        "loops": ("int", 1, 1000, "memtester passes (default 1)"),
        "timeout_s": ("int", 10, DAY, "memtester is killed after this many seconds (default 3600)"),
        "min_tested_mib": ("number", 0, 1 << 24, "fail if memtester could lock less than this"),
    },
    "disk": {
        "seconds": ("int", 1, DAY, "seconds per fio job (default 30)"),
        "size_mib": ("int", 1, 1 << 30, "MiB at the start of each disk the jobs use (default 1024)"),
        "disks": ("names", 0, 64, "disk names (default: every disk)"),
        "jobs": ("jobs", 1, len(FIO_JOBS), f"fio jobs, in order (default all: {', '.join(FIO_JOBS)})"),
        "min_iops": ("number", 0, 1e12, "fail a 4k random job below this many IOPS"),
        "min_bandwidth_mib_s": ("number", 0, 1e9, "fail a sequential job below this many MiB/s"),
        "max_p99_latency_ms": ("number", 0, 1e9, "fail any job whose p99 completion latency is above this"),
    },
    "network": {
        "server": ("host", 0, 0, "the iperf3 server the agent connects to (this or partner)"),
        "partner": ("node", 0, 0, "a node (name or UUID) running burnin_network_serve to connect to"),
        "partner_wait": ("int", 1, DAY, "seconds to wait for the partner to serve (default 300)"),
        "port": ("int", 1, 65535, "the server's port (default 5201; with partner, the partner's)"),
        "seconds": ("int", 1, DAY, "seconds of iperf3 (default 10)"),
        "min_bandwidth_mbps": ("number", 0, 1e9, "fail below this many Mbit/s received"),
    },
    SERVE: {
        "seconds": ("int", 10, DAY, "how long the iperf3 server waits for its one client (default 600)"),
        "port": ("int", 1024, 65535, "the port it listens on (default 5201)"),
    },
}
# Arguments the conductor acts on itself: neither a threshold nor sent to the agent.
CONDUCTOR_ARGS = frozenset({"partner", "partner_wait"})
NODE_PATTERN = r"[A-Za-z0-9._~-]{1,255}"  # a node's name or UUID
THRESHOLDS = frozenset({"min_bogo_ops_per_s", "min_tested_mib", "min_iops", "min_bandwidth_mib_s",
                        "max_p99_latency_ms", "min_bandwidth_mbps"})  # fmt: skip


def argsinfo(kind: str) -> dict[str, Any]:
    """Ironic's argsinfo of the kind's clean step."""
    required: set[str] = set()  # network needs server or partner: checked by check_args
    return {name: {"description": spec[3], "required": name in required} for name, spec in ARGS[kind].items()}


def check_args(kind: str, args: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(arguments for the agent, thresholds for the conductor); InvalidInput names the bad one."""
    spec = ARGS[kind]
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise InvalidInput(
            f"{where}: burn-in {kind} has no argument {', '.join(unknown)}; it takes {', '.join(spec)}", where
        )
    measure: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    conductor: dict[str, Any] = {}  # checked here, read by the step from the arguments themselves
    for name, value in args.items():
        kind_of, low, high, _ = spec[name]
        field = f"{where}.{name}"
        if value is None:
            continue
        if kind_of in ("int", "number"):
            ok_type = int if kind_of == "int" else int | float
            if isinstance(value, bool) or not isinstance(value, ok_type) or not low <= value <= high:
                what = "an integer" if kind_of == "int" else "a number"
                raise InvalidInput(f"{field} must be {what} from {low:g} to {high:g}, not {value!r}", field)
        elif kind_of in ("name", "host", "node"):
            pattern = {"name": r"[a-z0-9_-]{1,32}", "host": r"[A-Za-z0-9.:-]{1,253}", "node": NODE_PATTERN}[
                kind_of
            ]
            if not isinstance(value, str) or not _matches(pattern, value):
                raise InvalidInput(f"{field} is not a valid {kind_of}: {value!r}", field)
        elif kind_of == "names":
            if (
                not isinstance(value, list)
                or len(value) > high
                or not all(isinstance(v, str) and 0 < len(v) <= 255 for v in value)
            ):
                raise InvalidInput(f"{field} must be a list of at most {high:g} disk names", field)
        elif kind_of == "jobs" and (
            not isinstance(value, list) or not value or any(v not in FIO_JOBS for v in value)
        ):
            raise InvalidInput(f"{field} must be a non-empty list of {', '.join(FIO_JOBS)}", field)
        if name in THRESHOLDS:
            thresholds[name] = float(value)
        elif name in CONDUCTOR_ARGS:
            conductor[name] = value
        else:
            measure[name] = value
    if kind == "network":
        if "server" in measure and "partner" in conductor:
            raise InvalidInput(
                f"{where}.partner: give server (an iperf3 server you run) or partner (a node serving "
                "with burnin_network_serve), not both",
                f"{where}.partner",
            )
        if "server" not in measure and "partner" not in conductor:
            raise InvalidInput(
                f"{where}.server is required: the iperf3 server the agent connects to "
                "(or partner: a node running burnin_network_serve)",
                where,
            )
        if "partner_wait" in conductor and "partner" not in conductor:
            raise InvalidInput(f"{where}.partner_wait is only for partner", f"{where}.partner_wait")
    return measure, thresholds


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


class BurninSettings(BaseModel):
    """`[burnin]`: which burn-in steps automated cleaning runs (none by default: they take time and the
    disk step writes over the disks), and default arguments for each kind, e.g.

        [burnin]
        automated_clean = ["cpu", "memory", "disk"]
        disk = {seconds = 60, min_iops = 5000}

    Arguments given to a manual clean step override these defaults.
    """

    automated_clean: list[Literal["cpu", "memory", "disk", "network"]] = []
    cpu: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    disk: dict[str, Any] = {}
    network: dict[str, Any] = {}

    @model_validator(mode="after")
    def _valid_defaults(self) -> BurninSettings:
        for kind in KINDS:
            try:
                check_args(kind, getattr(self, kind), f"burnin.{kind}")
            except InvalidInput as exc:
                if kind == "network" and "server is required" in exc.message:
                    continue  # given per step, or in automated cleaning checked when it runs
                raise ValueError(exc.message) from None
        if "network" in self.automated_clean and "server" not in self.network:
            raise ValueError(
                "burnin.automated_clean lists network: burnin.network.server must name the server "
                "(a partner node serves only in a manual clean)"
            )
        return self

    def defaults(self, kind: str) -> dict[str, Any]:
        return dict(getattr(self, kind))
