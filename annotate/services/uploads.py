"""Images uploaded by researchers: checked with Pillow before anything is stored.

The checks run cheapest first and never decode more than they must: the byte size (from the
upload's ``size``, before the file is opened), the format and the pixel count (from the
header alone), and only then a full decode, which finds truncated files. A file that passes
is re-encoded from its pixels (no metadata reaches annotators: annotate/media.py), stored
under a random name and recorded as an imported Image in one transaction; if the
transaction fails the stored file is deleted again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Max

from annotate.media import CleanImage, image_clean, random_image_name
from annotate.models import Dataset, Image, Prompt

# MPO is what Pillow calls a camera's JPEG that carries extra frames.
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
MAX_SEED = 2**63 - 1
MAX_INDEX = 2**31 - 1


def upload_max_bytes() -> int:
    return getattr(settings, "CALIBRA_UPLOAD_MAX_BYTES", DEFAULT_MAX_BYTES)


def upload_max_pixels() -> int:
    return getattr(settings, "CALIBRA_UPLOAD_MAX_PIXELS", DEFAULT_MAX_PIXELS)


class UploadError(ValueError):
    """An upload refused; ``field`` names the input at fault and ``status`` the HTTP answer."""

    def __init__(self, field: str, message: str, *, status: int = 400, code: str = "invalid"):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status, self.code = field, message, status, code


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


@dataclass(frozen=True)
class CheckedImage:
    sent_sha256: str  # of the file as sent
    clean: CleanImage  # what is stored


def image_file_check(file, *, max_bytes: int | None = None, max_pixels: int | None = None) -> CheckedImage:
    """An uploaded image file's pixels re-encoded, or UploadError (field ``file``). Reads the
    file, never more than ``max_bytes`` of it, and decodes it only when its header is within
    ``max_pixels``."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    max_bytes = upload_max_bytes() if max_bytes is None else max_bytes
    max_pixels = upload_max_pixels() if max_pixels is None else max_pixels
    if file.size > max_bytes:
        raise UploadError("file", f"{_megabytes(file.size)} is more than the limit of "
                                  f"{_megabytes(max_bytes)}", status=413, code="too_large")
    # Pillow refuses, at open, images of more than twice MAX_IMAGE_PIXELS; ours is the check
    # below, so Pillow's may only be looser (a limit above Pillow's default raises it).
    if PILImage.MAX_IMAGE_PIXELS is not None and PILImage.MAX_IMAGE_PIXELS < max_pixels:
        PILImage.MAX_IMAGE_PIXELS = max_pixels
    file.seek(0)
    try:
        with PILImage.open(file) as img:
            if img.format not in ACCEPTED_FORMATS:
                raise UploadError("file", f"{img.format} images are not accepted (only JPEG, PNG and WebP)")
            width, height = img.size
            if width * height > max_pixels:
                raise UploadError("file", f"{width} x {height} pixels is more than the limit of "
                                          f"{max_pixels:,} pixels (a decompression bomb?)")
            clean = image_clean(img)  # decodes the whole stream: a truncated or corrupt file fails here
    except UploadError:
        raise
    except PILImage.DecompressionBombError as exc:
        raise UploadError("file", f"too many pixels (a decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise UploadError("file", "not an image (only JPEG, PNG and WebP are accepted)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # what Pillow raises for a damaged stream
        raise UploadError("file", f"the image cannot be read (truncated or damaged?): {exc}") from None
    file.seek(0)
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    return CheckedImage(digest.hexdigest(), clean)


def _slot_taken(prompt: Prompt, seed: int, index: int) -> UploadError:
    return UploadError("index", f"prompt {prompt.pk} already has an image at seed {seed}, index {index}",
                       status=409, code="conflict")


@dataclass(frozen=True)
class UploadResult:
    image: Image
    created: bool


def image_upload(*, dataset: Dataset, prompt_id: int, file, seed: int | None = None,
                 index: int | None = None) -> UploadResult:
    """Store an uploaded image of one of ``dataset``'s prompts as an imported Image.

    ``seed`` defaults to 0 and ``index`` to the prompt's next free index for that seed. The
    same file sent again to the same slot returns the image already there (created False);
    another file in a taken slot is refused (409). Nothing is written on any error."""
    prompt = Prompt.objects.filter(dataset=dataset, pk=prompt_id).first()
    if prompt is None:
        raise UploadError("prompt", f"{prompt_id} is not a prompt of dataset {dataset.name!r}")
    seed = 0 if seed is None else seed
    if not 0 <= seed <= MAX_SEED:
        raise UploadError("seed", f"must be a whole number from 0 to {MAX_SEED}")
    if index is not None and not 0 <= index <= MAX_INDEX:
        raise UploadError("index", f"must be a whole number from 0 to {MAX_INDEX}")
    checked = image_file_check(file)
    imported = Image.objects.filter(prompt=prompt, seed=seed, checkpoint__isnull=True)
    if index is None:
        last = imported.aggregate(last=Max("index"))["last"]
        index = 0 if last is None else last + 1
    else:
        taken = imported.filter(index=index).first()
        if taken is not None:
            # Rows stored before uploads were re-encoded hold the sent file's hash.
            if taken.sha256 in (checked.clean.sha256, checked.sent_sha256):
                return UploadResult(taken, created=False)
            raise _slot_taken(prompt, seed, index)
    clean = checked.clean
    name = default_storage.save(random_image_name(clean.extension), ContentFile(clean.content))
    try:
        with transaction.atomic():
            image = Image.objects.create(
                prompt=prompt, seed=seed, index=index, source_name=(file.name or "")[:255], file=name,
                sha256=clean.sha256, size_bytes=clean.size_bytes, width=clean.width, height=clean.height,
            )
    except IntegrityError:  # another upload took the slot meanwhile
        default_storage.delete(name)
        raise _slot_taken(prompt, seed, index) from None
    except BaseException:
        default_storage.delete(name)
        raise
    return UploadResult(image, created=True)
