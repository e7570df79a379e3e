"""Files stored before names said nothing (``generated/<checkpoint>/<prompt>_<seed>_<index>.jpg``,
``uploads/...``, ``tia2/<category>/...``, ``reports/<study>/...``) moved to opaque names.

One batch at a time: the new files are written, the rows that point at the old names (a
best-of-n image shares its file with the image it picked) are updated in one transaction,
and only after it commits are the old files deleted. New names are keyed hashes of the old
ones, so a run cut short and started again writes the same files, and a finished run finds
nothing left to do. Imported images are re-encoded on the way (their files may carry a
camera's or a generator's metadata); generated ones were encoded by the worker and move as
they are.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from annotate.media import IMAGE_NAME, REPORT_NAME, image_file_clean, keyed_image_name, keyed_report_name
from annotate.models import Image, Report

DEFAULT_BATCH = 500


@dataclass
class RenameResult:
    images: int = 0  # rows pointed at new names
    reports: int = 0
    missing: int = 0  # rows whose old file was not in storage (left as they are)


def _write(name: str, content: bytes) -> None:
    if default_storage.exists(name):  # an earlier run wrote it, then stopped before its rows
        default_storage.delete(name)
    default_storage.save(name, ContentFile(content))


def _image_move(old: str) -> dict | None:
    """Write ``old``'s file under its new name; the fields its rows get, or None when it is gone."""
    if not default_storage.exists(old):
        return None
    with default_storage.open(old, "rb") as fh:
        if Image.objects.filter(file=old, checkpoint__isnull=False).exists():
            content, extension, fields = fh.read(), "jpg", {}
        else:
            clean = image_file_clean(fh)
            content, extension, fields = clean.content, clean.extension, {
                "sha256": clean.sha256, "size_bytes": clean.size_bytes, "width": clean.width,
                "height": clean.height}
    new = keyed_image_name("renamed", old, extension=extension)
    _write(new, content)
    return {"file": new, **fields}


def _rows_update(rows, moved: dict[str, dict]) -> int:
    """Point the rows at their new files in one transaction; the old files go once it commits."""
    with transaction.atomic():
        updated = sum(rows.filter(file=old).update(**fields) for old, fields in moved.items())
        transaction.on_commit(lambda: [default_storage.delete(old) for old in moved])
    return updated


def media_rename(*, batch_size: int = DEFAULT_BATCH) -> RenameResult:
    """Move every image and report file with an old-style name; safe to run again."""
    result, after = RenameResult(), ""
    old_images = Image.objects.exclude(file="").exclude(file__regex=IMAGE_NAME.pattern)
    # By name, from where the last batch ended: a file that is gone is not asked for again.
    while names := list(old_images.filter(file__gt=after).order_by("file")
                        .values_list("file", flat=True).distinct()[:batch_size]):
        after = names[-1]
        moved = {old: fields for old in names if (fields := _image_move(old)) is not None}
        result.missing += old_images.filter(file__in=set(names) - set(moved)).count()
        result.images += _rows_update(Image.objects, moved)
    old_reports = Report.objects.exclude(file="").exclude(file__regex=REPORT_NAME.pattern)
    for old, fmt in old_reports.order_by("file").values_list("file", "format").distinct():
        if not default_storage.exists(old):
            result.missing += old_reports.filter(file=old).count()
            continue
        with default_storage.open(old, "rb") as fh:
            new = keyed_report_name("renamed", old, extension=fmt)
            _write(new, fh.read())
        result.reports += _rows_update(Report.objects, {old: {"file": new}})
    return result
