"""The commands the conductor can ask for, and how a run becomes the body of a final result.

Each command is a module with ``run(args, ctx, progress) -> dict`` that raises CommandError with
the sentence to report. Modules are imported when their command first runs: inspect should not
pay for the image writer, and a command module that fails to import fails its command, not the agent.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

from . import log
from .common import CommandError, Context, Progress

# command name -> module in this package
COMMANDS = {
    "inspect": "inspect",
    "erase": "erase",
    "write_image": "write",
    "finalize_rescue": "rescue",
    "burnin": "burnin",
}


def execute(name: str, args: object, ctx: Context, progress: Progress) -> dict[str, Any]:
    """Run a command; the final result body of the contract ("succeeded" or "failed"), never raises."""
    try:
        result = run(name, args, ctx, progress)
    except CommandError as exc:
        return {"status": "failed", "error": str(exc) or f"{name} failed"}
    except Exception as exc:  # a bug or an unforeseen OSError: report it, keep the agent alive
        log(f"{name} raised:\n{traceback.format_exc().rstrip()}")
        return {"status": "failed", "error": f"{name} failed unexpectedly: {type(exc).__name__}: {exc}"}
    return {"status": "succeeded", "result": result}


def run(name: str, args: object, ctx: Context, progress: Progress) -> dict[str, Any]:
    """Dispatch to the command's module; CommandError for an unknown command or malformed args."""
    module_name = COMMANDS.get(name)
    if module_name is None:
        known = ", ".join(sorted(COMMANDS))
        raise CommandError(f"unknown command {name!r}: this agent runs {known}")
    if not isinstance(args, dict):
        raise CommandError(f"{name}: args must be a JSON object, not {type(args).__name__}")
    module = importlib.import_module(f".{module_name}", __package__)
    result = module.run(args, ctx, progress)
    if not isinstance(result, dict):
        raise CommandError(f"{name} returned {type(result).__name__} instead of a result object")
    return result
