"""Image architectures in the catalogue (SQLite): found at import, given by the operator, and a deploy's
image resolved and refused by the node's properties.cpu_arch."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from esp_util import AA64, MISSING, NEEDS, X64, MiB, disk

from bootforge.config import ImageSettings
from bootforge.db.engine import Database
from bootforge.errors import InvalidInput
from bootforge.images.catalogue import ImageCatalogue, check_cpu_arch, node_cpu_arch

needs_tools = pytest.mark.skipif(bool(MISSING), reason=NEEDS)
SOURCE = "instance_info.image_source"


@pytest.fixture
async def catalogue(tmp_path: Path) -> AsyncIterator[ImageCatalogue]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await db.migrate()
    try:
        yield ImageCatalogue(db, tmp_path / "root", ImageSettings(import_dirs=[tmp_path]))
    finally:
        await db.close()


def plain(path: Path) -> Path:
    """A raw disk with no ESP: nothing to tell its architecture by."""
    path.write_bytes(os.urandom(MiB))
    return path


def test_operator_values() -> None:
    assert check_cpu_arch("aarch64") == "aarch64"
    assert check_cpu_arch("arm64") == "aarch64"  # Debian's name, stored as Ironic's
    assert check_cpu_arch("AMD64") == "x86_64"
    assert check_cpu_arch(None) is None and check_cpu_arch("") is None
    for bad in ("sparc", 64, ["x86_64"]):
        with pytest.raises(InvalidInput) as e:
            check_cpu_arch(bad)
        assert e.value.field == "cpu_arch" and "x86_64, aarch64" in e.value.message
    assert node_cpu_arch("arm64") == "aarch64"
    assert node_cpu_arch(" PPC64LE ") == "ppc64le"  # kept: it matches no image of ours
    assert node_cpu_arch("") is None and node_cpu_arch(None) is None and node_cpu_arch(3) is None


@needs_tools
async def test_found_at_import_and_given(catalogue: ImageCatalogue, tmp_path: Path) -> None:
    arm = disk(tmp_path / "arm.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64})
    assert (await catalogue.add("arm", str(arm))).cpu_arch == "aarch64"
    assert (await catalogue.get("arm")).cpu_arch == "aarch64"  # stored, not only returned
    # The operator's word where the image says nothing...
    assert (await catalogue.add("given", str(plain(tmp_path / "p.raw")), "arm64")).cpu_arch == "aarch64"
    assert (await catalogue.add("any", str(tmp_path / "p.raw"))).cpu_arch is None
    # ...and agreeing with what it says; contradicting it is refused, and the import is undone.
    assert (await catalogue.add("arm2", str(arm), "aarch64")).cpu_arch == "aarch64"
    with pytest.raises(InvalidInput) as e:
        await catalogue.add("wrong", str(arm), "x86_64")
    assert e.value.field == "cpu_arch" and "x86_64" in e.value.message and "aarch64" in e.value.message
    assert "wrong" not in {i.name for i in await catalogue.list()}
    assert not list((tmp_path / "root" / "images" / ".partial").iterdir())
    with pytest.raises(InvalidInput) as e:
        await catalogue.add("bad", str(arm), "mips")
    assert e.value.field == "cpu_arch"


@needs_tools
async def test_uploads_are_detected_too(catalogue: ImageCatalogue, tmp_path: Path) -> None:
    data = disk(tmp_path / "x.raw", {"EFI/BOOT/BOOTX64.EFI": X64}).read_bytes()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), MiB):
            yield data[i : i + MiB]

    assert (await catalogue.upload("x", chunks(), "x.raw")).cpu_arch == "x86_64"
    with pytest.raises(InvalidInput) as e:
        await catalogue.upload("y", chunks(), "x.raw", cpu_arch="aarch64")
    assert e.value.field == "cpu_arch"


@needs_tools
async def test_deploy_refuses_another_architecture(catalogue: ImageCatalogue, tmp_path: Path) -> None:
    await catalogue.add("arm", str(disk(tmp_path / "arm.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64})))
    await catalogue.add("any", str(plain(tmp_path / "p.raw")))
    with pytest.raises(InvalidInput) as e:
        await catalogue.resolve("arm", {}, "x86_64")
    assert e.value.field == SOURCE
    assert "arm" in e.value.message and "aarch64" in e.value.message and "x86_64" in e.value.message
    image = await catalogue.get("arm")
    with pytest.raises(InvalidInput):  # by UUID as well
        await catalogue.resolve(image.uuid, {}, "amd64")
    assert (await catalogue.resolve("arm", {}, "arm64")).name == "arm"
    assert (await catalogue.resolve("arm", {}, None)).name == "arm"  # node's architecture unknown
    for node in ("x86_64", "aarch64", None):  # an image of no architecture goes anywhere
        assert (await catalogue.resolve("any", {}, node)).name == "any"


@needs_tools
async def test_a_name_resolves_to_the_variant_of_the_nodes_architecture(
    catalogue: ImageCatalogue, tmp_path: Path
) -> None:
    x86 = disk(tmp_path / "x.raw", {"EFI/BOOT/BOOTX64.EFI": X64})
    arm = disk(tmp_path / "a.raw", {"EFI/BOOT/BOOTAA64.EFI": AA64})
    await catalogue.add("debian-12-x86_64", str(x86))
    await catalogue.add("debian-12-aarch64", str(arm))
    assert (await catalogue.resolve("debian-12", {}, "x86_64")).name == "debian-12-x86_64"
    assert (await catalogue.resolve("debian-12", {}, "arm64")).name == "debian-12-aarch64"
    with pytest.raises(InvalidInput) as e:  # no variant to choose without the node's architecture
        await catalogue.resolve("debian-12", {}, None)
    assert "is neither in bootforge's image catalogue" in e.value.message
    # An exact name of the node's architecture (or of none) is taken as it is...
    await catalogue.add("web", str(x86))
    await catalogue.add("web-aarch64", str(arm))
    assert (await catalogue.resolve("web", {}, "x86_64")).name == "web"
    assert (await catalogue.resolve("web", {}, "aarch64")).name == "web-aarch64"  # ...else the variant
    # A variant is only taken if it is of the node's architecture: else the exact name is refused.
    await catalogue.add("db", str(x86))
    await catalogue.add("db-aarch64", str(x86))  # mislabelled by its name: its ESP says x86_64
    with pytest.raises(InvalidInput) as e:
        await catalogue.resolve("db", {}, "aarch64")
    assert e.value.field == SOURCE and "image_source db is an image for x86_64" in e.value.message
