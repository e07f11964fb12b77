"""Command dispatch: every name the contract lists reaches its module; anything else fails, naming itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from bootforge.agent import commands, inspect
from bootforge.agent.common import CommandError, Context


def no_progress(done: int, total: int, message: str) -> None:
    pass


def test_the_contracts_commands_have_modules_with_run() -> None:
    assert set(commands.COMMANDS) == {"inspect", "erase", "write_image", "finalize_rescue", "burnin"}
    for name, module in commands.COMMANDS.items():
        if importlib.util.find_spec(f"bootforge.agent.{module}") is None:
            pytest.skip(f"needs bootforge/agent/{module}.py for {name}")
        assert callable(importlib.import_module(f"bootforge.agent.{module}").run)


def test_unknown_command_fails_naming_it() -> None:
    body = commands.execute("frobnicate", {}, Context(), no_progress)
    assert body["status"] == "failed"
    known = "burnin, erase, finalize_rescue, inspect, write_image"
    assert body["error"] == f"unknown command 'frobnicate': this agent runs {known}"


def test_args_must_be_an_object() -> None:
    body = commands.execute("inspect", [1, 2], Context(), no_progress)
    assert body == {"status": "failed", "error": "inspect: args must be a JSON object, not list"}


def test_inspect_succeeds_with_its_result(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nmodel name\t: X\n")
    body = commands.execute("inspect", {"lldp_wait": 0}, Context(sys_root=tmp_path), no_progress)
    assert body["status"] == "succeeded"
    assert body["result"]["inventory"]["cpu"]["model_name"] == "X"


def test_command_error_sentence_is_the_failure(tmp_path: Path) -> None:
    body = commands.execute("inspect", {"lldp_wait": -2}, Context(sys_root=tmp_path), no_progress)
    assert body == {
        "status": "failed",
        "error": "inspect: lldp_wait must be a number of seconds >= 0, not -2",
    }


def test_an_unexpected_exception_fails_the_command_not_the_agent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken(ctx: Context) -> dict[str, Any]:
        raise PermissionError(13, "Permission denied", "/sys/class/dmi/id/product_serial")

    monkeypatch.setattr(inspect, "collect", broken)
    body = commands.execute("inspect", {}, Context(sys_root=tmp_path), no_progress)
    assert body["status"] == "failed"
    assert body["error"] == (
        "inspect failed unexpectedly: PermissionError: [Errno 13] Permission denied: "
        "'/sys/class/dmi/id/product_serial'"
    )
    assert "Traceback" in capsys.readouterr().out


def test_run_raises_command_error_for_unknown_names() -> None:
    with pytest.raises(CommandError, match="'write'"):
        commands.run("write", {}, Context(), no_progress)
