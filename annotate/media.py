"""Media files as annotators may receive them: pixels only, under names that say nothing.

Every image an annotator can be shown is stored re-encoded from its decoded pixels, so that
nothing a generator, an editor or a camera wrote beside them (EXIF, XMP, ICC, PNG text
chunks, JPEG comments) reaches the annotator. Stored names carry no checkpoint, study,
prompt or seed; the files are served only through views that check who asks.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
from dataclasses import dataclass

from django.conf import settings
from PIL import Image as PILImage
from PIL import ImageOps

JPEG_QUALITY = 95


@dataclass(frozen=True)
class CleanImage:
    content: bytes
    extension: str  # "jpg" or "png"
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def size_bytes(self) -> int:
        return len(self.content)


def image_clean(image: PILImage.Image, *, keep_png: bool = True) -> CleanImage:
    """The image's pixels alone, upright and in RGB: a PNG when read from a PNG file and
    ``keep_png`` (lossless stays lossless), else a JPEG. The same pixels give the same bytes."""
    png = keep_png and image.format == "PNG"
    pixels = ImageOps.exif_transpose(image)  # a new image, never the caller's
    if pixels.mode in ("RGBA", "LA", "PA") or "transparency" in pixels.info:
        rgba = pixels.convert("RGBA")  # transparent parts on white, as a browser shows them
        pixels = PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, "white"), rgba)
    if pixels.mode != "RGB":
        pixels = pixels.convert("RGB")
    # Pillow's encoders write a comment or an ICC profile that they find in ``info``.
    pixels.info = {}
    buffer = io.BytesIO()
    if png:
        pixels.save(buffer, format="PNG")
    else:
        pixels.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return CleanImage(buffer.getvalue(), "png" if png else "jpg", *pixels.size)


def image_file_clean(file) -> CleanImage:
    """An image file (a path or a binary file object) through ``image_clean``; Pillow's errors
    for a bad file are raised."""
    with PILImage.open(file) as img:
        return image_clean(img)


def media_name_key() -> bytes:
    """CALIBRA_MEDIA_NAME_KEY, else a key derived from SECRET_KEY (never SECRET_KEY itself)."""
    key = getattr(settings, "CALIBRA_MEDIA_NAME_KEY", "")
    if key:
        return key.encode()
    return hashlib.sha256(b"calibra.media-names:" + settings.SECRET_KEY.encode()).digest()


# Names as this module makes them; anything else in storage predates them (rename_media).
IMAGE_NAME = re.compile(r"images/([0-9a-f]{2})/\1[0-9a-f]{30}\.(jpg|png)")
REPORT_NAME = re.compile(r"reports/[0-9a-f]{32}\.[a-z]+")


def _keyed_token(parts: tuple) -> str:
    message = ":".join(str(p) for p in parts).encode()
    return hmac.new(media_name_key(), message, hashlib.sha256).hexdigest()[:32]


def _image_name(token: str, extension: str) -> str:
    # Two hex characters of fan-out: no folder holds millions of files.
    return f"images/{token[:2]}/{token}.{extension}"


def keyed_image_name(*parts: object, extension: str = "jpg") -> str:
    """The same name for the same ``parts`` wherever the key is the same (every worker), and
    nothing of them readable without the key."""
    return _image_name(_keyed_token(parts), extension)


def random_image_name(extension: str) -> str:
    return _image_name(secrets.token_hex(16), extension)


def keyed_report_name(*parts: object, extension: str) -> str:
    return f"reports/{_keyed_token(parts)}.{extension}"


def random_report_name(extension: str) -> str:
    """A report's name within its field's folder (``reports/``): a random token."""
    return f"{secrets.token_hex(16)}.{extension}"
