"""Loader discovery: logical names -> Debian package files, and clear reports of what is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootforge.netboot.boot.loaders import (
    LOADERS,
    LoaderMissing,
    cached_loader_trees,
    fetch_signed_loaders,
    find_loaders,
    loader_names_for_arches,
)


def _plant(root: Path, path: str, data: bytes = b"MZ loader") -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def test_every_arch_table_loader_has_a_row() -> None:
    assert loader_names_for_arches() <= set(LOADERS)


def test_secure_boot_chain_names_map_to_signed_debian_files() -> None:
    assert LOADERS["shimx64.efi"].paths == ("/usr/lib/shim/shimx64.efi.signed",)
    assert LOADERS["shimx64.efi"].package == "shim-signed"
    assert LOADERS["grubx64.efi"].paths == ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",)
    assert LOADERS["grubx64.efi"].package == "grub-efi-amd64-signed"


def test_found_and_missing_in_an_unpacked_tree(tmp_path: Path) -> None:
    _plant(tmp_path, "/usr/lib/ipxe/undionly.kpxe")
    _plant(tmp_path, "/boot/ipxe.efi")  # second candidate only
    _plant(tmp_path, "/usr/lib/shim/shimx64.efi.signed", b"")  # empty: not usable
    found = find_loaders(["undionly.kpxe", "ipxe.efi", "shimx64.efi", "grubx64.efi"], root=str(tmp_path))
    assert found.found == {
        "undionly.kpxe": str(tmp_path / "usr/lib/ipxe/undionly.kpxe"),
        "ipxe.efi": str(tmp_path / "boot/ipxe.efi"),
    }
    assert found.missing == ["grubx64.efi", "shimx64.efi"]
    assert found.packages_to_install() == ["grub-efi-amd64-signed", "shim-signed"]
    problems = found.problems()
    # Never installed (maintainer scripts may change the host's boot): fetched into the cache.
    assert "`bootforge ramdisk build`, which fetches grub-efi-amd64-signed" in problems[0]
    assert "apt-get install" not in problems[0]
    assert "grubnetx64.efi.signed" in problems[0]
    with pytest.raises(LoaderMissing, match="fetches shim-signed"):
        found.path("shimx64.efi")


def test_operator_directory_wins_and_covers_unpackaged_arches(tmp_path: Path) -> None:
    _plant(tmp_path / "tree", "/usr/lib/ipxe/ipxe.efi")
    own = tmp_path / "own"
    _plant(own, "ipxe.efi", b"custom")
    found = find_loaders(["ipxe.efi", "ipxe-arm64.efi"], root=str(tmp_path / "tree"), extra_dirs=[str(own)])
    assert found.path("ipxe.efi") == str(own / "ipxe.efi")
    with pytest.raises(LoaderMissing, match="no Debian package ships it"):
        found.path("ipxe-arm64.efi")
    _plant(own, "ipxe-arm64.efi")
    assert find_loaders(["ipxe-arm64.efi"], extra_dirs=[str(own)]).missing == []


def test_unknown_name_is_reported_not_raised(tmp_path: Path) -> None:
    found = find_loaders(["nonsense.efi"], root=str(tmp_path))
    assert found.missing == ["nonsense.efi"]
    with pytest.raises(LoaderMissing):
        found.path("never-asked.efi")


def test_symlinked_loader_is_followed_but_directory_is_not_a_loader(tmp_path: Path) -> None:
    real = _plant(tmp_path, "/usr/lib/ipxe/ipxe.efi")
    (tmp_path / "boot").mkdir()
    os.symlink(real, tmp_path / "boot/ipxe.lkrn")
    (tmp_path / "usr/lib/ipxe/snponly.efi").mkdir()
    found = find_loaders(["ipxe.lkrn", "snponly.efi"], root=str(tmp_path))
    assert found.missing == ["snponly.efi"]
    assert "ipxe.lkrn" in found.found


def test_debian_ipxe_package_on_this_machine() -> None:
    if not os.path.exists("/usr/lib/ipxe/undionly.kpxe"):
        pytest.skip("needs Debian's ipxe package (apt-get install -y ipxe)")
    found = find_loaders(["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.lkrn"])
    assert found.missing == []
    with open(found.path("ipxe.efi"), "rb") as f:
        assert f.read(2) == b"MZ"  # a PE/COFF EFI application


def test_debian_signed_shim_and_grub_on_this_machine() -> None:
    """Fetched into bootforge's loader cache (apt-get download, unpacked, never installed) the way
    serve does when the host has no shim: the signed PE files land where find_loaders looks."""
    from bootforge.ramdisk.debs import RamdiskError

    try:
        trees = fetch_signed_loaders()
    except (RamdiskError, OSError) as e:
        pytest.skip(f"needs Debian's shim-signed and grub-efi-amd64-signed packages (apt-get download: {e})")
    assert cached_loader_trees() and set(trees) <= set(cached_loader_trees())
    found = find_loaders(["shimx64.efi", "grubx64.efi"], trees=trees)
    assert found.missing == [], found.problems()
    for name in ("shimx64.efi", "grubx64.efi"):
        with open(found.path(name), "rb") as f:
            assert f.read(2) == b"MZ"  # a PE/COFF EFI application
    # The network GRUB image, the one whose prefix is /grub on the TFTP server.
    assert found.path("grubx64.efi").endswith("grubnetx64.efi.signed")
