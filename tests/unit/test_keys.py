"""The secret key file: created once, 0600, refused when others can read it, subkeys per purpose."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bootforge.keys import KEY_BYTES, KeyFileError, SecretKey, load_or_create


def test_created_once_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret.key"
    first = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_size == KEY_BYTES
    again = load_or_create(path)
    assert first.derive("x") == again.derive("x")
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    keys: list[SecretKey] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        keys.append(load_or_create(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({k.fingerprint() for k in keys}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_purposes_get_different_keys() -> None:
    key = SecretKey.generate()
    assert key.derive("driver-info-encryption") != key.derive("agent-boot-token")
    assert len(key.derive("a")) == 32
    assert key.derive("a").hex() not in repr(key)


def test_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create(path)


def test_refuses_a_truncated_key(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(KeyFileError, match="5 bytes"):
        load_or_create(path)
