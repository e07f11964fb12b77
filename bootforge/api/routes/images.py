"""/v1/images: bootforge's image catalogue (an extension; Ironic leaves images to Glance).

Imports run inside the POST: the answer comes once the image is ready (or refused), with the file work
in a thread so the API keeps answering meanwhile.

POST takes an http(s) URL or a path inside images.import_dirs on the bootforge host; any other file is
uploaded with PUT /v1/images/{name}/file (what `bootforge image add NAME FILE` does), its body written
to disk as it arrives, bounded by api_limits.max_image_upload_bytes and images.upload_idle_timeout.
Either takes the image's `cpu_arch` (x86_64, aarch64; in the body, or as a query parameter of the PUT);
without it the architecture is what the image's EFI System Partition shows, or none (any).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from bootforge.api import openapi
from bootforge.api.deps import ctx, json_body
from bootforge.api.responses import JSON
from bootforge.db.models import Image
from bootforge.errors import BootforgeError, InvalidInput
from bootforge.images.catalogue import ImageCatalogue, check_cpu_arch

router = APIRouter()

FIELDS = (
    "uuid",
    "name",
    "source",
    "disk_format",
    "size",
    "virtual_size",
    "sha256",
    "sha512",
    "stream_format",
    "stream_size",
    "cpu_arch",
    "status",
    "created_at",
)


def catalogue(request: Request) -> ImageCatalogue:
    images: ImageCatalogue | None = getattr(request.app.state, "images", None)
    if images is None:
        raise BootforgeError("the image catalogue is not configured in this bootforge")
    return images


def image_doc(image: Image, base: str) -> dict[str, Any]:
    doc: dict[str, Any] = {f: getattr(image, f) for f in FIELDS}
    doc["links"] = [{"href": f"{base}/v1/images/{image.uuid}", "rel": "self"}]
    return doc


@router.post("/v1/images", status_code=201, openapi_extra=openapi.body(openapi.IMAGE_CREATE))
async def create_image(request: Request) -> JSON:
    body = await json_body(request)
    unknown = sorted(set(body) - {"name", "source", "cpu_arch"})
    if unknown:
        raise InvalidInput(f"Unknown attribute for argument image: {', '.join(unknown)}", unknown[0])
    for field in ("name", "source"):
        if not body.get(field):
            raise InvalidInput(f"Mandatory field missing: '{field}'", field)
    arch = check_cpu_arch(body.get("cpu_arch"))
    image = await catalogue(request).add(body["name"], body["source"], arch)
    base = ctx(request).base
    return JSON(
        image_doc(image, base), status_code=201, headers={"Location": f"{base}/v1/images/{image.uuid}"}
    )


class UploadStalled(BootforgeError):
    http_status = 408


UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [
        openapi.query_param("filename", "The uploaded file's name, shown as the source"),
        openapi.query_param("cpu_arch", "The image's CPU architecture: x86_64 or aarch64 (unset: as found)"),
    ],
}


@router.put("/v1/images/{name}/file", status_code=201, openapi_extra=UPLOAD_OPENAPI)
async def upload_image(request: Request, name: str) -> JSON:
    c = ctx(request)
    idle = c.services.settings.images.upload_idle_timeout
    # Checked before the body is read: a bad value fails at once, not after gigabytes.
    arch = check_cpu_arch(c.params.get("cpu_arch"))
    image = await catalogue(request).upload(name, _body(request, idle), c.params.get("filename", ""), arch)
    return JSON(
        image_doc(image, c.base), status_code=201, headers={"Location": f"{c.base}/v1/images/{image.uuid}"}
    )


async def _body(request: Request, idle: float) -> AsyncIterator[bytes]:
    """The request's body as it arrives; a client that sends nothing for `idle` seconds is dropped
    (its work file and importing row go with it)."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), idle)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadStalled(
                f"The upload sent nothing for {idle:g} s (setting images.upload_idle_timeout)."
            ) from None
        if chunk:
            yield chunk


@router.get("/v1/images")
async def list_images(request: Request) -> JSON:
    base = ctx(request).base
    return JSON({"images": [image_doc(i, base) for i in await catalogue(request).list()]})


@router.get("/v1/images/{ident}")
async def get_image(request: Request, ident: str) -> JSON:
    return JSON(image_doc(await catalogue(request).get(ident), ctx(request).base))


@router.delete("/v1/images/{ident}", status_code=204)
async def delete_image(request: Request, ident: str) -> Response:
    await catalogue(request).delete(ident)
    return Response(status_code=204)
