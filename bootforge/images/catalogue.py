"""The image catalogue: named images imported once, and what a deploy's image_source resolves to.

An image row exists from the moment its import starts (status "importing"), so its name is taken at
once and a second `add` of the same name fails before any byte is copied. http(s) image sources given
to a deploy are imported into the same catalogue under a reserved name, "url:" + a hash of the URL,
which the name rules for operators' images can never produce: the cache is visible in `image list`
and emptied with `image delete`. Both kinds of URL go through the same checks (sources.py: allowed
networks, every redirect hop, size and time limits); host paths only from images.import_dirs; any other
file arrives as an upload (`upload`, PUT /v1/images/{name}/file).

Each image may have a CPU architecture (`cpu_arch`: x86_64 or aarch64; None = any), given by the
operator or found in the image's EFI System Partition (arch.py). A deploy to a node whose
properties.cpu_arch is known refuses an image of another architecture, and a name without an image
of the node's architecture resolves to the variant NAME-<cpu_arch> when there is one ("debian-12"
-> "debian-12-aarch64" for an aarch64 node): one instance_info for a mixed fleet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import threading
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bootforge.config import ImageSettings
from bootforge.db.engine import Database
from bootforge.db.models import Image, utcnow
from bootforge.db.queries import is_uuid
from bootforge.errors import Conflict, InvalidInput, NotFound
from bootforge.images.formats import RAW, ZSTD
from bootforge.images.store import CHUNK, ImageStore, Stored, Upload, is_url, redact_url
from bootforge.netboot.boot.arch import CPU_ARCHES
from bootforge.netboot.boot.arch import cpu_arch as known_cpu_arch

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
CACHE_PREFIX = "url:"
IMPORTING, READY = "importing", "ready"
SOURCE_FIELD = "instance_info.image_source"
DIGEST_LENGTHS = {"md5": 32, "sha256": 64, "sha512": 128}
HEX_RE = re.compile(r"^[0-9a-f]+$")
MD5_REFUSED = (
    "md5 checksums are not accepted: md5 collisions can be made at will, so a matching md5 does not show "
    "the image is the one meant; give a sha256 or sha512 digest "
    "(image_os_hash_algo + image_os_hash_value, or image_checksum)"
)


@dataclass(frozen=True)
class ImageRef:
    """The file a deploy streams, as the agent is told of it (the contract's write_image "image")."""

    path: str  # relative to the netboot root, e.g. images/<uuid>.simg
    format: str  # simg | simg+zstd; raw | zstd for images imported before sparse streams
    size: int
    virtual_size: int
    checksum_algo: str
    checksum: str
    name: str = ""  # the catalogue image's name (a variant's, when the node's architecture chose one)

    def agent_args(self, http_base: str) -> dict[str, Any]:
        return {
            "url": f"{http_base.rstrip('/')}/{self.path}",
            "format": self.format,
            "size": self.size,
            "virtual_size": self.virtual_size,
            "checksum_algo": self.checksum_algo,
            "checksum": self.checksum,
        }


@dataclass(frozen=True)
class Expected:
    """A digest the operator gave for the original image, and the instance_info field it came from."""

    algo: str
    value: str
    field: str


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or is_uuid(name):
        raise InvalidInput(
            f"Cannot use {name!r} as an image name: use 1 to 255 letters, digits, '.', '_' or '-', "
            "and not a UUID",
            "name",
        )
    return name


def check_cpu_arch(value: Any, field: str = "cpu_arch") -> str | None:
    """An image's architecture as the operator gave it: Ironic's name (or Debian's, which is stored as
    Ironic's); empty or None is "any architecture"."""
    if value is None or value == "":
        return None
    arch = known_cpu_arch(value) if isinstance(value, str) else None
    if arch is None:
        raise InvalidInput(
            f"{field} {value!r} is not a CPU architecture bootforge knows: use one of "
            f"{', '.join(CPU_ARCHES)} (or leave it unset: any architecture)",
            field,
        )
    return arch.cpu


def node_cpu_arch(value: Any) -> str | None:
    """A node's properties.cpu_arch for comparison with an image's: aliases made Ironic's name; an
    architecture bootforge has no images for is kept as written (it matches no x86_64/aarch64 image)."""
    if not isinstance(value, str) or not value.strip():
        return None
    arch = known_cpu_arch(value)
    return arch.cpu if arch is not None else value.strip().lower()


def check_source(source: Any) -> str:
    if not isinstance(source, str) or not source:
        raise InvalidInput(
            "source must be an absolute file path on the bootforge host or an http(s) URL", "source"
        )
    if is_url(source) or source.startswith("/"):
        return source
    raise InvalidInput(
        f"source {source!r} is neither an absolute file path on the bootforge host nor an http(s) URL",
        "source",
    )


def expected_digest(instance_info: dict[str, Any]) -> Expected | None:
    """The digest instance_info asks for: image_os_hash_algo/value (preferred, as in Ironic) or
    image_checksum (a bare hex digest, its algorithm told by its length, or "algo:hex")."""
    algo, value = instance_info.get("image_os_hash_algo"), instance_info.get("image_os_hash_value")
    if algo or value:
        if not (algo and value):
            raise InvalidInput(
                "image_os_hash_algo and image_os_hash_value must be given together",
                "instance_info.image_os_hash_algo",
            )
        return _digest(str(algo).lower(), str(value), "instance_info.image_os_hash_value")
    checksum = instance_info.get("image_checksum")
    if not checksum:
        return None
    text = str(checksum).strip().lower()
    field = "instance_info.image_checksum"
    if "://" in text:
        raise InvalidInput(
            "image_checksum as a URL of a checksum file is not supported; give the digest", field
        )
    if ":" in text:
        name, _, text = text.partition(":")
    else:
        name = {v: k for k, v in DIGEST_LENGTHS.items()}.get(len(text), "")
    if not name:
        raise InvalidInput("image_checksum must be a sha256 (64 hex digits) or sha512 (128) digest", field)
    return _digest(name, text, field)


def _digest(algo: str, value: str, field: str) -> Expected:
    if algo == "md5":
        raise InvalidInput(MD5_REFUSED, field)
    if algo not in ("sha256", "sha512"):
        raise InvalidInput(f"checksum algorithm {algo!r} is not supported; use sha256 or sha512", field)
    value = value.strip().lower()
    if len(value) != DIGEST_LENGTHS[algo] or not HEX_RE.match(value):
        raise InvalidInput(f"{value!r} is not a {algo} digest ({DIGEST_LENGTHS[algo]} hex digits)", field)
    return Expected(algo, value, field)


def cache_name(url: str) -> str:
    return CACHE_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:40]


class ImageCatalogue:
    def __init__(self, db: Database, root: Path, settings: ImageSettings | None = None) -> None:
        self.db = db
        self.root = root
        # Without settings nothing of the host and no URL on a non-public network is imported.
        self.store = ImageStore(root, settings)
        # One import of a URL at a time in this process; others asking for it wait and reuse it.
        self._url_locks: dict[str, asyncio.Lock] = {}

    # --- the operator's catalogue -------------------------------------------------------------------

    async def add(self, name: str, source: str, cpu_arch: str | None = None) -> Image:
        """Import `source` (a file on this host or an http(s) URL) as `name`; returns the ready row.
        `cpu_arch` (None: as found in the image, else any) is the image's architecture."""
        arch = check_cpu_arch(cpu_arch)
        return await self._import(check_name(name), check_source(source), cpu_arch=arch)

    async def upload(
        self, name: str, chunks: AsyncIterator[bytes], filename: str = "", cpu_arch: str | None = None
    ) -> Image:
        """Import the bytes of an upload as `name`, written to disk as they arrive (1 MiB at a time in a
        thread); returns the ready row. What is no image is refused from its first 4 KiB."""
        check_name(name)
        arch = check_cpu_arch(cpu_arch)
        upload: Upload | None = None

        async def receive(stop: threading.Event, image_uuid: str) -> Stored:
            nonlocal upload
            upload = await asyncio.to_thread(self.store.begin_upload, image_uuid)
            buf = bytearray()
            async for chunk in chunks:
                buf += chunk
                if len(buf) >= CHUNK:
                    await asyncio.to_thread(upload.write, bytes(buf))
                    buf.clear()
            if buf:
                await asyncio.to_thread(upload.write, bytes(buf))
            return await asyncio.to_thread(self.store.import_upload, image_uuid, upload, stop)

        try:
            return await self._run(name, upload_source(filename), receive, cpu_arch=arch)
        finally:
            if upload is not None:
                upload.close()

    async def get(self, ident: str) -> Image:
        column = Image.uuid if is_uuid(ident) else Image.name
        async with self.db.read() as s:
            image: Image | None = await s.scalar(select(Image).where(column == ident))
        if image is None:
            raise NotFound(f"Image {ident} could not be found.")
        return image

    async def list(self) -> list[Image]:
        async with self.db.read() as s:
            return list(await s.scalars(select(Image).order_by(Image.id)))

    async def delete(self, ident: str) -> None:
        image = await self.get(ident)
        async with self.db.write() as s:
            row = await s.get(Image, image.id)
            if row is not None:
                await s.delete(row)
            await s.commit()
        await asyncio.to_thread(self.store.remove, image.uuid)

    # --- deploys ------------------------------------------------------------------------------------

    async def resolve(
        self, image_source: str, instance_info: dict[str, Any], node_arch: Any = None
    ) -> ImageRef:
        """The file to stream for a deploy of `image_source` (catalogue name or UUID, or an http(s) URL).

        A digest in instance_info is checked against the ORIGINAL image. Images are served as sparse
        streams (simg, simg+zstd), whose bytes are not the original's: a mismatch is refused here, naming
        both digests, and the agent is given the stream's digest to check. Only for an image imported
        before sparse streams, served as the original's bytes (raw, zstd), is a mismatch left to the
        agent, which checks the stream on the fly and fails the deploy naming both digests, before the
        disk's first MiB is written.

        `node_arch` is the node's properties.cpu_arch: an image of another architecture is refused, and
        a name is resolved to its variant for that architecture (see the module's docstring).
        """
        expected = expected_digest(instance_info)
        if not isinstance(image_source, str) or not image_source:
            raise InvalidInput("instance_info.image_source is required", SOURCE_FIELD)
        arch = node_cpu_arch(node_arch)
        if is_url(image_source):
            image = await self._cached(image_source, expected)
        else:
            image = await self._named(image_source, arch)
        shown = redact_url(image_source) if is_url(image_source) else image_source
        if arch is not None and image.cpu_arch is not None and image.cpu_arch != arch:
            raise InvalidInput(
                f"{SOURCE_FIELD} {shown} is an image for {image.cpu_arch}, but the node's "
                f"properties.cpu_arch is {arch}: give an {arch} image (or one of no architecture)",
                SOURCE_FIELD,
            )
        return ref_for(image, expected, shown)

    async def _named(self, ident: str, arch: str | None = None) -> Image:
        variant = await self._variant(ident, arch)
        if variant is not None:
            return variant
        try:
            image = await self.get(ident)
        except NotFound:
            raise InvalidInput(
                f"image {ident!r} is neither in bootforge's image catalogue (`bootforge image list`) "
                "nor an http(s) URL",
                SOURCE_FIELD,
            ) from None
        if image.status != READY:
            raise InvalidInput(f"image {ident} is not ready (it is {image.status})", SOURCE_FIELD)
        return image

    async def _variant(self, ident: str, arch: str | None) -> Image | None:
        """NAME-<arch>, when the node's architecture is known and NAME itself is not an image for it
        (missing, or of another architecture). A UUID names one image: it has no variants."""
        if arch is None or is_uuid(ident):
            return None
        async with self.db.read() as s:
            rows = {
                i.name: i
                for i in await s.scalars(select(Image).where(Image.name.in_([ident, f"{ident}-{arch}"])))
            }
        exact, variant = rows.get(ident), rows.get(f"{ident}-{arch}")
        if exact is not None and exact.cpu_arch in (None, arch):
            return None
        if variant is None or variant.status != READY or variant.cpu_arch not in (None, arch):
            return None
        return variant

    async def _cached(self, url: str, expected: Expected | None) -> Image:
        """The URL's image, imported on first use; again when the digest asked for is not the one cached
        (the file behind the URL changed)."""
        name = cache_name(url)
        lock = self._url_locks.setdefault(url, asyncio.Lock())
        async with lock:
            try:
                image: Image | None = await self.get(name)
            except NotFound:
                image = None
            if image is not None and (image.status != READY or _mismatch(image, expected)):
                await self.delete(image.uuid)
                image = None
            if image is None:
                image = await self._import(name, url, field=SOURCE_FIELD)
        return image

    # --- importing ----------------------------------------------------------------------------------

    async def _import(
        self, name: str, source: str, field: str = "source", cpu_arch: str | None = None
    ) -> Image:
        async def fill(stop: threading.Event, image_uuid: str) -> Stored:
            return await asyncio.to_thread(self.store.import_image, image_uuid, source, stop)

        shown = redact_url(source) if is_url(source) else source
        return await self._run(name, shown, fill, field, cpu_arch)

    async def _run(
        self,
        name: str,
        shown: str,
        fill: Callable[[threading.Event, str], Awaitable[Stored]],
        field: str = "source",
        cpu_arch: str | None = None,
    ) -> Image:
        row = _importing_row(name, shown)
        async with self.db.write() as s:
            s.add(row)
            try:
                await s.commit()
            except IntegrityError:
                raise Conflict(f"An image named {name} already exists.") from None
        stop = threading.Event()
        try:
            stored = await fill(stop, row.uuid)
            if cpu_arch is not None:
                if stored.cpu_arch not in (None, cpu_arch):
                    # The loader found decides what the machine boots: an image labelled otherwise
                    # would be refused by the nodes it runs on and sent to the ones it cannot.
                    raise InvalidInput(
                        f"cpu_arch {cpu_arch} was given, but the image boots {stored.cpu_arch} "
                        "(its EFI System Partition's EFI/BOOT loader is for that architecture)",
                        "cpu_arch",
                    )
                stored = dataclasses.replace(stored, cpu_arch=cpu_arch)
            return await self._ready(row, stored)
        except BaseException as exc:
            # Cancelled or failed: the thread stops at its next chunk and removes its work files.
            stop.set()
            await self._forget(row)
            if isinstance(exc, InvalidInput) and exc.field == "source" and field != "source":
                raise InvalidInput(f"importing {row.source}: {exc.message}", field) from None
            raise

    async def _ready(self, importing: Image, stored: Stored) -> Image:
        async with self.db.write() as s:
            row = await s.get(Image, importing.id)
            if row is None:
                await asyncio.to_thread(self.store.remove, importing.uuid)
                raise Conflict(f"image {importing.name} was deleted while it was being imported")
            for key, value in vars(stored).items():
                setattr(row, key, value)
            row.status = READY
            await s.commit()
        return row

    async def _forget(self, row: Image) -> None:
        async with self.db.write() as s:
            found = await s.get(Image, row.id)
            if found is not None:
                await s.delete(found)
            await s.commit()
        await asyncio.to_thread(self.store.remove, row.uuid)


def upload_source(filename: str) -> str:
    """What an uploaded image's `source` shows: the file name the client gave, for the operator's eyes
    only (it is never opened)."""
    shown = "".join(c for c in filename if c.isprintable())[:200]
    return f"upload:{shown}" if shown else "upload"


def _importing_row(name: str, source: str) -> Image:
    # NOT NULL columns hold placeholders until the import finishes.
    return Image(
        uuid=str(uuidlib.uuid4()),
        name=name,
        source=source,
        disk_format="",
        size=0,
        virtual_size=0,
        sha256="",
        sha512="",
        stream_path="",
        stream_format="",
        stream_size=0,
        stream_sha256="",
        stream_sha512="",
        status=IMPORTING,
        created_at=utcnow(),
    )


def _original(image: Image, algo: str) -> str:
    return str(image.sha256 if algo == "sha256" else image.sha512)


def _mismatch(image: Image, expected: Expected | None) -> bool:
    return expected is not None and _original(image, expected.algo) != expected.value


def ref_for(image: Image, expected: Expected | None, shown: str) -> ImageRef:
    algo = expected.algo if expected else "sha256"
    stream_digest = image.stream_sha256 if algo == "sha256" else image.stream_sha512
    checksum = stream_digest
    if expected is not None and _mismatch(image, expected):
        # The served bytes are a conversion (a sparse stream, or a qcow2 as raw+zstd): the agent could
        # only check those, so the operator's digest of the original is refused here.
        if image.stream_format not in (RAW, ZSTD) or image.disk_format != image.stream_format:
            raise InvalidInput(
                f"image checksum mismatch for {shown}: expected {algo} {expected.value}, "
                f"got {_original(image, algo)}",
                expected.field,
            )
        # The served bytes are the original's: the agent compares them with what the operator expects.
        checksum = expected.value
    return ImageRef(
        path=image.stream_path,
        format=image.stream_format,
        size=image.stream_size,
        virtual_size=image.virtual_size,
        checksum_algo=algo,
        checksum=checksum,
        name=image.name,
    )


__all__ = [
    "Expected",
    "ImageCatalogue",
    "ImageRef",
    "cache_name",
    "check_cpu_arch",
    "check_name",
    "check_source",
    "expected_digest",
    "node_cpu_arch",
    "ref_for",
    "upload_source",
]
