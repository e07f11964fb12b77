"""OS images: the catalogue (import, format inspection, conversion, checksums, the URL cache) and the
config drive built for a deploy. Blocking file work runs in threads; nothing here imports the API or
the conductor."""

from bootforge.images.catalogue import Expected, ImageCatalogue, ImageRef, expected_digest
from bootforge.images.configdrive import build_configdrive
from bootforge.images.formats import ImageError

__all__ = ["Expected", "ImageCatalogue", "ImageError", "ImageRef", "build_configdrive", "expected_digest"]
