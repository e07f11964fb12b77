"""`bootforge ramdisk build --ca-bundle`: the bundle is checked the way the agent will load it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootforge.agent.cmdline import CA_BUNDLE as AGENT_CA_BUNDLE
from bootforge.ramdisk.builder import CA_BUNDLE, read_ca_bundle
from bootforge.ramdisk.debs import RamdiskError


def test_a_pem_certificate_is_taken_and_lands_where_the_agent_looks(tmp_path: Path) -> None:
    pytest.importorskip("cryptography", reason="needs the cryptography package for the test CA")
    from bootforge.lab.redfish_bmc import make_tls

    cert, _ = make_tls(tmp_path, "127.0.0.1")
    assert read_ca_bundle(cert) == cert.read_bytes()
    assert CA_BUNDLE == AGENT_CA_BUNDLE


def test_a_private_key_garbage_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("cryptography", reason="needs the cryptography package for the test CA")
    from bootforge.lab.redfish_bmc import make_tls

    cert, key = make_tls(tmp_path, "127.0.0.1")
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    with pytest.raises(RamdiskError, match="no private key"):
        read_ca_bundle(both)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(RamdiskError, match="cannot be loaded"):
        read_ca_bundle(garbage)
    with pytest.raises(RamdiskError, match="cannot read"):
        read_ca_bundle(tmp_path / "absent.pem")
