"""The catalogue over a real (SQLite) database: names, look-ups, the URL cache and checksum rules."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from simg_util import expand

from bootforge.config import ImageSettings
from bootforge.db.engine import Database
from bootforge.db.models import Image
from bootforge.errors import Conflict, InvalidInput, NotFound
from bootforge.images.catalogue import Expected, ImageCatalogue, cache_name, expected_digest, ref_for

MiB = 1 << 20


@pytest.fixture
async def catalogue(tmp_path: Path) -> AsyncIterator[ImageCatalogue]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await db.migrate()
    try:
        # Files of the test's directory and loopback URLs are allowed here (see test_images_sources.py).
        settings = ImageSettings(import_dirs=[tmp_path], allow_url_networks=["127.0.0.0/8"])
        yield ImageCatalogue(db, tmp_path / "root", settings)
    finally:
        await db.close()


@dataclass
class Web:
    dir: Path
    base: str
    gets: list[str] = field(default_factory=list)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    served = tmp_path / "www"
    served.mkdir()
    seen: list[str] = []

    class Counting(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Web(served, f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def raw_file(path: Path, size: int = MiB) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def qcow2(path: Path, size: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_add_get_list_delete(catalogue: ImageCatalogue, tmp_path: Path) -> None:
    data = raw_file(tmp_path / "a.img")
    image = await catalogue.add("ubuntu-24.04_x86", str(tmp_path / "a.img"))
    assert image.status == "ready" and image.disk_format == "raw"
    assert image.sha256 == sha256(data) and image.virtual_size == len(data)
    assert image.source == str(tmp_path / "a.img")
    assert (await catalogue.get("ubuntu-24.04_x86")).uuid == image.uuid
    assert (await catalogue.get(image.uuid)).name == image.name
    assert [i.name for i in await catalogue.list()] == ["ubuntu-24.04_x86"]
    served = catalogue.root / image.stream_path
    assert expand(served.read_bytes()) == data

    await catalogue.delete("ubuntu-24.04_x86")
    assert not served.exists()
    with pytest.raises(NotFound, match=r"ubuntu-24\.04_x86"):
        await catalogue.get("ubuntu-24.04_x86")


@pytest.mark.parametrize(
    "name", ["", "a b", "x" * 256, "url:abc", "a/b", "0b7f6a5e-1d2c-4b3a-9f8e-7d6c5b4a3f2e"]
)
async def test_name_rules(catalogue: ImageCatalogue, tmp_path: Path, name: str) -> None:
    raw_file(tmp_path / "a.img")
    with pytest.raises(InvalidInput) as info:
        await catalogue.add(name, str(tmp_path / "a.img"))
    assert info.value.field == "name"


async def test_source_rules(catalogue: ImageCatalogue) -> None:
    for source in ("relative/disk.img", "ftp://host/disk.img", "file:///srv/disk.img"):
        with pytest.raises(InvalidInput, match="absolute file path") as info:
            await catalogue.add("x", source)
        assert info.value.field == "source"


async def test_duplicate_name_conflicts_and_keeps_the_first(
    catalogue: ImageCatalogue, tmp_path: Path
) -> None:
    data = raw_file(tmp_path / "a.img")
    raw_file(tmp_path / "b.img")
    await catalogue.add("img", str(tmp_path / "a.img"))
    with pytest.raises(Conflict, match="img already exists"):
        await catalogue.add("img", str(tmp_path / "b.img"))
    assert (await catalogue.get("img")).sha256 == sha256(data)


async def test_failed_import_leaves_no_row(catalogue: ImageCatalogue, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"hello\n")
    with pytest.raises(InvalidInput, match="512-byte sectors"):
        await catalogue.add("notes", str(tmp_path / "notes.txt"))
    assert await catalogue.list() == []


# --- checksums --------------------------------------------------------------------------------------

HEX64, HEX128 = "ab" * 32, "cd" * 64


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({}, None),
        ({"image_checksum": HEX64}, ("sha256", HEX64, "instance_info.image_checksum")),
        ({"image_checksum": HEX128.upper()}, ("sha512", HEX128, "instance_info.image_checksum")),
        ({"image_checksum": f"sha256:{HEX64}"}, ("sha256", HEX64, "instance_info.image_checksum")),
        (
            {"image_os_hash_algo": "sha512", "image_os_hash_value": HEX128, "image_checksum": "0" * 32},
            ("sha512", HEX128, "instance_info.image_os_hash_value"),
        ),
    ],
)
def test_expected_digest(info: dict[str, Any], expected: tuple[str, str, str] | None) -> None:
    found = expected_digest(info)
    assert (found and (found.algo, found.value, found.field)) == expected


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"image_checksum": "0" * 32}, "md5 checksums are not accepted: md5 collisions"),
        ({"image_os_hash_algo": "md5", "image_os_hash_value": "0" * 32}, "md5 checksums are not accepted"),
        ({"image_os_hash_algo": "sha1", "image_os_hash_value": "0" * 40}, "'sha1' is not supported"),
        ({"image_os_hash_algo": "sha256"}, "must be given together"),
        ({"image_checksum": "xyz"}, "sha256 \\(64 hex digits\\) or sha512"),
        ({"image_checksum": "sha256:" + "g" * 64}, "is not a sha256 digest"),
        ({"image_checksum": "http://host/SHA256SUMS"}, "checksum file is not supported"),
    ],
)
def test_refused_checksums(info: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as exc:
        expected_digest(info)
    assert str(exc.value.field).startswith("instance_info.image_")


async def test_resolve_a_catalogue_image(catalogue: ImageCatalogue, tmp_path: Path) -> None:
    data = raw_file(tmp_path / "a.img", 2 * MiB)
    image = await catalogue.add("a", str(tmp_path / "a.img"))
    ref = await catalogue.resolve("a", {})
    assert ref.path == f"images/{image.uuid}.simg"
    stream = (catalogue.root / ref.path).read_bytes()
    assert (ref.format, ref.size, ref.virtual_size) == ("simg", len(stream), len(data))
    # The agent is given the digest of the bytes it receives: the stream's.
    assert (ref.checksum_algo, ref.checksum) == ("sha256", sha256(stream))
    assert ref.agent_args("http://10.77.0.1:8080/") == {
        "url": f"http://10.77.0.1:8080/images/{image.uuid}.simg",
        "format": "simg",
        "size": len(stream),
        "virtual_size": len(data),
        "checksum_algo": "sha256",
        "checksum": sha256(stream),
    }
    by_uuid = await catalogue.resolve(
        image.uuid, {"image_os_hash_algo": "sha512", "image_os_hash_value": image.sha512}
    )
    assert image.sha512 == hashlib.sha512(data).hexdigest()
    assert (by_uuid.checksum_algo, by_uuid.checksum) == ("sha512", hashlib.sha512(stream).hexdigest())


async def test_resolve_unknown_name(catalogue: ImageCatalogue) -> None:
    with pytest.raises(InvalidInput, match="neither in bootforge's image catalogue") as info:
        await catalogue.resolve("nope", {})
    assert info.value.field == "instance_info.image_source"


async def test_wrong_checksum_of_a_raw_image_is_refused_naming_both(
    catalogue: ImageCatalogue, tmp_path: Path
) -> None:
    data = raw_file(tmp_path / "a.img")
    await catalogue.add("a", str(tmp_path / "a.img"))
    # The served bytes are a sparse stream, not the original's: the digest the operator gave for the
    # original is checked here, against the one recorded at import.
    with pytest.raises(InvalidInput) as info:
        await catalogue.resolve("a", {"image_checksum": HEX64})
    assert info.value.message == f"image checksum mismatch for a: expected sha256 {HEX64}, got {sha256(data)}"
    assert info.value.field == "instance_info.image_checksum"
    with pytest.raises(
        InvalidInput, match=f"expected sha512 {HEX128}, got {hashlib.sha512(data).hexdigest()}"
    ):
        await catalogue.resolve("a", {"image_os_hash_algo": "sha512", "image_os_hash_value": HEX128})


def legacy_image(stream_format: str, disk_format: str) -> Image:
    """A row as imports made it before sparse streams: the original's bytes served as they were."""
    return Image(
        uuid="5d2c7a3e-0000-4000-8000-000000000001",
        name="old",
        disk_format=disk_format,
        size=1000,
        virtual_size=MiB,
        sha256="11" * 32,
        sha512="22" * 64,
        stream_path="images/5d2c7a3e-0000-4000-8000-000000000001.raw.zst",
        stream_format=stream_format,
        stream_size=1000 if disk_format == stream_format else 900,
        stream_sha256=("11" if disk_format == stream_format else "33") * 32,
        stream_sha512=("22" if disk_format == stream_format else "44") * 64,
    )


def test_images_imported_before_sparse_streams_resolve_as_before() -> None:
    for fmt in ("raw", "zstd"):
        image = legacy_image(fmt, fmt)
        # The served bytes are the original's: a wrong digest is left to the agent, which checks the
        # stream and fails the deploy naming both digests before the disk's first MiB is written.
        ref = ref_for(image, Expected("sha256", HEX64, "instance_info.image_checksum"), "old")
        assert (ref.format, ref.path, ref.size, ref.checksum) == (fmt, image.stream_path, 1000, HEX64)
        assert ref_for(image, None, "old").checksum == "11" * 32
    converted = legacy_image("zstd", "qcow2")  # a qcow2 converted to raw+zstd
    assert ref_for(converted, Expected("sha512", "22" * 64, "f"), "old").checksum == "44" * 64
    with pytest.raises(InvalidInput, match=f"expected sha256 {HEX64}, got {'11' * 32}"):
        ref_for(converted, Expected("sha256", HEX64, "f"), "old")


async def test_wrong_checksum_of_a_qcow2_is_refused_naming_both(
    catalogue: ImageCatalogue, tmp_path: Path
) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img (Debian package qemu-utils)")
    path = tmp_path / "a.qcow2"
    qcow2(path, "8M")
    image = await catalogue.add("q", str(path))
    assert (image.disk_format, image.stream_format) == ("qcow2", "simg+zstd")
    with pytest.raises(InvalidInput) as info:
        await catalogue.resolve("q", {"image_checksum": HEX64})
    assert info.value.message == f"image checksum mismatch for q: expected sha256 {HEX64}, got {image.sha256}"
    assert info.value.field == "instance_info.image_checksum"
    # The right digest of the ORIGINAL qcow2 passes; the agent checks the converted stream's.
    ref = await catalogue.resolve("q", {"image_checksum": image.sha256})
    assert (ref.format, ref.checksum) == ("simg+zstd", image.stream_sha256)
    assert ref.virtual_size == 8 * MiB


async def test_url_is_imported_once_then_cached(catalogue: ImageCatalogue, web: Web) -> None:
    data = raw_file(web.dir / "disk.img")
    url = f"{web.base}/disk.img"
    first = await catalogue.resolve(url, {})
    second = await catalogue.resolve(url, {"image_checksum": sha256(data)})
    assert web.gets == ["/disk.img"]
    assert first == second and first.format == "simg"
    assert first.checksum == sha256((catalogue.root / first.path).read_bytes())
    cached = await catalogue.get(cache_name(url))
    assert cached.source == url and cached.name.startswith("url:")


async def test_url_reimported_when_the_checksum_asked_for_changes(
    catalogue: ImageCatalogue, web: Web
) -> None:
    raw_file(web.dir / "disk.img")
    url = f"{web.base}/disk.img"
    old = await catalogue.resolve(url, {})
    new_data = raw_file(web.dir / "disk.img")  # the file behind the URL changed
    ref = await catalogue.resolve(url, {"image_checksum": sha256(new_data)})
    assert web.gets == ["/disk.img", "/disk.img"]
    assert (await catalogue.get(cache_name(url))).sha256 == sha256(new_data) and ref.path != old.path
    assert not (catalogue.root / old.path).exists()
    assert len(await catalogue.list()) == 1


async def test_url_download_failure_names_the_deploy_field(catalogue: ImageCatalogue, web: Web) -> None:
    with pytest.raises(InvalidInput, match="HTTP 404") as info:
        await catalogue.resolve(f"{web.base}/missing.img", {})
    assert info.value.field == "instance_info.image_source"
    assert await catalogue.list() == []
