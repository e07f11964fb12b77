"""`bootforge node <verb> --wait` decides success from where the node ends, with a canned API."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from bootforge.cli import main


def fake_api(monkeypatch: pytest.MonkeyPatch, final: dict[str, Any]) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def call(self: main.Api, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        calls.append((method, path))
        if method == "PUT":
            return None
        return {"target_provision_state": None, "reservation": None, "last_error": None, **final}

    monkeypatch.setattr(main.Api, "call", call)
    return calls


def test_reaching_the_target_state_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_api(monkeypatch, {"provision_state": "manageable"})
    result = CliRunner().invoke(main.app, ["node", "manage", "n1", "--wait", "5"])
    assert result.exit_code == 0, result.output
    assert "n1 is manageable" in result.output
    assert calls[0] == ("PUT", "/v1/nodes/n1/states/provision")


def test_ending_elsewhere_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failed verification sends a node back to enroll, which is not a *failed* state.
    fake_api(
        monkeypatch, {"provision_state": "enroll", "last_error": "verify failed: BMC [10.0.0.9] unreachable"}
    )
    result = CliRunner().invoke(main.app, ["node", "manage", "n1", "--wait", "5"])
    assert result.exit_code == 1
    assert "not manageable" in result.output
    assert "BMC [10.0.0.9] unreachable" in result.output


def test_a_failed_state_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bracketed path would be a closing markup tag to rich if the CLI did not escape it.
    fake_api(
        monkeypatch,
        {"provision_state": "deploy failed", "last_error": "disk [/var/lib/bootforge/images] is full"},
    )
    result = CliRunner().invoke(main.app, ["node", "deploy", "n1", "--wait", "5"])
    assert result.exit_code == 1
    assert "deploy failed" in result.output and "disk [/var/lib/bootforge/images] is full" in result.output
