"""BMC passwords are stored encrypted (#11 finding 14): the database file alone gives none away.

Written first against the old code: the enrolled password was in the SQLite file as plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.processes import start_ipmi_bmc, stop_process
from support.service import BOOTFORGE, InProcess, in_process

from bootforge import keys
from bootforge.conductor.task import shared_task
from bootforge.db import secrets
from bootforge.masking import MASK, mask_node_field

PASSWORD = "Zq9-bmc-Pa55word-778"  # IPMI 2.0 allows 20 bytes
LISTED = "Lx4-second-bmc-pw-0042"


@asynccontextmanager
async def service(tmp_path: Path, **overrides: Any) -> AsyncIterator[InProcess]:
    async for bf in in_process(tmp_path, **overrides):
        yield bf


def db_path(bf_or_dir: InProcess | Path) -> Path:
    state = bf_or_dir.settings.state_dir if isinstance(bf_or_dir, InProcess) else bf_or_dir / "state"
    return state / "bootforge.sqlite"


def raw_column(path: Path, uuid: str, column: str = "driver_info") -> dict[str, Any]:
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute(f"SELECT {column} FROM nodes WHERE uuid = ?", (uuid,)).fetchone()
    conn.close()
    return dict(json.loads(value))


def write_column(path: Path, uuid: str, value: dict[str, Any], column: str = "driver_info") -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE nodes SET {column} = ? WHERE uuid = ?", (json.dumps(value), uuid))
    conn.close()


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


async def rotate(new_key: Path, state: Path) -> tuple[int, str]:
    """`bootforge secrets rotate` as an operator runs it: (exit code, stdout + stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    argv = [BOOTFORGE, "secrets", "rotate", "--new-key", str(new_key), "--state-dir", str(state)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    return int(proc.returncode or 0), " ".join(out.decode().split())


async def enrol(bf: InProcess, name: str, **info: Any) -> str:
    body = {"driver": "fake-hardware", "name": name, "driver_info": info}
    r = await bf.client.post("/v1/nodes", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["uuid"])


async def test_enrolled_password_is_not_in_the_database_file(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        uuid = await enrol(
            bf,
            "n1",
            ipmi_username="admin",
            ipmi_password=PASSWORD,
            bmcs=[{"address": "10.0.0.9", "password": LISTED}],
            ipmi_kg=1234567,
        )
        r = await bf.client.get(f"/v1/nodes/{uuid}")
        assert r.json()["driver_info"]["ipmi_password"] == MASK
        assert r.json()["driver_info"]["bmcs"] == [{"address": "10.0.0.9", "password": MASK}]
        path = db_path(bf)
        stored = file_bytes(path)
        assert PASSWORD.encode() not in stored
        assert LISTED.encode() not in stored
        raw = raw_column(path, uuid)
        assert raw["ipmi_password"].startswith("bfenc:v1:")
        assert raw["bmcs"][0]["password"].startswith("bfenc:v1:")
        assert raw["ipmi_kg"].startswith("bfenc:v1:")
        assert raw["ipmi_username"] == "admin"  # not a secret: readable, and searchable
        # What a driver is handed is the plaintext, with its type.
        task = await shared_task(bf.conductor, uuid, "test")
        assert task.node.driver_info["ipmi_password"] == PASSWORD
        assert task.node.driver_info["bmcs"][0]["password"] == LISTED
        assert task.node.driver_info["ipmi_kg"] == 1234567


async def test_patch_reencrypts_and_test_ops_see_the_mask(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        uuid = await enrol(bf, "n1", ipmi_password=PASSWORD)
        before = raw_column(db_path(bf), uuid)["ipmi_password"]
        guess = [{"op": "test", "path": "/driver_info/ipmi_password", "value": PASSWORD}]
        assert (await bf.client.patch(f"/v1/nodes/{uuid}", json=guess)).status_code == 400
        new = "N3w-Pa55-after-patch-99"
        patch = [
            {"op": "test", "path": "/driver_info/ipmi_password", "value": MASK},
            {"op": "replace", "path": "/driver_info/ipmi_password", "value": new},
            {"op": "add", "path": "/instance_info/rescue_password", "value": "rescue-Pw-8812"},
            {"op": "add", "path": "/instance_info/image_checksum", "value": "abc123"},
        ]
        r = await bf.client.patch(f"/v1/nodes/{uuid}", json=patch)
        assert r.status_code == 200, r.text
        assert r.json()["driver_info"]["ipmi_password"] == MASK
        raw = raw_column(db_path(bf), uuid)
        assert raw["ipmi_password"].startswith("bfenc:v1:") and raw["ipmi_password"] != before
        instance = raw_column(db_path(bf), uuid, "instance_info")
        assert instance["rescue_password"].startswith("bfenc:v1:")
        assert instance["image_checksum"] == "abc123"
        assert new.encode() not in file_bytes(db_path(bf))
        task = await shared_task(bf.conductor, uuid, "test")
        assert task.node.driver_info["ipmi_password"] == new
        assert task.node.instance_info["rescue_password"] == "rescue-Pw-8812"


async def test_list_and_detail_never_decrypt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with service(tmp_path) as bf:
        for i in range(5):
            await enrol(bf, f"n{i}", ipmi_password=PASSWORD, ipmi_username="admin")
        opened: list[Any] = []
        real = secrets.NodeSecrets.open

        def counting(self: secrets.NodeSecrets, *args: Any) -> Any:
            opened.append(args[1])
            return real(self, *args)

        monkeypatch.setattr(secrets.NodeSecrets, "open", counting)
        for path in ("/v1/nodes", "/v1/nodes/detail", "/v1/nodes/n1", "/v1/nodes?fields=driver_info"):
            r = await bf.client.get(path)
            assert r.status_code == 200
            assert PASSWORD not in r.text
        assert opened == []
        # While a driver's task does decrypt, once per value.
        await shared_task(bf.conductor, "n1", "test")
        assert opened == [("driver_info", "ipmi_password")]


async def test_the_ipmi_driver_logs_in_with_the_stored_password(tmp_path: Path) -> None:
    """A peer bootforge did not write (pyghmi's BMC server) accepts only the right password."""
    proc, ports = start_ipmi_bmc("admin", PASSWORD, "--machine", "memory", "--port", "0")
    try:
        async with service(tmp_path) as bf:
            body = {
                "driver": "ipmi",
                "name": "bmc1",
                "driver_info": {
                    "ipmi_address": "127.0.0.1",
                    "ipmi_port": ports[0],
                    "ipmi_username": "admin",
                    "ipmi_password": PASSWORD,
                },
            }
            r = await bf.client.post("/v1/nodes", json=body)
            assert r.status_code == 201, r.text
            assert PASSWORD.encode() not in file_bytes(db_path(bf))
            r = await bf.client.get("/v1/nodes/bmc1/bmc")
            assert r.status_code == 200, r.text
            assert r.json()["reachable"] is True, r.json()["detail"]
    finally:
        stop_process(proc)


async def test_a_value_pasted_from_another_node_is_refused_by_name(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        a = await enrol(bf, "a", ipmi_password=PASSWORD)
        b = await enrol(bf, "b", ipmi_password="b-own-password-1")
        raw_b = raw_column(db_path(bf), b)
        write_column(db_path(bf), b, {**raw_b, "ipmi_password": raw_column(db_path(bf), a)["ipmi_password"]})
        # Reads that mask never decrypt, so they still work.
        r = await bf.client.get(f"/v1/nodes/{b}")
        assert r.status_code == 200 and r.json()["driver_info"]["ipmi_password"] == MASK
        assert (await bf.client.get("/v1/nodes/detail")).status_code == 200
        # Anything that would hand the node to a driver: a 400 naming the node and the field.
        for method, path, body in (
            ("PUT", f"/v1/nodes/{b}/states/power", {"target": "power on"}),
            ("GET", f"/v1/nodes/{b}/validate", None),
            ("PUT", f"/v1/nodes/{b}/management/boot_device", {"boot_device": "pxe"}),
        ):
            r = await bf.client.request(method, path, json=body)
            assert r.status_code == 400, (path, r.status_code, r.text)
            message = r.json()["error_message"]
            text = message if isinstance(message, str) else json.dumps(message)
            assert b in text and "driver_info.ipmi_password" in text and "decrypt" in text, text
            assert PASSWORD not in text
        node = (await bf.client.get(f"/v1/nodes/{b}")).json()
        assert node["reservation"] is None  # not locked
        # Work that runs in the background fails the node with the same message, and unlocks it.
        r = await bf.client.put(f"/v1/nodes/{b}/states/provision", json={"target": "manage"})
        assert r.status_code == 202
        await bf.conductor.wait_idle()
        node = (await bf.client.get(f"/v1/nodes/{b}")).json()
        assert node["provision_state"] == "enroll" and node["reservation"] is None
        assert b in node["last_error"] and "driver_info.ipmi_password" in node["last_error"]
        # Power sync carries on, naming the node and the field, and the other node is read.
        conn = sqlite3.connect(db_path(bf))
        with conn:
            conn.execute("UPDATE nodes SET provision_state = 'available'")
        conn.close()
        result = await bf.conductor.sync_power_states()
        assert (
            result.nodes == 2
            and result.failed == 1
            and "driver_info.ipmi_password" in (result.first_failure or "")
        )
        # Setting the value again repairs the node.
        fix = [{"op": "replace", "path": "/driver_info/ipmi_password", "value": "b-own-password-2"}]
        assert (await bf.client.patch(f"/v1/nodes/{b}", json=fix)).status_code == 200
        r = await bf.client.put(f"/v1/nodes/{b}/states/power", json={"target": "power on"})
        assert r.status_code == 202, r.text


async def test_another_key_or_none_is_refused_at_start(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        await enrol(bf, "n1", ipmi_password=PASSWORD)
        key_path = bf.settings.secret_key_path
    kept = tmp_path / "kept.key"
    shutil.copy2(key_path, kept)
    # Missing: refused, naming the file, and no new key is made over the old secrets.
    key_path.unlink()
    with pytest.raises(secrets.SecretKeyRefused, match=f"{key_path}.* is missing"):
        async with service(tmp_path):
            pass
    assert not key_path.exists()
    # Another key: refused, naming the file and both fingerprints.
    other = keys.load_or_create(tmp_path / "other.key")
    shutil.copy2(tmp_path / "other.key", key_path)
    with pytest.raises(secrets.SecretKeyRefused, match=f"{key_path} .fingerprint {other.fingerprint()}"):
        async with service(tmp_path):
            pass
    # The right key again: the node's password is back.
    shutil.copy2(kept, key_path)
    async with service(tmp_path) as bf:
        task = await shared_task(bf.conductor, "n1", "test")
        assert task.node.driver_info["ipmi_password"] == PASSWORD


async def test_plaintext_left_by_an_older_bootforge_is_encrypted_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with service(tmp_path) as bf:
        uuid = await enrol(bf, "n1", ipmi_username="admin")
    write_column(db_path(tmp_path), uuid, {"ipmi_username": "admin", "ipmi_password": PASSWORD})
    with caplog.at_level(logging.WARNING, "bootforge.db.secrets"):
        async with service(tmp_path) as bf:
            raw = raw_column(db_path(bf), uuid)
            assert raw["ipmi_password"].startswith("bfenc:v1:")
            task = await shared_task(bf.conductor, uuid, "test")
            assert task.node.driver_info["ipmi_password"] == PASSWORD
    assert "encrypted 1 plaintext secret(s) of 1 node(s)" in caplog.text


async def test_rotate_reencrypts_every_node_and_installs_the_key(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        uuids = [await enrol(bf, f"n{i}", ipmi_password=f"{PASSWORD}-{i}") for i in range(3)]
        state = bf.settings.state_dir
        old = keys.load_or_create(bf.settings.secret_key_path)
        before = [raw_column(db_path(bf), u)["ipmi_password"] for u in uuids]
    new_file = tmp_path / "new.key"
    code, output = await rotate(new_file, state)
    assert code == 0, output
    new = keys.load_or_create(new_file)
    assert f"re-encrypted 3 secret(s) of 3 node(s): key {old.fingerprint()} -> {new.fingerprint()}" in output
    assert keys.load_or_create(state / "secret.key").fingerprint() == new.fingerprint()
    after = [raw_column(db_path(tmp_path), u)["ipmi_password"] for u in uuids]
    assert all(a != b and a.startswith("bfenc:v1:") for a, b in zip(after, before, strict=True))
    async with service(tmp_path) as bf:
        for i, u in enumerate(uuids):
            task = await shared_task(bf.conductor, u, "test")
            assert task.node.driver_info["ipmi_password"] == f"{PASSWORD}-{i}"
    # The same again: refused, nothing changed.
    code, output = await rotate(new_file, state)
    assert code == 1 and "is the current key" in output, output


async def test_rotate_refuses_values_that_do_not_decrypt(tmp_path: Path) -> None:
    async with service(tmp_path) as bf:
        a = await enrol(bf, "a", ipmi_password=PASSWORD)
        b = await enrol(bf, "b", ipmi_password="b-own-password-1")
        state = bf.settings.state_dir
    path = db_path(tmp_path)
    write_column(path, b, {"ipmi_password": raw_column(path, a)["ipmi_password"]})
    before = {u: raw_column(path, u) for u in (a, b)}
    code, output = await rotate(tmp_path / "new.key", state)
    assert code == 1 and f"node {b} driver_info.ipmi_password" in output, output
    assert {u: raw_column(path, u) for u in (a, b)} == before  # one transaction: nothing changed


async def test_rotate_refuses_while_a_conductor_runs(tmp_path: Path) -> None:
    async with service(tmp_path, conductor_heartbeat_interval=10) as bf:
        await enrol(bf, "n1", ipmi_password=PASSWORD)
        state = bf.settings.state_dir
        code, output = await rotate(tmp_path / "new.key", state)
        assert code == 1, output
        assert "test-conductor" in output and "stop every bootforge serve" in output, output
        task = await shared_task(bf.conductor, "n1", "test")  # nothing changed
        assert task.node.driver_info["ipmi_password"] == PASSWORD


def test_sealed_values_are_bound_to_node_and_path() -> None:
    box = secrets.NodeSecrets(keys.SecretKey.generate())
    sealed = box.seal("node-a", ("driver_info", "ipmi_password"), PASSWORD)
    assert box.open("node-a", ("driver_info", "ipmi_password"), sealed) == PASSWORD
    for node, path in (
        ("node-b", ("driver_info", "ipmi_password")),
        ("node-a", ("driver_info", "x_password")),
    ):
        with pytest.raises(ValueError, match="does not decrypt"):
            box.open(node, path, sealed)
    with pytest.raises(ValueError, match="does not decrypt"):
        secrets.NodeSecrets(keys.SecretKey.generate()).open(
            "node-a", ("driver_info", "ipmi_password"), sealed
        )
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError, match="does not decrypt"):
        box.open("node-a", ("driver_info", "ipmi_password"), tampered)
    assert box.seal("node-a", ("driver_info", "ipmi_password"), PASSWORD) != sealed  # a fresh nonce


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("driver_info", {"ipmi_password": "p", "ipmi_username": "u", "deploy_kernel": "k"}),
        ("driver_info", {"ipmi_credentials": {"user": "u", "pass": "p"}, "snmp_auth_key": 7}),
        (
            "driver_info",
            {"bmcs": [{"password": "p", "address": "a"}, {"token": ["x"]}], "empty_password": ""},
        ),
        ("driver_info", {"redfish_password": None, "nested": {"deeper": [{"secret": {"a": 1}}]}}),
        (
            "instance_info",
            {"configdrive": {"user_data": "x"}, "image_url": "http://h/i?sig=s", "root_gb": 10},
        ),
        (
            "instance_info",
            {"image_checksum": "abc", "rescue_password": "r", "capabilities": {"boot_mode": "uefi"}},
        ),
    ],
)
def test_what_is_encrypted_is_what_the_api_masks(field: str, value: dict[str, Any]) -> None:
    box = secrets.NodeSecrets(keys.SecretKey.generate())
    sealed = box.seal_field("u1", field, value)
    # The API shows a stored (sealed) value exactly as it showed the plaintext: lists never decrypt.
    assert mask_node_field(field, sealed) == mask_node_field(field, value)
    # Everything masked is sealed; everything shown is stored as it was.
    for plain, stored in zip(_leaves(mask_node_field(field, value)), _leaves(sealed), strict=True):
        if plain == MASK:
            assert isinstance(stored, str) and stored.startswith("bfenc:v1:")
        else:
            assert stored == plain
    opened, bad = box.open_field("u1", field, sealed)
    assert opened == value and bad == []
    assert box.seal_field("u1", field, sealed) == sealed  # never sealed twice


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@pytest.mark.postgres
async def test_on_postgresql_too(tmp_path: Path, postgres_fresh_url: str) -> None:
    from sqlalchemy import select, update

    from bootforge.db.models import NODES

    async with service(tmp_path, database_url=postgres_fresh_url) as bf:
        a = await enrol(bf, "a", ipmi_password=PASSWORD, ipmi_username="admin")
        b = await enrol(bf, "b", ipmi_password="b-own-password-1")
        async with bf.conductor.db.read_conn() as conn:
            rows = dict((await conn.execute(select(NODES.c.uuid, NODES.c.driver_info))).all())
        assert rows[a]["ipmi_password"].startswith("bfenc:v1:") and rows[a]["ipmi_username"] == "admin"
        assert PASSWORD not in json.dumps(rows)
        task = await shared_task(bf.conductor, a, "test")
        assert task.node.driver_info["ipmi_password"] == PASSWORD
        async with bf.conductor.db.write_conn() as conn:
            pasted = {**rows[b], "ipmi_password": rows[a]["ipmi_password"]}
            await conn.execute(update(NODES).where(NODES.c.uuid == b).values(driver_info=pasted))
        r = await bf.client.put(f"/v1/nodes/{b}/states/power", json={"target": "power on"})
        assert r.status_code == 400 and "driver_info.ipmi_password" in r.text and b in r.text
    other = tmp_path / "other.key"
    keys.load_or_create(other)
    with pytest.raises(secrets.SecretKeyRefused, match="is not the key"):
        async with service(tmp_path, database_url=postgres_fresh_url, secret_key_file=other):
            pass


async def test_an_orm_update_that_refreshes_a_loaded_node_keeps_it_plain(tmp_path: Path) -> None:
    from sqlalchemy import select, update

    from bootforge.db.models import Node

    async with service(tmp_path) as bf:
        uuid = await enrol(bf, "n1", ipmi_password=PASSWORD)
        async with bf.conductor.db.write() as s:
            node = (await s.scalars(select(Node).where(Node.uuid == uuid))).one()
            # synchronize_session "auto" evaluates the UPDATE on the loaded object: a refresh event
            # without a query context.
            await s.execute(update(Node).where(Node.uuid == uuid).values(maintenance=True))
            assert node.maintenance is True
            assert node.driver_info["ipmi_password"] == PASSWORD
            await s.commit()
        assert raw_column(db_path(bf), uuid)["ipmi_password"].startswith("bfenc:v1:")


async def test_the_built_config_drive_in_driver_internal_info_is_masked_and_sealed(
    tmp_path: Path,
) -> None:
    """A deploy keeps the built config drive (user data, often with passwords) in driver_internal_info
    and in the agent's queued command until the agent has written it: GET showed it in full and the
    database held it in plain text."""
    from bootforge.conductor.task import acquire
    from bootforge.drivers.agent import AGENT_COMMAND, DEPLOY_CONFIGDRIVE

    drive = "H4sIAAAAAAAC-user-data-with-a-Pa55word-inside"
    async with service(tmp_path) as bf:
        uuid = await enrol(bf, "n1")
        async with acquire(bf.conductor, uuid, "test") as task:
            command = {"id": "c1", "name": "write_image", "args": {"image": {}, "configdrive": drive}}
            task.set_internal(**{DEPLOY_CONFIGDRIVE: drive, AGENT_COMMAND: command})
        shown = (await bf.client.get(f"/v1/nodes/{uuid}")).json()["driver_internal_info"]
        assert shown[DEPLOY_CONFIGDRIVE] == MASK
        assert shown[AGENT_COMMAND]["args"]["configdrive"] == MASK
        assert drive.encode() not in file_bytes(db_path(bf))
        task = await shared_task(bf.conductor, uuid, "test")
        assert task.node.driver_internal_info[DEPLOY_CONFIGDRIVE] == drive
        assert task.node.driver_internal_info[AGENT_COMMAND]["args"]["configdrive"] == drive
