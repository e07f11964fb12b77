"""netboot.loader_dirs: the operator's loader directories, searched in order before Debian's paths."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from bootforge.cli.netboot import find_loaders, tftp_source
from bootforge.config import NetbootSettings
from bootforge.netboot.boot.loaders import LoaderMissing
from bootforge.netboot.boot.loaders import find_loaders as find_in

CLIENT = ("10.213.0.50", 1234)


def test_setting_takes_absolute_directories_and_names_itself_on_a_relative_one(tmp_path: Path) -> None:
    nb = NetbootSettings(loader_dirs=[tmp_path / "a", tmp_path / "b"])
    assert nb.loader_dirs == [tmp_path / "a", tmp_path / "b"]
    assert NetbootSettings().loader_dirs == []
    with pytest.raises(ValidationError, match=r"netboot\.loader_dirs: 'ipxe' is not an absolute path"):
        NetbootSettings(loader_dirs=[Path("ipxe")])


def test_dirs_are_searched_in_order_for_ipxe_shim_and_grub(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "ipxe-arm64.efi").write_bytes(b"first arm64")
    (second / "ipxe-arm64.efi").write_bytes(b"second arm64")
    (second / "snponly.efi").write_bytes(b"snp")
    (second / "shimx64.efi").write_bytes(b"shim")
    (second / "grubx64.efi").write_bytes(b"grub")
    found = find_loaders([first, second]).found
    assert found["ipxe-arm64.efi"] == str(first / "ipxe-arm64.efi")
    assert found["snponly.efi"] == str(second / "snponly.efi")
    # shim and GRUB come from the setting too, not only from /usr/lib/shim and /usr/lib/grub.
    assert found["shimx64.efi"] == str(second / "shimx64.efi")
    assert found["grubx64.efi"] == str(second / "grubx64.efi")
    # ... and TFTP serves them under the name clients ask for.
    source = tftp_source(found, str(tmp_path / "root"), "bootstrap")
    served = source.open("ipxe-arm64.efi", CLIENT)
    assert served.read_at(0, 100) == b"first arm64"
    served.close()


def test_missing_loader_message_names_the_setting_and_the_file(tmp_path: Path) -> None:
    found = find_in(["ipxe-arm64.efi", "shimx64.efi"], root=str(tmp_path), extra_dirs=[str(tmp_path)])
    with pytest.raises(LoaderMissing) as arm:
        found.path("ipxe-arm64.efi")
    assert "put a file named ipxe-arm64.efi into a directory listed in netboot.loader_dirs" in str(arm.value)
    with pytest.raises(LoaderMissing) as shim:
        found.path("shimx64.efi")
    text = str(shim.value)
    assert "`bootforge ramdisk build`, which fetches shim-signed" in text
    assert "shimx64.efi into a directory listed in netboot.loader_dirs" in text


def test_a_loader_dir_that_is_not_a_directory_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bootforge.netboot"):
        find_loaders([tmp_path / "nope"])
    assert f"netboot.loader_dirs: {tmp_path / 'nope'} is not a directory" in caplog.text
