"""finalize_rescue in a fake root: the hash lands in /etc/shadow (0600), keys in authorized_keys, the
server is started once; malformed arguments fail without quoting them."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from bootforge.agent import commands, rescue
from bootforge.agent.common import Context
from bootforge.drivers.rescue import hash_password

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1 op@desk"


def no_progress(done: int, total: int, message: str) -> None:
    pass


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    started: list[Path] = []
    monkeypatch.setattr(rescue, "start_server", lambda r: started.append(r) or True)
    return tmp_path


def test_finalize_rescue_sets_the_root_hash_and_keys(root: Path) -> None:
    hashed = hash_password("pw", "saltsalt")
    args: dict[str, Any] = {"hashed_rescue_password": hashed, "authorized_keys": [KEY]}
    body = commands.execute("finalize_rescue", args, Context(sys_root=root), no_progress)
    assert body["status"] == "succeeded", body
    assert body["result"] == {"ssh_port": 22, "user": "root", "authorized_keys": 1, "server": "dropbear"}
    shadow = root / "etc" / "shadow"
    assert shadow.read_text() == f"root:{hashed}:1:0:99999:7:::\n"
    assert stat.S_IMODE(shadow.stat().st_mode) == 0o600
    keys = root / "root" / ".ssh" / "authorized_keys"
    assert keys.read_text() == KEY + "\n" and stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    assert (root / "etc" / "shells").read_text() == "/bin/sh\n"
    # A second rescue replaces root's line and keeps the others.
    (root / "etc" / "shadow").write_text(f"root:{hashed}:1:0:99999:7:::\nnobody:*:1:0:99999:7:::\n")
    other = hash_password("pw2", "saltsalt")
    args = {"hashed_rescue_password": other, "authorized_keys": []}
    assert (
        commands.execute("finalize_rescue", args, Context(sys_root=root), no_progress)["status"]
        == "succeeded"
    )
    assert shadow.read_text() == f"root:{other}:1:0:99999:7:::\nnobody:*:1:0:99999:7:::\n"
    assert keys.read_text() == ""


@pytest.mark.parametrize(
    "args",
    [
        {"hashed_rescue_password": "plaintext-password"},
        {"hashed_rescue_password": "$1$abc$0123456789abcdef012345"},
        {"hashed_rescue_password": hash_password("pw", "saltsalt") + "\nroot2"},
        {"hashed_rescue_password": hash_password("pw", "saltsalt"), "authorized_keys": ["x\nssh-rsa AAAA"]},
        {"hashed_rescue_password": hash_password("pw", "saltsalt"), "authorized_keys": "ssh-rsa AAAA"},
    ],
)
def test_malformed_arguments_fail_without_quoting_them(root: Path, args: dict[str, Any]) -> None:
    body = commands.execute("finalize_rescue", args, Context(sys_root=root), no_progress)
    assert body["status"] == "failed"
    assert "plaintext-password" not in body["error"] and "saltsalt" not in body["error"]
    assert str(args["hashed_rescue_password"]) not in body["error"]
    assert not (root / "etc" / "shadow").exists()


def test_without_dropbear_the_command_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rescue, "DROPBEAR", str(tmp_path / "no-dropbear"))
    monkeypatch.setattr(rescue, "PIDFILE", "run/dropbear.pid")
    args = {"hashed_rescue_password": hash_password("pw", "saltsalt")}
    body = commands.execute("finalize_rescue", args, Context(sys_root=tmp_path), no_progress)
    assert body["status"] == "failed" and "no-dropbear is not in this ramdisk" in body["error"]
