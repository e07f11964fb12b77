"""``python -m bootforge_agent`` (in the ramdisk) or ``python -m bootforge.agent`` (in a dev tree).

Options override the kernel command line, which is read from <sys-root>/proc/cmdline.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import log
from .cmdline import (
    API,
    BOOT_TOKEN,
    BOOTIF,
    CA_BUNDLE,
    NODE,
    boot_mac,
    interface_macs,
    normalise_mac,
    read_under,
)
from .loop import Agent, Settings


def _mac(value: str) -> str:
    mac = normalise_mac(value)
    if mac is None:
        raise argparse.ArgumentTypeError(f"not a MAC address: {value!r}")
    return mac


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bootforge-agent",
        description="bootforge deploy agent: looks its node up, then runs the conductor's commands.",
    )
    p.add_argument("--api", help=f"conductor API base URL (default: {API}= on the kernel command line)")
    p.add_argument("--node", help=f"node UUID (default: {NODE}=)")
    p.add_argument(
        "--mac",
        action="append",
        type=_mac,
        default=[],
        help=f"MAC to look the node up by (default: {BOOTIF}=)",
    )
    p.add_argument(
        "--disk", action="append", default=[], metavar="PATH", help="act on these disks only (default: all)"
    )
    p.add_argument("--boot-token", help=f"this boot's token for the lookup (default: {BOOT_TOKEN}=)")
    p.add_argument(
        "--ca-file",
        help=f"CA bundle to verify an https API against (default: <sys-root>/{CA_BUNDLE} if it exists)",
    )
    p.add_argument("--sys-root", default="/", metavar="DIR", help="read /proc and /sys under DIR (tests)")
    p.add_argument("--once", action="store_true", help="exit after the first command's result is posted")
    return p


def settings_from(argv: list[str] | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings and the effective kernel command line (options written over it)."""
    args = parser().parse_args(argv)
    params = read_under(args.sys_root)
    if args.api:
        params[API] = args.api
    if args.node:
        params[NODE] = args.node
    if args.mac:
        params[BOOTIF] = args.mac[0]
    if args.boot_token:
        params[BOOT_TOKEN] = args.boot_token
    cafile = args.ca_file
    if cafile is None and os.path.isfile(os.path.join(args.sys_root, CA_BUNDLE)):
        cafile = os.path.join(args.sys_root, CA_BUNDLE)
    api = params.get(API, "")
    if not api:
        raise SystemExit(f"bootforge-agent: no API URL: pass --api or boot with {API}=URL")
    macs = list(args.mac) or [m for m in [boot_mac(params)] if m]
    macs += [m for m in interface_macs(args.sys_root) if m not in macs]
    node = params.get(NODE) or None
    if not macs and not node:
        raise SystemExit(f"bootforge-agent: nothing to look the node up by: no MAC and no {NODE}=")
    token = params.get(BOOT_TOKEN) or None
    settings = Settings(api, node, macs, args.sys_root, args.disk or None, args.once, token, cafile)
    return settings, params


def main(argv: list[str] | None = None) -> int:
    settings, params = settings_from(argv)
    if params.get("bootforge.discovery"):
        # A machine bootforge does not know yet: report it, then power off. Imported only then: the
        # lookup path stays light (test_agent_imports).
        from . import discover

        return discover.run(settings.api, params, settings.sys_root, settings.cafile)
    try:
        agent = Agent(settings, cmdline=params)
    except ValueError as exc:
        raise SystemExit(f"bootforge-agent: {exc}") from None
    try:
        return agent.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
