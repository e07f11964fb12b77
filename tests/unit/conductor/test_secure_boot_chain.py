"""The Secure Boot chain (#12): DHCP sends Secure Boot nodes (or every UEFI x64 node with
netboot.secure_boot = "always") to shimx64.efi instead of ipxe.efi, and the per-node grub.cfg that
Debian's signed GRUB (no http module) reads is a TFTP virtual file keyed by MAC, fetched here by
curl's TFTP client from bootforge's TFTP server, with the kernel and initrd named by TFTP path."""

from __future__ import annotations

import asyncio
import os
import shutil
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from sqlalchemy import update
from support.service import InProcess
from test_netboot_view import ENDPOINTS, client

from bootforge import boot_token
from bootforge.cli.netboot import tftp_source
from bootforge.conductor.netboot import NetbootView, RamdiskSource
from bootforge.db.models import Node
from bootforge.netboot import dhcp
from bootforge.netboot.boot import scripts
from bootforge.servers.tftp import TftpServer

MAC = "52:54:00:5b:00:01"
TFTP = IPv4Address("10.9.0.1")


async def enrol(bf: InProcess, mac: str, capabilities: str | None) -> str:
    body: dict[str, object] = {"driver": "fake-hardware", "name": f"sb-{mac[-2:]}"}
    if capabilities is not None:
        body["properties"] = {"capabilities": capabilities}
    node = (await bf.client.post("/v1/nodes", json=body)).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": mac})
    assert r.status_code == 201, r.text
    return str(node["uuid"])


def view_for(bf: InProcess, *, always: bool = False) -> NetbootView:
    ramdisk = RamdiskSource(
        "http://10.9.0.1:6385",
        "bootforge/vmlinuz",
        "bootforge/initrd",
        ("console=ttyS0,115200n8",),
        bf.settings.secret_key_path,
    )
    return NetbootView(bf.conductor.db, ENDPOINTS, ramdisk, secure_boot_always=always)


async def test_secure_boot_node_is_offered_shim_over_tftp_others_ipxe(bf: InProcess) -> None:
    await enrol(bf, MAC, "boot_mode:uefi,secure_boot:true")
    await enrol(bf, "52:54:00:5b:00:02", "boot_mode:uefi")
    view = view_for(bf)
    await view.refresh()
    assert view.boot_for(client(MAC, 7), None) == dhcp.BootDecision("shimx64.efi", TFTP)
    assert view.boot_for(client("52:54:00:5b:00:02", 7), None) == dhcp.BootDecision("ipxe.efi", TFTP)
    # BIOS has no Secure Boot; HTTP-boot firmware gets no URL (booted from an HTTP URI the signed
    # GRUB's root is HTTP, which it cannot read; unsigned iPXE would be refused): the reason is for
    # the timeline; an iPXE client is never handed a loader again.
    assert view.boot_for(client(MAC, 0), None) == dhcp.BootDecision("undionly.kpxe", TFTP)
    http = view.boot_for(client(MAC, 16, http=True), None)
    assert isinstance(http, dhcp.NoBootFile) and http.reason == "secure_boot_http_boot"
    assert "PXE" in http.message and "no HTTP client" in http.message
    plain_http = view.boot_for(client("52:54:00:5b:00:02", 16, http=True), None)
    assert isinstance(plain_http, dhcp.BootDecision) and plain_http.filename.endswith("/ipxe.efi")
    ipxe = view.boot_for(client(MAC, 7, ipxe=True), None)
    assert isinstance(ipxe, dhcp.BootDecision) and "/boot/ipxe?mac=" in ipxe.filename


async def test_secure_boot_always_sends_every_uefi_x64_node_to_shim(bf: InProcess) -> None:
    await enrol(bf, "52:54:00:5b:00:02", None)
    view = view_for(bf, always=True)
    await view.refresh()
    assert view.boot_for(client("52:54:00:5b:00:02", 7), None) == dhcp.BootDecision("shimx64.efi", TFTP)
    assert view.boot_for(client("52:54:00:5b:00:02", 0), None) == dhcp.BootDecision("undionly.kpxe", TFTP)


async def test_always_with_the_chain_missing_offers_nothing_rather_than_unsigned_ipxe(bf: InProcess) -> None:
    await enrol(bf, "52:54:00:5b:00:02", None)
    view = NetbootView(
        bf.conductor.db, ENDPOINTS, secure_boot_always=True, missing_loaders={"grubx64.efi": "install it"}
    )
    await view.refresh()
    refused = view.boot_for(client("52:54:00:5b:00:02", 7), None)
    assert isinstance(refused, dhcp.NoBootFile) and "grubx64.efi" in refused.message


async def curl_tftp(port: int, path: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", f"tftp://127.0.0.1:{port}/{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl tftp {path}: {err.decode()}"
    return out


async def test_signed_grub_reads_its_per_node_config_by_tftp(bf: InProcess, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl (its TFTP client)")
    uuid = await enrol(bf, MAC, "secure_boot:true")
    async with bf.conductor.db.write() as s:
        await s.execute(
            update(Node)
            .where(Node.uuid == uuid)
            .values(provision_state="inspect wait", driver_internal_info={"agent_boot": "boot-7"})
        )
        await s.commit()
    view = view_for(bf)
    await view.refresh()
    loaders = tmp_path / "loaders"
    loaders.mkdir()
    (loaders / "shimx64.efi").write_bytes(b"MZ shim " + os.urandom(3000))
    bootstrap = scripts.render_grub_bootstrap("http://10.9.0.1:8080/boot/grub.cfg")
    source = tftp_source(
        {"shimx64.efi": str(loaders / "shimx64.efi")},
        str(tmp_path),
        bootstrap,
        lambda mac, ip: view.grub_config({"mac": mac}, ip, tftp=True),
    )
    async with TftpServer(source, "127.0.0.1", port=0) as server:
        port = server.local_address[1]
        assert await curl_tftp(port, "shimx64.efi") == (loaders / "shimx64.efi").read_bytes()
        # What Debian's grubnetx64 asks for first (prefix /grub), then the file its bootstrap names.
        boot = (await curl_tftp(port, "/grub/grub.cfg")).decode()
        assert 'configfile "$prefix/grub.cfg-01-$a-$b-$c-$d-$e-$f"' in boot
        cfg = (await curl_tftp(port, "/grub/grub.cfg-01-" + MAC.replace(":", "-"))).decode()
        token = boot_token.for_boot(bf.settings.secret_key_path, uuid, "boot-7")
        assert "linux '(tftp,10.9.0.1)/bootforge/vmlinuz' " in cfg
        assert "initrd '(tftp,10.9.0.1)/bootforge/initrd'" in cfg
        assert f"bootforge.boot_token={token}" in cfg and "console=ttyS0,115200n8" in cfg
        assert "(http," not in cfg and "?mac=" not in cfg
        # Upper-case hex (GRUB's own net search uses it) names the same node.
        upper = await curl_tftp(port, "grub/grub.cfg-01-" + MAC.replace(":", "-").upper())
        assert upper.decode() == cfg
        # An unknown MAC gets the same refusal as over HTTP; nothing about the node.
        other = (await curl_tftp(port, "grub/grub.cfg-01-52-54-00-5b-00-99")).decode()
        assert "nothing to boot" in other and token not in other
