"""Boot-from-volume objects through the unmodified OpenStack clients against a live `bootforge serve`:
`baremetal volume connector|target create|list|show|set|delete` (python-ironicclient) and openstacksdk's
volume connector and target calls, plus `baremetal node set --storage-interface`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.service import LATEST, Served, served

openstack = pytest.importorskip("openstack", reason="needs openstacksdk")
from openstack import connection  # noqa: E402

BAREMETAL = Path(sys.executable).parent / "baremetal"
IQN = "iqn.2026-12.org.bootforge:cli-node"
TARGET_IQN = "iqn.2026-12.org.bootforge:cli-vol"
SECRET = "cli-chap-secret1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served(tmp_path_factory.mktemp("volume-clients"))


def baremetal(server: Served, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": server.url}
    env.pop("OS_CLOUD", None)
    p = subprocess.run(
        [str(BAREMETAL), "--max-retries", "0", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def as_json(p: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(p.stdout)


def node(server: Served, name: str) -> str:
    r = httpx.post(f"{server.url}/v1/nodes", json={"driver": "fake-hardware", "name": name}, headers=LATEST)
    assert r.status_code == 201, r.text
    return str(r.json()["uuid"])


@pytest.mark.skipif(not BAREMETAL.exists(), reason="needs the baremetal CLI (python-ironicclient)")
def test_baremetal_volume_commands(server: Served) -> None:
    uuid = node(server, "cli-bfv")
    made = as_json(
        baremetal(
            server, "volume", "connector", "create", "--node", uuid, "--type", "iqn",
            "--connector-id", IQN, "-f", "json",
        )
    )  # fmt: skip
    assert made["connector_id"] == IQN and made["node_uuid"] == uuid
    listed = as_json(baremetal(server, "volume", "connector", "list", "--node", uuid, "-f", "json"))
    assert [c["uuid"] for c in listed] == [made["uuid"]]
    shown = as_json(baremetal(server, "volume", "connector", "show", made["uuid"], "-f", "json"))
    assert shown["type"] == "iqn"

    target = as_json(
        baremetal(
            server, "volume", "target", "create", "--node", uuid, "--type", "iscsi", "--boot-index", "0",
            "--volume-id", "vol-cli", "--property", f"target_iqn={TARGET_IQN}",
            "--property", "target_portal=192.0.2.9:3260", "--property", "target_lun=1",
            "--property", "auth_method=CHAP", "--property", "auth_username=cli",
            "--property", f"auth_password={SECRET}", "-f", "json",
        )
    )  # fmt: skip
    assert target["boot_index"] == 0 and target["properties"]["auth_password"] == "******"
    shown_t = baremetal(server, "volume", "target", "show", target["uuid"], "-f", "json")
    assert SECRET not in shown_t.stdout
    targets = as_json(baremetal(server, "volume", "target", "list", "--node", uuid, "--long", "-f", "json"))
    assert [t["uuid"] for t in targets] == [target["uuid"]]
    baremetal(server, "volume", "target", "set", target["uuid"], "--property", "target_lun=2")
    assert as_json(baremetal(server, "volume", "target", "show", target["uuid"], "-f", "json"))["properties"][
        "target_lun"
    ] in (2, "2")

    # The same refusal the API gives, as the CLI shows it.
    bad = baremetal(
        server, "volume", "connector", "create", "--node", uuid, "--type", "fc", "--connector-id", "x",
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "type" in bad.stderr

    baremetal(server, "node", "set", uuid, "--storage-interface", "iscsi")
    assert as_json(baremetal(server, "node", "show", uuid, "-f", "json"))["storage_interface"] == "iscsi"

    baremetal(server, "volume", "target", "delete", target["uuid"])
    baremetal(server, "volume", "connector", "delete", made["uuid"])
    assert as_json(baremetal(server, "volume", "connector", "list", "-f", "json")) == []


# openstacksdk warns about its own internals (InfluxDB support) on every call.
@pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning")
@pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning")
def test_openstacksdk_volume_calls(server: Served) -> None:
    conn = connection.Connection(
        auth_type="none", baremetal_endpoint_override=server.url, baremetal_status_code_retries="0"
    )
    bm = conn.baremetal
    uuid = node(server, "sdk-bfv")
    c = bm.create_volume_connector(node_id=uuid, type="iqn", connector_id=IQN + "-sdk")
    t = bm.create_volume_target(
        node_id=uuid, volume_type="iscsi", boot_index=0, volume_id="vol-sdk", properties={"target_lun": 3}
    )
    assert [x.id for x in bm.volume_connectors(node=uuid)] == [c.id]
    assert bm.get_volume_target(t.id).properties == {"target_lun": 3}
    bm.delete_volume_target(t.id)
    bm.delete_volume_connector(c.id)
    assert list(bm.volume_targets(node=uuid)) == []
