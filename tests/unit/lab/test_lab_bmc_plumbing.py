"""`bootforge lab up --bmc`: what the lab enrols and configures for each kind of BMC (no namespace, no
process: the pure parts of bootforge.lab.lab)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootforge.lab import lab as lab_mod
from bootforge.lab.lab import ADDRESS, Lab, LabError, LabState, VmRecord


def lab_with(tmp_path: Path, bmc: str, bmc_desc: str | None) -> tuple[Lab, VmRecord]:
    state = LabState(str(tmp_path), "bflab-1-0-", bmc=bmc, bmc_password="pw")
    rec = VmRecord("vm1", "bios", "52:54:00:77:00:01", "tap0", str(tmp_path / "vms" / "vm1"), bmc=bmc_desc)
    state.vms.append(rec)
    return Lab(tmp_path, state), rec


def test_qemu_lab_enrols_qemu_nodes(tmp_path: Path) -> None:
    lab, rec = lab_with(tmp_path, "qemu", None)
    assert lab._driver(rec) == (
        "qemu",
        {"qemu_qmp_socket": str(rec.qmp_socket), "qemu_command": str(rec.definition)},
    )
    assert 'enabled_hardware_types = ["qemu"]' in lab_mod.serve_config(lab.state, tmp_path)


def test_ipmi_lab_enrols_ipmi_nodes(tmp_path: Path) -> None:
    lab, rec = lab_with(tmp_path, "ipmi", f"ipmi {ADDRESS}:6230")
    driver, info = lab._driver(rec)
    assert driver == "ipmi"
    assert info == {
        "ipmi_address": ADDRESS,
        "ipmi_port": 6230,
        "ipmi_username": "admin",
        "ipmi_password": "pw",
    }
    assert 'enabled_hardware_types = ["ipmi", "qemu"]' in lab_mod.serve_config(lab.state, tmp_path)


def test_redfish_lab_enrols_redfish_nodes_verified_by_the_lab_certificate(tmp_path: Path) -> None:
    system = "/redfish/v1/Systems/0b8e7f5c-0000-5000-8000-000000000001"
    lab, rec = lab_with(tmp_path, "redfish", f"redfish https://{ADDRESS}:8443{system}")
    driver, info = lab._driver(rec)
    assert driver == "redfish"
    assert info == {
        "redfish_address": f"https://{ADDRESS}:8443",
        "redfish_system_id": system,
        "redfish_username": "admin",
        "redfish_password": "pw",
        "redfish_verify_ca": str(tmp_path / "bmc" / "bmc-cert.pem"),
    }
    assert 'enabled_hardware_types = ["qemu", "redfish"]' in lab_mod.serve_config(lab.state, tmp_path)


def test_lab_state_without_bmc_fields_still_loads(tmp_path: Path) -> None:
    # A lab.json written before --bmc existed: `lab down` must still work from it.
    vm = {"name": "vm1", "firmware": "bios", "mac": "52:54:00:77:00:01", "tap": "tap0", "dir": "x"}
    (tmp_path / "lab.json").write_text(
        json.dumps({"dir": str(tmp_path), "prefix": "bflab-1-0-", "vms": [vm]})
    )
    state = LabState.load(tmp_path)
    assert state.bmc == "qemu" and state.vms[0].bmc is None


def test_unknown_bmc_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="bmc must be one of qemu, ipmi, redfish"):
        Lab.up(tmp_path / "lab", 1, bmc="vbmc")
    assert not (tmp_path / "lab").exists()


def test_bmc_ready_lines(tmp_path: Path) -> None:
    log = tmp_path / "bmc.log"
    assert not lab_mod._said_ready(log)
    log.write_text("starting\n")
    assert not lab_mod._said_ready(log)
    log.write_text("starting\nready 6230\n")
    assert lab_mod._said_ready(log)
    log.write_text("redfish-bmc: 2 system(s) on https://10.77.0.1:8443\n")
    assert lab_mod._said_ready(log)
