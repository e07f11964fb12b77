"""Vendor quirks as data: what a BMC does differently from the DMTF specification, and what the
client does about it.

One table, `RULES`, read top to bottom; the first rule whose patterns match the service wins, and the
last rule (`DEFAULT`) matches everything. A rule matches on the ComputerSystem's Manufacturer (or,
when a system does not say, the service root's Vendor), optionally its Model and the manager's
FirmwareVersion (a half-open version range). The client looks the rule up once per connection.

Every row says where its facts come from. Sources are vendor documentation, issues reported against
Redfish clients by people running those BMCs, and behaviour that Ironic and sushy implement for them
(read, not copied). Where a fact holds for some firmware only and the versions are not documented, the
row says so instead of inventing a range. A wrong guess costs little: virtual media is searched in
both places whatever the order says, and an ETag is sent whenever the BMC gave one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

# Power actions bootforge asks for, and the ResetType values that do each, in order of preference.
# The client picks the first one the BMC advertises (@Redfish.AllowableValues or ActionInfo).
DEFAULT_RESETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "on": ("On", "ForceOn"),
        "off": ("ForceOff",),
        "soft_off": ("GracefulShutdown",),
        # Neither: power off then on.
        "reboot": ("ForceRestart", "PowerCycle"),
        # Neither: graceful shutdown (hard after the timeout) then on.
        "soft_reboot": ("GracefulRestart",),
    }
)


@dataclass(frozen=True)
class Quirks:
    name: str = "default"
    # Where virtual media is looked for first ("systems": ComputerSystem.VirtualMedia, "managers":
    # Manager.VirtualMedia). Both are searched; this only orders the search.
    vmedia_first: Literal["systems", "managers"] = "systems"
    # How media is inserted: the VirtualMedia.InsertMedia action, or a PATCH of Image/Inserted on the
    # VirtualMedia resource (older services without the action).
    insert_method: Literal["action", "patch"] = "action"
    # Optional InsertMedia parameters the BMC needs (or, left out, refuses).
    insert_fields: tuple[str, ...] = ("Inserted", "WriteProtected")
    # Add TransferProtocolType (HTTP/HTTPS, from the image URL) to InsertMedia.
    insert_transfer_protocol: bool = False
    # PATCH BootSourceOverrideMode in a request of its own, before target and frequency.
    boot_mode_separate: bool = False
    # The BMC stages a boot mode change for the next boot and reads back the old mode until then,
    # so the client does not check the mode it wrote.
    boot_mode_at_next_boot: bool = False
    # False: the BMC does not let BootSourceOverrideMode be written; changing it is refused with a
    # named error (switch it in the firmware setup or BIOS attributes instead).
    boot_mode_writable: bool = True
    # "changed": send BootSourceOverrideEnabled only when it differs from the current value (some
    # BMCs refuse re-setting the same value); "always": send it with every target.
    boot_send_enabled: Literal["changed", "always"] = "changed"
    # Repeat the current BootSourceOverrideMode with every target PATCH (the BMC otherwise resets the
    # mode to its default).
    boot_send_mode: bool = False
    # The target used for "cdrom" when the BMC offers it (virtual media appears as a USB CD).
    cdrom_target: str = "Cd"
    # PATCH boot properties to the resource named by @Redfish.Settings (a "future state" object)
    # when the system advertises one.
    boot_settings_object: bool = False
    # "when-known": If-Match with the ETag a fresh GET returned, if any (the standard); "required":
    # also when the BMC gave none ("*"), because it answers 428 without the header.
    if_match: Literal["when-known", "required"] = "when-known"
    # Concurrent sessions bootforge opens to one BMC at most (None: no limit of ours).
    session_limit: int | None = None
    # Power transitions take this many times the usual timeout to show in PowerState.
    power_wait_factor: float = 1.0
    # MessageIds (a substring is enough) of an error that means "busy, try again", for BMCs that say
    # so with a 4xx/5xx other than 503/429.
    busy_messages: tuple[str, ...] = ()
    resets: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_RESETS)


@dataclass(frozen=True)
class Rule:
    quirks: Quirks
    manufacturer: str = ".*"  # regex, case-insensitive, must match the whole Manufacturer/Vendor
    model: str = ".*"
    # [min, max) of the manager's FirmwareVersion, compared as tuples of numbers; None: any.
    firmware_min: str | None = None
    firmware_max: str | None = None

    @property
    def needs_firmware(self) -> bool:
        return self.firmware_min is not None or self.firmware_max is not None

    def matches(self, manufacturer: str, model: str, firmware: str | None) -> bool:
        if not re.fullmatch(self.manufacturer, manufacturer, re.IGNORECASE):
            return False
        if not re.fullmatch(self.model, model, re.IGNORECASE):
            return False
        if not self.needs_firmware:
            return True
        if firmware is None:
            return False
        version = version_tuple(firmware)
        if self.firmware_min is not None and version < version_tuple(self.firmware_min):
            return False
        return not (self.firmware_max is not None and version >= version_tuple(self.firmware_max))


def version_tuple(text: str) -> tuple[int, ...]:
    """'6.10.30.00' -> (6, 10, 30, 0); '1.45 (build 12)' -> (1, 45); letters end the number."""
    match = re.match(r"\D*(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


_DELL = "dell( inc\\.?)?"

RULES: tuple[Rule, ...] = (
    # Dell iDRAC, firmware before 6.00: virtual media lives under the Manager
    # (/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia); Dell's iDRAC-Redfish-Scripting change log
    # (0.0.5) notes the virtual media changes that came with 6.00.00 (media under the System, several
    # devices at once).
    # Boot mode apart: iDRAC refuses BootSourceOverrideMode in the same PATCH as the override
    # frequency (IDRAC SYS410/SYS444 "depends on other attributes", ansible-collections/
    # community.general#5091, a 13th-generation iDRAC 8); Ironic likewise sets the mode in a call of
    # its own (ironic redfish/management.py set_boot_mode).
    # Busy: "SYS518" (iDRAC not ready after the previous operation) is retried by sushy's connector
    # (check_retry_on_exception).
    # Boot mode staged: Ironic's idrac driver changes the boot mode as a BIOS setting applied by a
    # configuration job at the next boot, so the old mode reads back until then (not checked on
    # hardware here: the client just does not hold the read-back against it).
    # Sessions: iDRAC allows 8 by default and answers a login past that with 503 RAC0218 "maximum
    # number of user sessions" (bb-Ricardo/check_redfish#89 and #198, stmcginnis/gofish#75);
    # bootforge holds at most 4 at a time per iDRAC, leaving the rest to people and other tools.
    Rule(
        Quirks(
            name="dell-idrac<6",
            vmedia_first="managers",
            boot_mode_separate=True,
            boot_mode_at_next_boot=True,
            busy_messages=("SYS518",),
            session_limit=4,
        ),
        manufacturer=_DELL,
        firmware_max="6.0",
    ),
    Rule(
        Quirks(
            name="dell-idrac",
            boot_mode_separate=True,
            boot_mode_at_next_boot=True,
            busy_messages=("SYS518",),
            session_limit=4,
        ),
        manufacturer=_DELL,
    ),
    # HPE iLO 5/6: virtual media under the Manager (/redfish/v1/Managers/1/VirtualMedia/2 is the CD),
    # as in the DMTF/HPE public iLO mockups. EjectMedia wants an empty JSON object as its body (sushy
    # virtual_media.eject_media retries with {} "for vendors like HPE iLO"); bootforge always sends {}.
    # BootSourceOverrideMode is read-only on iLO (ansible-collections/community.general#3509, and
    # metal3-io/metal3-docs#581: "boot mode cannot be changed via Redfish" on iLO 5).
    # Busy: "InvalidOperationForSystemState" right after a power change is retried by sushy's
    # connector; iLO's POST after power on is slow, hence the longer power wait.
    Rule(
        Quirks(
            name="hpe-ilo",
            vmedia_first="managers",
            boot_mode_writable=False,
            busy_messages=("InvalidOperationForSystemState",),
            power_wait_factor=2.0,
        ),
        manufacturer="hpe?|hewlett packard enterprise|hewlett-packard",
    ),
    # Lenovo ThinkSystem SD530 (XCC): no InsertMedia action; media is attached by PATCHing Image with
    # Inserted=true on the VirtualMedia resource, and is not attached without Inserted (sushy
    # virtual_media.insert_media, the note on "Lenovo SD530 which is using PATCH method").
    Rule(
        Quirks(name="lenovo-xcc-sd530", vmedia_first="managers", insert_method="patch", if_match="required"),
        manufacturer="lenovo",
        model=".*sd530.*",
    ),
    # Lenovo XCC: PATCH without If-Match is refused with 428 Precondition Required (ansible/ansible
    # #56050 and the fix #56150, tested on Lenovo systems). Newer XCC firmware was reported to refuse
    # some If-Match values with 412 (ansible-collections/community.general#11261, unresolved, versions
    # not given): the client's one re-GET-and-retry after a 412 covers a stale ETag only.
    # Virtual media under the Manager (/redfish/v1/Managers/1/VirtualMedia, Lenovo's python-redfish-
    # lenovo examples).
    Rule(
        Quirks(name="lenovo-xcc", vmedia_first="managers", if_match="required"),
        manufacturer="lenovo",
    ),
    # Supermicro (X11/X12 and AMI-based H12/H13): InsertMedia fails when Inserted or WriteProtected
    # are given (sushy virtual_media.insert_media, "SuperMicro X11"); virtual media boots only as the
    # "UsbCd" target, not "Cd" (sushy system.set_system_boot_options); BootSourceOverrideEnabled must
    # be sent with every boot device (Ironic redfish/management.py _set_boot_device, storyboard
    # 2008547); the mode falls back to its default unless repeated with the target (DMTF/Redfishtool
    # #106, confirmed by Supermicro as by design). Virtual media under the Manager
    # (/redfish/v1/Managers/1/VirtualMedia).
    Rule(
        Quirks(
            name="supermicro",
            vmedia_first="managers",
            insert_fields=(),
            cdrom_target="UsbCd",
            boot_send_enabled="always",
            boot_send_mode=True,
        ),
        manufacturer="supermicro",
    ),
    # AMI MegaRAC (also sold as ASRock Rack, Gigabyte): boot properties are written to the future-
    # state object named by @Redfish.Settings (/redfish/v1/Systems/Self/SD; AMI answers
    # "OperationSupportedInFutureStateURI" otherwise, DMTF/Redfish-Tacklebox#144), and PATCH needs
    # If-Match ("did not provide the required precondition", ansible-collections/community.general
    # #6434). Virtual media under /redfish/v1/Managers/Self/VirtualMedia.
    Rule(
        Quirks(name="ami", vmedia_first="managers", boot_settings_object=True, if_match="required"),
        manufacturer="ami|american megatrends( inc\\.?)?|asrockrack|asrock rack|gigabyte",
    ),
    # OpenBMC (bmcweb): virtual media under /redfish/v1/Managers/bmc/VirtualMedia; bmcweb's
    # InsertMedia takes TransferProtocolType and refuses an image whose protocol it cannot infer, so
    # bootforge names it (sushy adds it after a "TransferProtocolType" GeneralError, virtual_media
    # .is_transfer_protocol_required). Power transitions go through the host state manager and take
    # tens of seconds on real hosts, hence the longer wait.
    Rule(
        Quirks(
            name="openbmc",
            vmedia_first="managers",
            insert_transfer_protocol=True,
            power_wait_factor=2.0,
        ),
        manufacturer="openbmc",
    ),
)

DEFAULT = Rule(Quirks())


def needs_firmware(names: tuple[str | None, ...], model: str | None) -> bool:
    """True when a rule for one of these vendor names and this model depends on the firmware version
    (the client then reads the manager's FirmwareVersion before it selects)."""
    return any(r.needs_firmware and _vendor_model(r, n or "", model or "") for r in RULES for n in names)


def _vendor_model(rule: Rule, manufacturer: str, model: str) -> bool:
    return bool(
        re.fullmatch(rule.manufacturer, manufacturer, re.IGNORECASE)
        and re.fullmatch(rule.model, model, re.IGNORECASE)
    )


def select(names: tuple[str | None, ...], model: str | None, firmware: str | None) -> Quirks:
    """The quirks of the first rule matching the first of `names` (the system's Manufacturer, then
    the service root's Vendor) that any rule matches; DEFAULT's when none does."""
    for name in names:
        if not name:
            continue
        for rule in RULES:
            if rule.matches(name, model or "", firmware):
                return rule.quirks
    return DEFAULT.quirks
