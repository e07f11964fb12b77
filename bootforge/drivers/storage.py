"""Storage interfaces: where a node's OS lives when it is not written to the node's own disk.

- `noop` (base.NoopStorage, the default): the deploy writes the image to a local disk.
- `iscsi`: the node boots from an iSCSI volume given directly in its volume target (boot_index 0; the
  properties target_iqn, target_portal, target_lun and optional CHAP auth_method / auth_username /
  auth_password), with the initiator name of its `iqn` volume connector. No image is written: a deploy
  only points the machine at the volume, and every boot goes through the network, where bootforge's
  boot script has iPXE `sanboot` the volume (netboot/boot/scripts.py, SanBoot). Ironic calls the same
  idea its `external` storage interface (a volume nobody attaches for it); its `cinder` interface,
  which asks Cinder to export the volume, has no counterpart here.

The check of a target's properties lives here too, since it decides what reaches a boot script: the
API (conductor/volumes.py) applies it to what is given, the deploy and the boot script to the whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bootforge.drivers import base
from bootforge.errors import InvalidInput

ISCSI: Final = "iscsi"
ISCSI_PORT: Final = 3260
# RFC 3720 3.2.6.3: iqn.YYYY-MM.reversed.domain[:anything], or eui. + 16 hex digits. Kept to the
# characters iPXE's script parser and the kernel's iscsi_ibft driver take as they are.
IQN = re.compile(
    r"(iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?(?::[A-Za-z0-9.:_\-]+)?|eui\.[0-9A-Fa-f]{16})"
)
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?")
# CHAP names and secrets go into `set username ...` / `set password ...` lines of an iPXE script:
# no whitespace, no `$` (iPXE expands ${...}), no quotes or backslashes.
CHAP_VALUE = re.compile(r"[A-Za-z0-9._~:/?&=%@+,\-\[\]!*()#^]{1,255}")
AUTH_METHODS: Final = ("CHAP", "None")


@dataclass(frozen=True)
class IscsiConnection:
    """An iSCSI target's connection, checked: what iPXE's sanboot needs."""

    host: str
    port: int
    lun: int
    iqn: str
    username: str | None = None
    password: str | None = None


def parse_portal(value: Any, field: str = "properties.target_portal") -> tuple[str, int]:
    """ "host:port", "host" (port 3260) or "[v6]:port" -> (host, port)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("target_portal must be a string such as 192.0.2.10:3260", field)
    text = value.strip()
    port = ISCSI_PORT
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        try:
            host = f"[{ipaddress.IPv6Address(inner)}]"
        except ValueError:
            raise InvalidInput(
                f"target_portal {text[:80]!r}: not an IPv6 address in brackets", field
            ) from None
        if not sep:
            raise InvalidInput(f"target_portal {text[:80]!r}: missing ']'", field)
        if rest:
            if not rest.startswith(":"):
                raise InvalidInput(f"target_portal {text[:80]!r}: expected ]:port", field)
            port = _port(rest[1:], field)
        return host, port
    host, sep, raw_port = text.rpartition(":")
    if not sep:
        host = text
    else:
        port = _port(raw_port, field)
    if not HOST.fullmatch(host):
        raise InvalidInput(f"target_portal {text[:80]!r}: not a host name or IPv4 address", field)
    return host, port


def _port(raw: str, field: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw[:6]) <= 65535:
        raise InvalidInput(f"target_portal: port {raw[:20]!r} is not a TCP port (1-65535)", field)
    return int(raw)


def parse_lun(value: Any, field: str = "properties.target_lun") -> int:
    # bool is an int to Python; a LUN of `true` is a mistake.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput("target_lun must be an integer from 0 to 255", field)
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 3:
            raise InvalidInput("target_lun must be an integer from 0 to 255", field)
        value = int(value)
    assert isinstance(value, int)
    # iPXE's iSCSI URI takes a single-level LUN; 0-255 is what targets hand out in practice.
    if not 0 <= value <= 255:
        raise InvalidInput("target_lun must be an integer from 0 to 255", field)
    return value


def check_iscsi_properties(props: Mapping[str, Any], *, complete: bool) -> IscsiConnection | None:
    """Check an iSCSI target's properties (the keys present; with `complete`, all that a boot needs).

    Values of secret-named keys must be plaintext here (a request body, or opened by open_properties).
    """

    def field(key: str) -> str:
        return f"properties.{key}"

    for key in ("target_iqn", "target_portal", "target_lun"):
        if complete and props.get(key) in (None, ""):
            raise InvalidInput(f"an iSCSI boot volume needs properties.{key}", field(key))
    iqn = props.get("target_iqn")
    if iqn is not None and (not isinstance(iqn, str) or not IQN.fullmatch(iqn)):
        raise InvalidInput(
            "target_iqn is not an iSCSI qualified name (iqn.YYYY-MM.reversed.domain[:name])",
            field("target_iqn"),
        )
    host, port = parse_portal(props["target_portal"]) if props.get("target_portal") is not None else ("", 0)
    lun = parse_lun(props["target_lun"]) if props.get("target_lun") is not None else 0
    method = props.get("auth_method")
    if method is not None and method not in AUTH_METHODS:
        raise InvalidInput(f"auth_method must be one of {', '.join(AUTH_METHODS)}", field("auth_method"))
    creds: dict[str, str] = {}
    for key in ("auth_username", "auth_password"):
        value = props.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not CHAP_VALUE.fullmatch(value):
            # Never the value itself: auth_password is a secret.
            raise InvalidInput(
                f"{key} must be 1-255 characters without spaces, quotes, backslashes or '$'", field(key)
            )
        creds[key] = value
    if method == "CHAP" and complete and len(creds) != 2:
        missing = "auth_username" if "auth_username" not in creds else "auth_password"
        raise InvalidInput(f"auth_method CHAP needs properties.{missing}", field(missing))
    if not complete:
        return None
    use_chap = method == "CHAP"
    return IscsiConnection(
        host,
        port,
        lun,
        str(iqn),
        creds.get("auth_username") if use_chap else None,
        creds.get("auth_password") if use_chap else None,
    )


@dataclass(frozen=True)
class BootVolume:
    """A node's boot volume (its boot_index 0 target) and its iSCSI initiator name, if it has one."""

    target_uuid: str
    volume_id: str
    volume_type: str
    # Opened (secrets in plaintext): never log or show this.
    properties: dict[str, Any]
    initiator_iqn: str | None
    # Why a sealed property did not open (another key, another target's value), or None.
    unreadable: str | None = None

    def iscsi(self) -> IscsiConnection:
        """The checked iSCSI connection; InvalidInput naming the property that is missing or wrong."""
        if self.unreadable is not None:
            raise InvalidInput(self.unreadable, "properties")
        if self.volume_type != ISCSI:
            raise InvalidInput(
                f"the boot volume {self.volume_id} is of type {self.volume_type}; bootforge boots iscsi only",
                "volume_type",
            )
        conn = check_iscsi_properties(self.properties, complete=True)
        assert conn is not None
        return conn


class IscsiStorage(base.StorageInterface):
    """Boot from an iSCSI volume named in the node's volume target: no image, iPXE sanboot every boot."""

    name = "iscsi"

    def validate(self, task: base.Task) -> None:
        # The volume is reached by iPXE, which only bootforge's network boot hands the node.
        boot = task.driver.boot
        if not boot.netboot:
            raise InvalidInput(
                f"the iscsi storage interface boots the node with iPXE's sanboot from bootforge's network "
                f"boot; boot_interface {boot.name} does not network-boot: use pxe or ipxe",
                "boot_interface",
            )

    async def boot_volume(self, task: base.Task) -> BootVolume | None:
        volume = await task.boot_volume()
        if volume is None:
            if not task.node.instance_info.get("image_source"):
                # The deploy interface left this check to us (it cannot read volume targets).
                raise InvalidInput(
                    f"node {task.node.uuid} has no boot volume (a volume target with boot_index 0) and "
                    "no instance_info.image_source: give it one or the other",
                    "instance_info.image_source",
                )
            return None
        if task.node.instance_info.get("image_source"):
            raise InvalidInput(
                f"node {task.node.uuid} boots from volume {volume.volume_id} (its boot_index 0 volume "
                "target), so no image is written: remove instance_info.image_source, or the volume target",
                "instance_info.image_source",
            )
        conn = volume.iscsi()
        del conn  # checked: a deploy of a volume that cannot boot fails before the machine is touched
        if volume.initiator_iqn is None:
            raise InvalidInput(
                f"node {task.node.uuid} boots from an iSCSI volume and needs its initiator name: add a "
                "volume connector of type iqn (baremetal volume connector create --type iqn)",
                "volume_connector",
            )
        return volume


async def boot_from_volume(task: base.Task, volume: BootVolume) -> None:
    """The deploy's hand-over for a node that boots from its volume: power it onto the network, where
    its boot script (SanBoot) has iPXE sanboot the volume; no disk hand-off to watch for."""
    # Imported here: drivers/agent.py builds on this module.
    from bootforge.drivers.agent import AGENT_BOOT, AGENT_COMMAND, DEPLOY_CONFIGDRIVE

    conn = volume.iscsi()
    task.set_internal(**{AGENT_BOOT: None, AGENT_COMMAND: None, DEPLOY_CONFIGDRIVE: None})
    await task.driver.boot.clean_up_ramdisk(task)
    await task.driver.boot.prepare_instance(task)
    power = task.driver.power
    await power.set_power_state(task, base.POWER_OFF)
    # Saved before the power-on: the netboot view must no longer see a ramdisk boot for the node.
    await task.save()
    await power.set_power_state(task, base.POWER_ON)
    task.node.power_state = base.POWER_ON
    await task.record(
        "deploy",
        f"power cycled to boot from volume {volume.volume_id}: iPXE sanboot of iSCSI {conn.iqn} LUN "
        f"{conn.lun} at {conn.host}:{conn.port} (initiator {volume.initiator_iqn})",
    )
