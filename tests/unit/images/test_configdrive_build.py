"""Config drives: built from Ironic's dict and read back with pycdlib, or given ready-made and checked."""

from __future__ import annotations

import base64
import gzip
import io
import json
from typing import Any

import pycdlib
import pytest

from bootforge.errors import InvalidInput
from bootforge.images.configdrive import MAX_ISO, build_configdrive, hostname, make_iso

NODE = "1be26c0b-03f2-4d2d-ae87-c02d7f33c123"


def read_drive(encoded: str) -> tuple[str, dict[str, bytes]]:
    """The volume label and every file by its Rock Ridge path."""
    iso_bytes = gzip.decompress(base64.b64decode(encoded))
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files: dict[str, bytes] = {}
        for directory, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                path = f"{directory.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                files[path.lstrip("/")] = out.getvalue()
        return label, files
    finally:
        iso.close()


def joliet_names(encoded: str) -> set[str]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(gzip.decompress(base64.b64decode(encoded))))
    try:
        return {f"{d}/{n}" for d, _, names in iso.walk(joliet_path="/") for n in names}
    finally:
        iso.close()


def test_built_from_a_dict() -> None:
    spec: dict[str, Any] = {
        "meta_data": {"public_keys": {"ops": "ssh-ed25519 AAAA ops@example"}, "meta": {"role": "db"}},
        "user_data": "#cloud-config\nruncmd: [echo bootforge-marker]\n",
        "network_data": {"links": [{"id": "eth0", "type": "phy"}], "networks": [], "services": []},
        "vendor_data": {"vendor": 1},
    }
    label, files = read_drive(build_configdrive(NODE, "rack1_node~7", spec) or "")
    assert label == "config-2"
    for version in ("latest", "2012-08-10"):
        prefix = f"openstack/{version}/"
        assert {p for p in files if p.startswith(prefix)} == {
            prefix + n for n in ("meta_data.json", "user_data", "network_data.json", "vendor_data.json")
        }
        meta = json.loads(files[prefix + "meta_data.json"])
        assert meta["uuid"] == NODE and meta["name"] == "rack1_node~7"
        assert meta["hostname"] == "rack1-node-7"
        assert meta["launch_index"] == 0
        assert meta["public_keys"] == {"ops": "ssh-ed25519 AAAA ops@example"}
        assert meta["meta"] == {"role": "db"}
        assert len(base64.b64decode(meta["random_seed"])) == 512
        assert files[prefix + "user_data"] == spec["user_data"].encode()
        assert json.loads(files[prefix + "network_data.json"]) == spec["network_data"]
        assert json.loads(files[prefix + "vendor_data.json"]) == {"vendor": 1}
    assert "/openstack/latest/meta_data.json" in joliet_names(build_configdrive(NODE, None, {}) or "")


def test_defaults_and_what_is_left_out() -> None:
    _, files = read_drive(build_configdrive(NODE, None, {}) or "")
    # No network_data.json: an empty one would make cloud-init configure no NIC at all.
    assert sorted(files) == [
        "openstack/2012-08-10/meta_data.json",
        "openstack/2012-08-10/vendor_data.json",
        "openstack/latest/meta_data.json",
        "openstack/latest/vendor_data.json",
    ]
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["name"] == NODE and meta["hostname"] == NODE
    assert json.loads(files["openstack/latest/vendor_data.json"]) == {}


def test_user_data_as_json_and_meta_data_overrides() -> None:
    spec = {"user_data": {"runcmd": ["true"]}, "meta_data": {"hostname": "db1.example.org", "uuid": "other"}}
    _, files = read_drive(build_configdrive(NODE, "n1", spec) or "")
    assert json.loads(files["openstack/latest/user_data"]) == {"runcmd": ["true"]}
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert (meta["hostname"], meta["uuid"], meta["name"]) == ("db1.example.org", "other", "n1")


def test_none_means_no_drive() -> None:
    assert build_configdrive(NODE, None, None) is None


def test_ready_made_drive_is_checked_and_passed_on() -> None:
    iso = make_iso({"openstack/latest/meta_data.json": b'{"uuid": "x"}'})
    given = base64.b64encode(gzip.compress(iso)).decode()
    out = build_configdrive(NODE, None, given)
    assert gzip.decompress(base64.b64decode(out or "")) == iso
    # Line-wrapped base64 (as `base64` prints it) and an ISO that was not gzipped are accepted too.
    wrapped = "\n".join(given[i : i + 76] for i in range(0, len(given), 76))
    assert build_configdrive(NODE, None, wrapped) == out
    plain = base64.b64encode(iso).decode()
    assert gzip.decompress(base64.b64decode(build_configdrive(NODE, None, plain) or "")) == iso


def _labelled(label: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.new(vol_ident=label)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return base64.b64encode(gzip.compress(out.getvalue())).decode()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"plain bytes, no ISO").decode(), "not an ISO 9660 image"),
        (base64.b64encode(gzip.compress(b"x" * 100)).decode(), "not an ISO 9660 image"),
        (base64.b64encode(gzip.compress(b"x" * 100))[:-8].decode() + "AAAAAAAA", "gzip"),
        (_labelled("CIDATA"), "label is 'CIDATA', not 'config-2'"),
        ("https://example.org/drive.iso.gz", "URL is not supported"),
        ({"metadata": {}}, "unknown keys \\['metadata'\\]"),
        ({"meta_data": "x"}, "meta_data must be an object"),
        ({"network_data": []}, "network_data must be an object"),
        ({"user_data": 5}, "user_data must be a string"),
        (["x"], "must be an object or a base64"),
    ],
)
def test_refused(spec: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        build_configdrive(NODE, None, spec)
    assert str(info.value.field).startswith("configdrive")


def test_size_limit() -> None:
    with pytest.raises(InvalidInput, match="limit"):
        build_configdrive(NODE, None, {"user_data": "x" * (MAX_ISO // 2 + 1)})
    # A gzip bomb is stopped at the limit, not inflated whole.
    bomb = base64.b64encode(gzip.compress(bytes(MAX_ISO + 4096))).decode()
    with pytest.raises(InvalidInput, match="limit"):
        build_configdrive(NODE, None, bomb)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("web_01", "web-01"), ("Node~A.rack_2", "node-a.rack-2"), ("__", "localhost"), ("a" * 70, "a" * 63)],
)
def test_hostname(name: str, expected: str) -> None:
    assert hostname(name) == expected
