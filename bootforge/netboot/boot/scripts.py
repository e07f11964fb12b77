"""Boot plans and the iPXE scripts and grub.cfg files that carry them out (pure: no I/O).

Rules for this file:
  1. A plan is data: what the node should do next (boot a ramdisk, boot its disk, wait and ask
     again). The conductor decides the plan from node state; this module only renders it.
  2. Nothing a caller passes can change the structure of a rendered script. Everything that
     reaches a script is either validated against a narrow character set (kernel arguments,
     which the kernel itself splits on spaces, so a value with a space cannot be passed anyway),
     percent-encoded (URLs), or reduced to harmless characters (display text). iPXE expands
     `${...}` in every command line and treats a lone `||` as an operator; GRUB expands `$`
     outside single quotes. So `$`, quotes, backslashes and control characters never pass.
  3. Every loop is bounded: a ramdisk boot is tried `attempts` times, a refusal is asked again at
     most `max_attempts` times, then the node reboots. A script never chains back to a TFTP
     loader, so a node cannot end up in a loader -> script -> loader loop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .arch import Firmware

__all__ = [
    "BootPlan",
    "LocalDiskBoot",
    "RamdiskBoot",
    "RefuseBoot",
    "SanBoot",
    "ScriptError",
    "render_grub",
    "render_grub_bootstrap",
    "render_ipxe",
    "safe_url",
    "with_attempt",
]


class ScriptError(ValueError):
    """A plan holds something that cannot be put into a boot script safely."""


_ARG_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# Enough for URLs (percent-encoded), tokens, console specs and IPv6 literals; nothing a shell-like
# parser (iPXE, GRUB, the kernel's own splitter) treats specially.
_ARG_VALUE = re.compile(r"[A-Za-z0-9._~:/?&=%@+,\-\[\]!*()]*")
# RFC 3986 reserved + unreserved, minus what iPXE or GRUB expand ($) or what ends a word ('"\\).
_URL_SAFE = ":/?&=%@+,-._~[]!*()"
_URL_SCHEMES = frozenset({"http", "https", "tftp"})
_TEXT_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;_/()\[\]@%+=<>?!*-]")
_TEXT_MAX = 160
_TOKEN = re.compile(r"[0-9a-f]{64}")
_MAX_ATTEMPTS = 10


def safe_url(url: str) -> str:
    """url with every character a boot script could misread percent-encoded; ScriptError if unusable."""
    encoded = quote(url, safe=_URL_SAFE)
    parts = urlsplit(encoded)
    if parts.scheme not in _URL_SCHEMES or not parts.netloc:
        raise ScriptError(f"not an http, https or tftp URL: {url!r}")
    return urlunsplit(parts._replace(fragment=""))


def with_attempt(url: str, attempt: int) -> str:
    """url with its `attempt` query parameter set, so the server can bound a retry loop."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "attempt"]
    query.append(("attempt", str(attempt)))
    return urlunsplit(parts._replace(query=urlencode(query, safe=":/")))


def _text(message: str) -> str:
    """Display text reduced to characters that are inert in both iPXE and GRUB."""
    flat = " ".join(message.split())
    return _TEXT_UNSAFE.sub("?", flat)[:_TEXT_MAX] or "?"


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ScriptError(f"{name} must be in [{low}, {high}], not {value}")


KernelArgs = tuple[tuple[str, str | None], ...]


def ramdisk_kernel_args(
    api_url: str,
    node_uuid: str,
    mac: str | None,
    extra: Sequence[str] = (),
    *,
    boot_token: str | None = None,
    **more: str,
) -> KernelArgs:
    """The bootforge ramdisk's kernel parameters, however it boots (network script, virtual CD).

    The agent finds the API and its node from them (bootforge/agent/cmdline.py reads the same
    names); `boot_token` is this boot's token, which the agent's lookup must show (so whatever
    carries these parameters, a script or an ISO, is handed only to the machine); `extra` are the
    operator's words ("console=ttyS0,115200n8", "quiet"); `more` adds bootforge.<name>=value
    parameters (a virtual-media boot's static network, say).
    """
    args: list[tuple[str, str | None]] = [("bootforge.api", api_url), ("bootforge.node", node_uuid)]
    if boot_token:
        if not _TOKEN.fullmatch(boot_token):
            raise ScriptError("a boot token is 64 hexadecimal digits")
        args.append(("bootforge.boot_token", boot_token))
    if mac:
        args.append(("BOOTIF", mac))
    args += [(f"bootforge.{key}", value) for key, value in more.items()]
    for word in extra:
        key, sep, value = word.partition("=")
        args.append((key, value if sep else None))
    return tuple(args)


@dataclass(frozen=True, slots=True)
class RamdiskBoot:
    """Boot a kernel and initrd over the network (deploy, inspect, clean or rescue ramdisk)."""

    kernel_url: str
    initrd_url: str
    # Ordered kernel parameters; a None value renders a bare flag ("quiet").
    kernel_args: KernelArgs = ()
    # The name the EFI stub looks for in `initrd=`: Debian's 2019 EFI iPXE has no LoadFile2, so
    # the kernel finds the initrd only through that argument (lab pitfall 6).
    initrd_name: str = "initrd"
    purpose: str = "deploy"
    attempts: int = 3
    retry_delay: int = 5

    def __post_init__(self) -> None:
        safe_url(self.kernel_url)
        safe_url(self.initrd_url)
        for key, value in self.kernel_args:
            if not _ARG_KEY.fullmatch(key):
                raise ScriptError(f"bad kernel parameter name {key!r}")
            if value is not None and not _ARG_VALUE.fullmatch(value):
                raise ScriptError(f"kernel parameter {key} has characters a boot script cannot carry")
        if not _ARG_KEY.fullmatch(self.initrd_name):
            raise ScriptError(f"bad initrd name {self.initrd_name!r}")
        if not _ARG_KEY.fullmatch(self.purpose):
            raise ScriptError(f"bad purpose {self.purpose!r}")
        _check_count("attempts", self.attempts, 1, _MAX_ATTEMPTS)
        _check_count("retry_delay", self.retry_delay, 0, 3600)

    def cmdline(self, *, with_initrd: bool) -> list[str]:
        words = [f"initrd={self.initrd_name}"] if with_initrd else []
        words += [key if value is None else f"{key}={value}" for key, value in self.kernel_args]
        return words


@dataclass(frozen=True, slots=True)
class LocalDiskBoot:
    """Leave the network boot and start the installed OS from the local disk."""

    firmware: Firmware

    def __post_init__(self) -> None:
        if self.firmware not in (Firmware.BIOS, Firmware.UEFI):
            raise ScriptError(f"no local-disk boot recipe for {self.firmware.value} firmware")


@dataclass(frozen=True, slots=True)
class RefuseBoot:
    """Say why the node gets nothing to boot, wait, and ask again (up to max_attempts)."""

    message: str
    retry_url: str  # the same script URL; with_attempt() counts the retries in its query
    retry_delay: int = 30
    attempt: int = 1
    max_attempts: int = _MAX_ATTEMPTS

    def __post_init__(self) -> None:
        safe_url(self.retry_url)
        _check_count("retry_delay", self.retry_delay, 1, 3600)
        _check_count("max_attempts", self.max_attempts, 1, 1000)
        _check_count("attempt", self.attempt, 1, 1_000_000)

    @property
    def gives_up(self) -> bool:
        return self.attempt >= self.max_attempts


# iSCSI names (RFC 3720: iqn.YYYY-MM.domain[:name] or eui.<16 hex>) as iPXE's URI parser and a
# `set initiator-iqn` line take them: no ':' beyond the name part's, nothing iPXE expands.
_IQN = re.compile(
    r"(iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?(?::[A-Za-z0-9.:_\-]+)?|eui\.[0-9A-Fa-f]{16})"
)
_SAN_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
# CHAP credentials on `set username` / `set password` lines: one word, nothing iPXE expands.
_CHAP = re.compile(r"[A-Za-z0-9._~:/?&=%@+,\-\[\]!*()#^]{1,255}")


@dataclass(frozen=True, slots=True)
class SanBoot:
    """Boot from an iSCSI volume with iPXE's sanboot: the machine has no disk of its own to boot.

    iPXE connects to the target, hooks it as the BIOS's first hard disk (INT 13h) or as an EFI block
    device, publishes an iBFT describing the connection (so an OS with iSCSI in its initrd can find
    its root there again), and boots the volume's boot sector or EFI loader.
    """

    host: str  # IPv4 address, DNS name, or [IPv6]
    port: int
    lun: int
    target_iqn: str
    initiator_iqn: str | None = None
    username: str | None = None  # CHAP, with password
    password: str | None = None
    attempts: int = 3
    retry_delay: int = 5

    def __post_init__(self) -> None:
        if not _SAN_HOST.fullmatch(self.host):
            raise ScriptError(f"bad iSCSI target host {self.host[:80]!r}")
        _check_count("port", self.port, 1, 65535)
        # Single-level LUNs: iPXE reads the URI's LUN field as hexadecimal groups.
        _check_count("lun", self.lun, 0, 255)
        for name, value in (("target_iqn", self.target_iqn), ("initiator_iqn", self.initiator_iqn)):
            if value is not None and not _IQN.fullmatch(value):
                raise ScriptError(f"{name} is not an iSCSI qualified name: {value[:80]!r}")
        if (self.username is None) != (self.password is None):
            raise ScriptError("CHAP needs both a username and a password")
        for value in (self.username, self.password):
            # The value is never shown: the password is a secret.
            if value is not None and not _CHAP.fullmatch(value):
                raise ScriptError("a CHAP username or password has characters a boot script cannot carry")
        _check_count("attempts", self.attempts, 1, _MAX_ATTEMPTS)
        _check_count("retry_delay", self.retry_delay, 0, 3600)

    @property
    def uri(self) -> str:
        """iPXE's iSCSI URI: iscsi:<server>:<protocol>:<port>:<LUN>:<target name> (protocol 6, TCP,
        when empty; the LUN in hexadecimal)."""
        return f"iscsi:{self.host}::{self.port}:{self.lun:x}:{self.target_iqn}"


BootPlan = RamdiskBoot | LocalDiskBoot | RefuseBoot | SanBoot


# -- iPXE -----------------------------------------------------------------------------------------


def render_ipxe(plan: BootPlan) -> str:
    if isinstance(plan, RamdiskBoot):
        lines = _ipxe_ramdisk(plan)
    elif isinstance(plan, LocalDiskBoot):
        lines = _ipxe_local(plan)
    elif isinstance(plan, SanBoot):
        lines = _ipxe_san(plan)
    else:
        lines = _ipxe_refuse(plan)
    return "\n".join(["#!ipxe", *lines]) + "\n"


def _ipxe_ramdisk(plan: RamdiskBoot) -> list[str]:
    kernel, initrd = safe_url(plan.kernel_url), safe_url(plan.initrd_url)
    args = " ".join(plan.cmdline(with_initrd=True))
    lines = [
        f"# bootforge: {plan.purpose} ramdisk. A failed download (the usual failure: a network",
        "# hiccup) is retried a bounded number of times, then the node reboots and starts over.",
    ]
    for n in range(1, plan.attempts + 1):
        retry = f"retry{n}"
        lines += [
            f":try{n}",
            "imgfree",  # drop images of a failed attempt, or kernel + initrd pile up in RAM
            f"kernel --name vmlinuz {kernel} {args} || goto {retry}",
            f"initrd --name {plan.initrd_name} {initrd} || goto {retry}",
            f"boot || goto {retry}",
            f":{retry}",
        ]
        if n < plan.attempts:
            lines += [
                f"echo bootforge: {plan.purpose} ramdisk attempt {n} of {plan.attempts} failed,"
                f" retrying in {plan.retry_delay} s",
                f"sleep {plan.retry_delay}",
            ]
    lines += [
        f"echo bootforge: {plan.purpose} ramdisk did not boot after {plan.attempts} attempts,"
        f" rebooting in {plan.retry_delay} s",
        f"sleep {plan.retry_delay}",
        "reboot",
    ]
    return lines


def _ipxe_local(plan: LocalDiskBoot) -> list[str]:
    if plan.firmware is Firmware.BIOS:
        return [
            "# bootforge: boot the local disk. sanboot hands the first hard disk (BIOS drive 0x80) to",
            "# the BIOS boot path; a plain exit makes many BIOSes stop at 'no bootable device' instead.",
            "# --no-describe: do not publish an iBFT/SAN description the installed OS would act on.",
            "echo bootforge: booting from the local disk",
            "sanboot --no-describe --drive 0x80 || goto failed",
            ":failed",
            "echo bootforge: local disk boot failed, handing back to the BIOS",
            "exit 1",
        ]
    return [
        "# bootforge: boot the local disk. EFI iPXE cannot sanboot a local disk; it exits to the",
        "# firmware boot manager, which moves on to the next BootOrder entry (the disk). The status",
        "# must be an error: on EFI_SUCCESS the firmware may stop in its boot menu (UEFI 2.x 3.1.1).",
        "echo bootforge: leaving iPXE so the firmware boots the local disk",
        "exit 1",
    ]


def _ipxe_san(plan: SanBoot) -> list[str]:
    lines = [
        "# bootforge: boot from the node's iSCSI volume. sanboot connects, hooks the volume as the",
        "# first disk (BIOS INT 13h drive 0x80, or an EFI block device), describes it in an iBFT for",
        "# the OS, and boots it; a failed attempt is retried a bounded number of times, then reboot.",
    ]
    if plan.initiator_iqn is not None:
        lines.append(f"set initiator-iqn {plan.initiator_iqn}")
    if plan.username is not None and plan.password is not None:
        lines += [f"set username {plan.username}", f"set password {plan.password}"]
    else:
        # Settings left by an earlier script in the same iPXE must not be sent to this target.
        lines += ["clear username", "clear password"]
    for n in range(1, plan.attempts + 1):
        lines += [
            f"echo bootforge: booting from iSCSI {plan.target_iqn} LUN {plan.lun} at {plan.host}:{plan.port}",
            f"sanboot {plan.uri} || goto retry{n}",
            f":retry{n}",
        ]
        if n < plan.attempts:
            lines += [
                f"echo bootforge: iSCSI boot attempt {n} of {plan.attempts} failed",
                f"sleep {plan.retry_delay}",
            ]
    lines += [
        f"echo bootforge: iSCSI boot failed {plan.attempts} times, rebooting in {plan.retry_delay} s",
        f"sleep {plan.retry_delay}",
        "reboot",
    ]
    return lines


def _ipxe_refuse(plan: RefuseBoot) -> list[str]:
    lines = [f"echo bootforge: {_text(plan.message)}"]
    if plan.gives_up:
        # reboot, not exit: exiting could start a stale OS from the disk of a node that is waiting
        # to be provisioned. A reboot goes through DHCP again and asks afresh.
        return [
            *lines,
            f"echo bootforge: asked {plan.attempt} times, rebooting in {plan.retry_delay} s",
            f"sleep {plan.retry_delay}",
            "reboot",
        ]
    retry = safe_url(with_attempt(plan.retry_url, plan.attempt + 1))
    return [
        *lines,
        f"echo bootforge: asking again in {plan.retry_delay} s"
        f" (attempt {plan.attempt} of {plan.max_attempts})",
        f"sleep {plan.retry_delay}",
        # --replace: the new script takes this one's place instead of nesting inside it.
        f"chain --replace --autofree {retry} || goto failed",
        ":failed",
        f"echo bootforge: the boot server did not answer, rebooting in {plan.retry_delay} s",
        f"sleep {plan.retry_delay}",
        "reboot",
    ]


# -- GRUB (UEFI, and the shim -> GRUB Secure Boot chain) -------------------------------------------


def _grub_word(word: str) -> str:
    """A single-quoted GRUB word: nothing inside is expanded. Callers pass validated text."""
    return "'" + word.replace("'", "'\\''") + "'"


def _grub_path(url: str) -> str:
    """http://host:port/p?q -> (http,host:port)/p?q, GRUB's device syntax for a network file."""
    parts = urlsplit(safe_url(url))
    if parts.scheme == "https":
        raise ScriptError("GRUB has no HTTPS client; use http:// or tftp:// for GRUB clients")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return f"({parts.scheme},{parts.netloc}){path}"


def render_grub(plan: BootPlan) -> str:
    """grub.cfg for UEFI clients; Debian's signed GRUB (via shim) uses plain linux/initrd."""
    if isinstance(plan, RamdiskBoot):
        lines = _grub_ramdisk(plan)
    elif isinstance(plan, LocalDiskBoot):
        lines = _grub_local(plan)
    elif isinstance(plan, SanBoot):
        # GRUB has no iSCSI initiator: a SAN-booting node is handed iPXE instead of GRUB.
        raise ScriptError("GRUB cannot boot from iSCSI; a node that boots from a volume needs iPXE")
    else:
        lines = _grub_refuse(plan)
    return "\n".join(["# bootforge grub.cfg", "set timeout=0", *lines]) + "\n"


def _grub_ramdisk(plan: RamdiskBoot) -> list[str]:
    # The EFI stub gets the initrd from GRUB's `initrd` (LoadFile2 or boot params), so no
    # initrd= argument here, unlike iPXE.
    args = " ".join(_grub_word(word) for word in plan.cmdline(with_initrd=False))
    kernel = f"linux {_grub_word(_grub_path(plan.kernel_url))} {args}".rstrip()
    attempts = " ".join(str(n) for n in range(1, plan.attempts + 1))
    return [
        f"echo 'bootforge: loading the {plan.purpose} ramdisk'",
        f"for attempt in {attempts}; do",
        f"  if {kernel}; then",
        f"    if initrd {_grub_word(_grub_path(plan.initrd_url))}; then boot; fi",
        "  fi",
        f'  echo "bootforge: attempt $attempt of {plan.attempts} failed"',
        f"  sleep {plan.retry_delay}",
        "done",
        f"echo 'bootforge: {plan.purpose} ramdisk did not boot, rebooting'",
        "reboot",
    ]


def _grub_local(plan: LocalDiskBoot) -> list[str]:
    if plan.firmware is not Firmware.UEFI:
        raise ScriptError("GRUB configs are rendered for UEFI clients only")
    return [
        "echo 'bootforge: booting from the local disk'",
        "# Chainload the disk's removable-media loader if an ESP has one (shim verifies it under",
        "# Secure Boot). Otherwise exit with an error status: the firmware then moves on to the",
        "# next BootOrder entry instead of stopping in its boot menu, as it may on success.",
        "for loader in /EFI/BOOT/BOOTX64.EFI /EFI/BOOT/BOOTAA64.EFI; do",
        '  if search --no-floppy --file --set=disk "$loader"; then',
        '    set root="$disk"',
        '    chainloader "$loader"',
        "    boot",
        "  fi",
        "done",
        "exit 1",
    ]


def _grub_refuse(plan: RefuseBoot) -> list[str]:
    lines = [f"echo {_grub_word('bootforge: ' + _text(plan.message))}"]
    if plan.gives_up:
        return [*lines, f"sleep {plan.retry_delay}", "reboot"]
    retry = _grub_path(with_attempt(plan.retry_url, plan.attempt + 1))
    return [
        *lines,
        f"echo 'bootforge: asking again in {plan.retry_delay} s'",
        f"sleep {plan.retry_delay}",
        f"configfile {_grub_word(retry)}",
        "reboot",  # configfile returns only when the server could not be reached
    ]


def render_grub_bootstrap(config_url: str) -> str:
    """The static /grub/grub.cfg: Debian's grubnetx64 asks for nothing else (no per-MAC files),
    so it hands over to the per-node config by MAC: by TFTP (grub.cfg-01-<mac>), else by HTTP."""
    target = _grub_path(config_url)
    joiner = "&" if "?" in target else "?"
    # Double quotes so GRUB expands $net_default_mac; the rest was validated by _grub_path.
    return (
        "# bootforge grub.cfg bootstrap\n"
        "set timeout=0\n"
        # Debian's signed GRUB has no http module (and Secure Boot forbids loading one): its
        # per-node config is the TFTP file beside this one, named the pxelinux/GRUB way
        # (grub.cfg-01-aa-bb-cc-dd-ee-ff); GRUB's regexp turns net_default_mac's colons into dashes.
        "set m='([0-9a-fA-F][0-9a-fA-F])'\n"
        "if regexp --set=1:a --set=2:b --set=3:c --set=4:d --set=5:e --set=6:f "
        '"^$m:$m:$m:$m:$m:$m\\$" "$net_default_mac"; then\n'
        '  configfile "$prefix/grub.cfg-01-$a-$b-$c-$d-$e-$f"\n'
        "fi\n"
        f'configfile "{target}{joiner}mac=${{net_default_mac}}"\n'
        "echo 'bootforge: could not fetch the per-node config, rebooting'\n"
        "sleep 10\n"
        "reboot\n"
    )
