"""The pure parts of the lab's Redfish BMC (bootforge.lab.redfish_bmc): the derived VM definition, the
TLS certificate and htpasswd it runs with, and the systems driver's answers for a VM that is off (no
QEMU process: nothing here starts one; tests/integration/test_lab_bmc_redfish.py does)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from pathlib import Path

import bcrypt
import pytest

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import redfish_bmc
from bootforge.lab.redfish_bmc import QmpSystemsDriver, SystemConfig, VmSystem, derived_definition

sushy_error = pytest.importorskip(
    "sushy_tools.error", reason="needs sushy-tools (pip install 'bootforge[lab]')"
)


def write_definition(directory: Path, **extra: object) -> Path:
    path = directory / "vm.json"
    body = {
        "name": "vm1",
        "memory_mib": 512,
        "disks": [{"path": "disk.qcow2", "format": "qcow2"}],
        "nics": [{"mac": "52:54:00:77:00:01", "tap": "tap0"}],
        "serial_log": "console.log",
        **extra,
    }
    path.write_text(json.dumps(body))
    return path


def system_config(tmp_path: Path, **extra: object) -> SystemConfig:
    defn = write_definition(tmp_path, **extra)
    return SystemConfig(
        name="vm1",
        uuid=redfish_bmc.system_uuid(defn),
        definition=defn,
        qmp_socket=tmp_path / "qmp.sock",
        state_dir=tmp_path / "bmc" / "vm1",
    )


def test_derived_definition_adds_firmware_uuid_and_an_empty_cdrom(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    base = vm.load_definition(config.definition)
    content, cd_id = derived_definition(base, config, "uefi", None)
    assert cd_id == redfish_bmc.CD_ID
    assert content["boot_mode"] == "uefi"
    extra = content["extra_args"]
    assert extra[extra.index("-uuid") + 1] == config.uuid
    drive = extra[extra.index("-drive") + 1]
    assert "media=cdrom" in drive and "file=" not in drive  # an empty tray
    assert f"ide-cd,drive={cd_id}-drive,id={cd_id}" in extra
    # Paths are absolute: the derived file lives elsewhere, the disk and console stay the lab's.
    assert content["disks"][0]["path"] == str(tmp_path / "disk.qcow2")
    assert content["state_dir"] == str(tmp_path)
    # What bootforge.drivers.qemu_machine makes of it.
    again = vm.VmDefinition.model_validate(content)
    argv = vm.build_argv(again, "tcg", vm.Firmware(Path("/code.fd"), Path("/vars.fd")))
    assert "if=pflash" in " ".join(argv)


def test_derived_definition_puts_inserted_media_in_the_cdrom(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    base = vm.load_definition(config.definition)
    content, cd_id = derived_definition(base, config, "bios", "/lab/bmc/media/boot.iso")
    drive = content["extra_args"][content["extra_args"].index("-drive") + 1]
    assert drive.endswith(",file=/lab/bmc/media/boot.iso,format=raw")
    # A definition with a cdrom of its own keeps it and gets no second one.
    own = system_config(tmp_path, disks=[{"path": "disk.qcow2"}, {"path": "old.iso", "media": "cdrom"}])
    base = vm.load_definition(own.definition)
    content, cd_id = derived_definition(base, own, "bios", "/new.iso")
    assert cd_id == "cd1" and content["disks"][1]["path"] == "/new.iso"
    assert "ide-cd" not in " ".join(content["extra_args"])


def test_system_uuid_is_stable_per_definition(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "vm.json", tmp_path / "b" / "vm.json"
    assert redfish_bmc.system_uuid(a) == redfish_bmc.system_uuid(a)
    assert redfish_bmc.system_uuid(a) != redfish_bmc.system_uuid(b)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> bytes:
    """One TLS exchange over a socket pair; the client's error (if any) is raised."""
    a, b = socket.socketpair()

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except (ssl.SSLError, OSError):
            a.close()  # the client refused the certificate

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=hostname) as c:
            return c.recv(2)
    finally:
        b.close()
        t.join(10)


def test_tls_certificate_verifies_as_its_own_ca_for_its_address(tmp_path: Path) -> None:
    cert, key = redfish_bmc.make_tls(tmp_path, "127.0.0.1")
    assert key.stat().st_mode & 0o077 == 0
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))  # chain and hostname checked
    assert handshake(server_ctx, client_ctx, "127.0.0.1") == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_ctx, client_ctx, "10.77.0.1")  # not the address it was made for


@pytest.mark.filterwarnings("ignore:'cgi' is deprecated:DeprecationWarning")  # webob, under sushy-tools
def test_htpasswd_is_bcrypt_and_accepted_by_sushy_tools(tmp_path: Path) -> None:
    from sushy_tools.emulator import auth_basic

    path = tmp_path / "htpasswd"
    redfish_bmc.make_htpasswd(path, "s3cret")
    user, digest = path.read_text().strip().split(":", 1)
    assert user == "admin" and bcrypt.checkpw(b"s3cret", digest.encode())
    assert path.stat().st_mode & 0o077 == 0
    assert auth_basic.authenticate(str(path), "admin", b"s3cret")["HTTP_X_USER"] == "admin"
    with pytest.raises(sushy_error.Unauthorized):
        auth_basic.authenticate(str(path), "admin", b"wrong")


def test_systems_driver_identities(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    driver = QmpSystemsDriver([VmSystem(config)])
    assert driver.systems == [config.uuid]
    assert driver.uuid("vm1") == config.uuid and driver.name(config.uuid) == "vm1"
    with pytest.raises(sushy_error.AliasAccessError) as alias:  # sushy-tools redirects to the UUID
        driver.get_power_state("vm1")
    assert str(alias.value) == config.uuid
    with pytest.raises(sushy_error.NotFound):
        driver.get_power_state("vm9")
    # No process, no socket: off, never an error.
    assert driver.get_power_state(config.uuid) == "Off"
    assert driver.get_nics(config.uuid) == [{"id": "52:54:00:77:00:01", "mac": "52:54:00:77:00:01"}]
    assert driver.get_total_cpus(config.uuid) == 1 and driver.get_total_memory(config.uuid) == 0.5


def test_resets_that_need_a_running_vm_are_refused_while_off(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    driver = QmpSystemsDriver([VmSystem(config)])
    for reset_type in ("GracefulRestart", "Nmi"):
        with pytest.raises(sushy_error.Conflict, match="vm1 is off"):
            driver.set_power_state(config.uuid, reset_type)
    with pytest.raises(sushy_error.BadRequest, match="PowerCycle"):
        driver.set_power_state(config.uuid, "PowerCycle")
    driver.set_power_state(config.uuid, "ForceOff")  # already off: nothing to do
    driver.set_power_state(config.uuid, "GracefulShutdown")
    assert driver.get_power_state(config.uuid) == "Off"


def test_boot_override_once_comes_from_the_request_and_survives_a_bmc_restart(tmp_path: Path) -> None:
    flask = pytest.importorskip("flask")
    config = system_config(tmp_path)
    driver = QmpSystemsDriver([VmSystem(config)])
    assert driver.get_boot_device(config.uuid) == "None"  # no override yet
    driver.set_boot_device(config.uuid, "Pxe")  # outside a request: Continuous
    assert driver.get_boot_device(config.uuid) == "Pxe"
    app = flask.Flask("t")
    body = {"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Once"}}
    with app.test_request_context(method="PATCH", json=body):
        driver.set_boot_device(config.uuid, "Hdd")
    assert driver.get_boot_device(config.uuid) == "Hdd"
    state = json.loads((config.state_dir / "state.json").read_text())
    assert state["internal"]["qemu_boot"] == {"persistent": "pxe", "once": "disk"}
    restarted = QmpSystemsDriver([VmSystem(config)])
    assert restarted.get_boot_device(config.uuid) == "Hdd"
    restarted.set_boot_device(config.uuid, "None")
    assert restarted.get_boot_device(config.uuid) == "None"
    with pytest.raises(sushy_error.BadRequest, match="Floppy"):
        restarted.set_boot_device(config.uuid, "Floppy")


def test_boot_mode_media_and_secure_boot_while_off(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    driver = QmpSystemsDriver([VmSystem(config)])
    assert driver.get_boot_mode(config.uuid) == "Legacy"  # the definition's firmware
    with pytest.raises(sushy_error.BadRequest):
        driver.set_boot_mode(config.uuid, "Bogus")
    driver.set_boot_mode(config.uuid, "Legacy")
    driver.set_boot_image(config.uuid, "Cd", "/media/boot.iso", True)
    assert driver.get_boot_image(config.uuid, "Cd") == ("/media/boot.iso", True, True)
    written = json.loads((config.state_dir / "vm.json").read_text())  # what the next power-on uses
    assert any(a.endswith("file=/media/boot.iso,format=raw") for a in written["extra_args"])
    driver.set_boot_image(config.uuid, "Cd")
    assert driver.get_boot_image(config.uuid, "Cd") == (None, True, False)
    with pytest.raises(sushy_error.NotFound):
        driver.set_boot_image(config.uuid, "Floppy", "/media/floppy.img")
    assert driver.get_secure_boot(config.uuid) is False
    driver.set_secure_boot(config.uuid, False)
    with pytest.raises(sushy_error.BadRequest, match="UEFI"):  # a Legacy VM has no Secure Boot
        driver.set_secure_boot(config.uuid, True)


def test_secure_boot_picks_the_ovmf_build_of_the_next_power_on(tmp_path: Path) -> None:
    try:
        vm.find_ovmf(vm.OVMF_SECURE_BOOT_CANDIDATES)
    except vm.QemuError as e:
        pytest.skip(f"needs OVMF with Microsoft's keys (Debian package ovmf): {e}")
    config = system_config(tmp_path, boot_mode="uefi")
    system = VmSystem(config)
    driver = QmpSystemsDriver([system])
    assert driver.get_secure_boot(config.uuid) is False
    with pytest.raises(sushy_error.BadRequest):
        driver.set_secure_boot(config.uuid, "yes")  # type: ignore[arg-type]
    driver.set_secure_boot(config.uuid, True)
    written = json.loads((config.state_dir / "vm.json").read_text())  # what the next power-on uses
    assert written["secure_boot"] is True and written["accel"] == "tcg"
    assert written["machine"] == "q35,smm=on"
    assert str(vm.firmware_for(vm.VmDefinition.model_validate(written)).code).endswith(".ms.fd")
    # Kept across a BMC restart; a process started before the change must restart cold.
    again = VmSystem(config)
    assert again.secure_boot() is True
    again.state["started_mode"], again.state["started_secure"] = "uefi", False
    assert again._cold_restart_needed() is True
    driver.set_secure_boot(config.uuid, False)
    written = json.loads((config.state_dir / "vm.json").read_text())
    assert written["secure_boot"] is False and written["machine"] == "q35"


def test_a_bad_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bmc.json"
    path.write_text(json.dumps({"address": "127.0.0.1", "port": 0}))
    with pytest.raises(SystemExit, match="port"):
        redfish_bmc.load_config(path)


def test_a_secure_boot_change_gets_its_own_variable_store(tmp_path: Path) -> None:
    config = system_config(tmp_path, boot_mode="uefi")
    base = vm.load_definition(config.definition)
    plain, _ = derived_definition(base, config, "uefi", None, secure_boot=False)
    secure, _ = derived_definition(base, config, "uefi", None, secure_boot=True)
    assert plain == derived_definition(base, config, "uefi", None)[0]  # unchanged: the lab's store
    assert Path(secure["state_dir"]) == config.state_dir.resolve() / "nvram-ms"
    assert secure["machine"] == "q35,smm=on" and secure["accel"] == "tcg"
