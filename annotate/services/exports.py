"""Streaming judgment exports (CSV and JSON Lines) with constant memory.

One generator, ``judgments_export_chunks``, serves the API (a ``StreamingHttpResponse``), the
``export_judgments`` command and the benchmark. It reads the study's judgments as plain tuples
(``values_list(...).iterator(chunk_size=...)``: a server-side cursor on PostgreSQL, chunked
``fetchmany`` on SQLite), formats one chunk at a time into a small buffer and yields it as a
string, so memory does not grow with the number of rows.

It lives in ``services`` rather than ``selectors`` because it is more than a read: it turns rows
into a file format (CSV / JSON Lines), which the API, the command and reports share; the
selectors hand out querysets and small payloads.

The columns are those of the paginated JSON export (``apis.JudgmentExportOutput``), in the same
order and with the same values: ``answer`` in the item's own terms, ``created_at`` in ISO 8601
with ``Z`` for UTC. CSV writes booleans as ``true`` / ``false`` and nulls as empty cells.
A text cell that would start a spreadsheet formula gets a leading ``'`` (``annotate.csv_safe``).
Rows come in judgment id order.
"""
from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from contextlib import nullcontext

from django.db import connections, router, transaction
from django.utils import timezone

from annotate import csv_safe
from annotate.models import Judgment, Study
from annotate.services.annotation import answer_in_item_terms

FORMATS = ("csv", "jsonl")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
CHUNK_SIZE = 2000

COLUMNS = ["id", "item", "prompt", "image_a", "image_b", "checkpoint_a", "checkpoint_b", "annotator", "choice",
           "answer", "score", "reason", "a_on_left", "time_spent_ms", "is_gold", "gold_correct", "is_flagged",
           "created_at"]
# What is read per row, in this order; ``answer`` is computed from choice, score and a_on_left.
_FIELDS = ["id", "item__public_id", "item__prompt__text", "item__image_a_id", "item__image_b_id",
           "item__image_a__checkpoint__name", "item__image_b__checkpoint__name", "annotator__username",
           "choice", "score", "reason", "a_on_left", "time_spent_ms", "item__is_gold", "gold_correct",
           "is_flagged", "created_at"]


class ExportError(ValueError):
    """The export cannot be made as asked; the message says why."""


def study_find(key: str) -> Study:
    """A study by public id, numeric id or exact name (for the commands)."""
    import uuid

    try:
        return Study.objects.get(public_id=uuid.UUID(str(key)))
    except (ValueError, Study.DoesNotExist):
        pass
    if str(key).isdigit() and (study := Study.objects.filter(pk=int(key)).first()):
        return study
    found = list(Study.objects.filter(name=key)[:2])
    if len(found) == 1:
        return found[0]
    if found:
        raise ExportError(f"several studies are named {key!r}: give its public id")
    raise ExportError(f"study {key!r} not found: no study has that public id, id or name")


def judgment_rows(*, study: Study):
    """The study's judgments as tuples of ``_FIELDS``, in id order (a lazy queryset)."""
    return (Judgment.objects.filter(item__study=study).order_by("pk").values_list(*_FIELDS))


def _iso(value: dt.datetime | None, tz) -> str | None:
    """As DRF's DateTimeField writes it: in the current time zone, ``Z`` for UTC."""
    if value is None:
        return None
    if value.tzinfo is not None and value.tzinfo is not tz:
        value = value.astimezone(tz)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _same(value):
    return value


_CSV_BOOL = {True: "true", False: "false", None: None}.get


def _record(row: tuple, tz, boolean=_same) -> list:
    (pk, item, prompt, image_a, image_b, ckpt_a, ckpt_b, annotator, choice, score, reason, a_on_left,
     time_spent_ms, is_gold, gold_correct, is_flagged, created_at) = row
    return [pk, str(item), prompt, image_a, image_b, ckpt_a, ckpt_b, annotator, choice,
            answer_in_item_terms(choice, score, a_on_left), score, reason, boolean(a_on_left), time_spent_ms,
            boolean(is_gold), boolean(gold_correct), boolean(is_flagged), _iso(created_at, tz)]


def _chunks(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def judgment_record_chunks(*, study: Study, fmt: str, chunk_size: int | None = None) -> Iterator[list[list]]:
    """The export's rows (``COLUMNS``, booleans as ``fmt`` writes them), ``chunk_size`` at a time.

    On PostgreSQL the rows are read in a transaction, so that the named cursor streams
    (outside one Django declares it WITH HOLD, and PostgreSQL materialises the whole result
    before the first row). On SQLite no transaction is opened: it would take the write lock.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: {' or '.join(FORMATS)}")
    size = chunk_size or CHUNK_SIZE
    tz = timezone.get_current_timezone()
    boolean = _CSV_BOOL if fmt == "csv" else _same
    alias = router.db_for_read(Judgment)
    streams = connections[alias].vendor == "postgresql"
    with transaction.atomic(using=alias) if streams else nullcontext():
        rows = judgment_rows(study=study).using(alias).iterator(chunk_size=size)
        for chunk in _chunks(rows, size):
            yield [_record(row, tz, boolean) for row in chunk]


def judgments_export_chunks(*, study: Study, fmt: str, chunk_size: int | None = None) -> Iterator[str]:
    """The export as text pieces: the CSV header first, then one piece per ``chunk_size`` rows."""
    records = judgment_record_chunks(study=study, fmt=fmt, chunk_size=chunk_size)
    buffer = io.StringIO()
    writer = csv_safe.writer(buffer, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(COLUMNS)
        yield csv_safe.take(buffer)
    for chunk in records:
        if fmt == "csv":
            writer.writerows(chunk)
        else:
            dumps = json.dumps
            buffer.write("".join(dumps(dict(zip(COLUMNS, record)), ensure_ascii=False) + "\n"
                                 for record in chunk))
        yield csv_safe.take(buffer)


def export_filename(*, study: Study, fmt: str) -> str:
    return f"study-{study.public_id}-judgments.{fmt}"
