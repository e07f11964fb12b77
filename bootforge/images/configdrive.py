"""The config drive: cloud-init's ConfigDrive v2 (OpenStack layout), built from a deploy request.

Ironic's `configdrive` argument is either a dict (meta_data, user_data, network_data, vendor_data) that
the service turns into an ISO, or a string that already is one (base64 of gzip of the ISO). Either way
the agent receives base64(gzip(ISO 9660 labelled "config-2")). The ISO carries Rock Ridge and Joliet
names, as genisoimage -r -J makes them for Nova: cloud-init mounts the drive, and plain ISO 9660 names
are upper case 8.3-style, not "meta_data.json".
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import os
import re
import zlib
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from bootforge.errors import InvalidInput

FIELD = "configdrive"
LABEL = "config-2"
MAX_ISO = 64 << 20
# Nova writes both; cloud-init reads "latest", older readers the dated version.
VERSIONS = ("latest", "2012-08-10")
KEYS = {"meta_data", "user_data", "network_data", "vendor_data"}
HOSTNAME_BAD = re.compile(r"[^a-z0-9.-]+")


def build_configdrive(node_uuid: str, node_name: str | None, spec: dict[str, Any] | str | None) -> str | None:
    """base64(gzip(ISO)) for Ironic's `configdrive` value `spec`; None when no config drive is asked for."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return _checked_image(spec)
    if not isinstance(spec, dict):
        raise InvalidInput("configdrive must be an object or a base64-encoded gzipped ISO image", FIELD)
    files = drive_files(node_uuid, node_name, spec)
    return _encode(make_iso(files))


def drive_files(node_uuid: str, node_name: str | None, spec: dict[str, Any]) -> dict[str, bytes]:
    """The drive's files by path (e.g. "openstack/latest/meta_data.json")."""
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise InvalidInput(
            f"configdrive has unknown keys {unknown}; allowed: {sorted(KEYS)}", f"{FIELD}.{unknown[0]}"
        )
    for key in ("meta_data", "network_data", "vendor_data"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise InvalidInput(f"configdrive {key} must be an object", f"{FIELD}.{key}")
    content = {
        "meta_data.json": _json(meta_data(node_uuid, node_name, spec.get("meta_data") or {})),
        "vendor_data.json": _json(spec.get("vendor_data") or {}),
    }
    # Left out when not given: an empty network_data.json would tell cloud-init to configure no
    # interface at all, where without one it falls back to DHCP on the first NIC.
    if spec.get("network_data"):
        content["network_data.json"] = _json(spec["network_data"])
    user_data = _user_data(spec.get("user_data"))
    if user_data is not None:
        content["user_data"] = user_data
    total = sum(len(v) for v in content.values()) * len(VERSIONS)
    if total > MAX_ISO:
        raise InvalidInput(f"the config drive would be {total} bytes; the limit is {MAX_ISO}", FIELD)
    return {f"openstack/{version}/{name}": data for version in VERSIONS for name, data in content.items()}


def meta_data(node_uuid: str, node_name: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """Nova's meta_data.json keys, with what the request gave taking precedence (as in Ironic)."""
    name = node_name or node_uuid
    defaults: dict[str, Any] = {
        "uuid": node_uuid,
        "name": name,
        "hostname": hostname(name),
        "launch_index": 0,
        "public_keys": {},
        "files": [],
        "meta": {},
        # cloud-init seeds the kernel's random pool from it on first boot.
        "random_seed": base64.b64encode(os.urandom(512)).decode(),
    }
    return {**defaults, **given}


def hostname(name: str) -> str:
    """A host name for a node name: node names allow '_' and '~', host names do not."""
    labels = [HOSTNAME_BAD.sub("-", label).strip("-")[:63] for label in name.lower().split(".")]
    return ".".join(label for label in labels if label)[:253] or "localhost"


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _user_data(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):
        return json.dumps(value).encode()
    raise InvalidInput("configdrive user_data must be a string, an object or a list", f"{FIELD}.user_data")


def _iso_name(name: str, is_file: bool) -> str:
    """The plain ISO 9660 (level 3) name: d-characters only; readers use the Rock Ridge / Joliet ones."""
    upper = re.sub(r"[^A-Z0-9_.]", "_", name.upper())
    if not is_file:
        return upper.replace(".", "_")
    stem, dot, ext = upper.rpartition(".")
    return f"{stem.replace('.', '_')}.{ext};1" if dot else f"{upper}.;1"


def make_iso(files: dict[str, bytes]) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, app_ident_str="bootforge", joliet=3, rock_ridge="1.09")
    made: set[str] = set()
    for path, data in sorted(files.items()):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                iso.add_directory(
                    "/" + "/".join(_iso_name(p, False) for p in parts[:depth]),
                    rr_name=parts[depth - 1],
                    joliet_path="/" + directory,
                )
                made.add(directory)
        iso_path = "/" + "/".join(_iso_name(p, i == len(parts) - 1) for i, p in enumerate(parts))
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=parts[-1], joliet_path="/" + path)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def _encode(iso: bytes) -> str:
    if len(iso) > MAX_ISO:
        raise InvalidInput(f"the config drive is {len(iso)} bytes; the limit is {MAX_ISO}", FIELD)
    return base64.b64encode(gzip.compress(iso, mtime=0)).decode()


def _checked_image(text: str) -> str:
    """A config drive given ready-made: it must decode to an ISO 9660 image labelled config-2."""
    if text.startswith(("http://", "https://")):
        raise InvalidInput(
            "a config drive URL is not supported; pass the config drive itself (an object with "
            "meta_data/user_data/network_data, or a base64-encoded gzipped ISO)",
            FIELD,
        )
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("configdrive is not valid base64 (nor an object)", FIELD) from None
    if data.startswith(b"\x1f\x8b"):
        data = _gunzip(data)
    if len(data) > MAX_ISO:
        raise InvalidInput(f"the config drive is {len(data)} bytes; the limit is {MAX_ISO}", FIELD)
    label = iso_label(data)
    if label.lower() != LABEL:
        raise InvalidInput(f"the config drive's ISO 9660 label is {label!r}, not {LABEL!r}", FIELD)
    return _encode(data)


def _gunzip(data: bytes) -> bytes:
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(data, MAX_ISO + 1)
    except zlib.error as e:
        raise InvalidInput(f"configdrive is not valid gzip data: {e}", FIELD) from None
    if len(out) > MAX_ISO:
        raise InvalidInput(f"the config drive is larger than the limit of {MAX_ISO} bytes", FIELD)
    if not inflate.eof:
        raise InvalidInput("configdrive's gzip data is truncated", FIELD)
    return out


def iso_label(data: bytes) -> str:
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
    except PyCdlibException:
        raise InvalidInput("the config drive is not an ISO 9660 image", FIELD) from None
    try:
        ident: bytes = iso.pvd.volume_identifier
        return ident.decode("ascii", errors="replace").strip()
    finally:
        iso.close()


__all__ = ["build_configdrive", "drive_files", "hostname", "iso_label", "make_iso", "meta_data"]
