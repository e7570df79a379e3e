"""Import of prompts from a CSV file: columns ``text`` (required), ``category`` and
``source_index`` (optional), UTF-8, a header line first.

The whole file is parsed and checked before anything is written, and errors name the file,
the line and the column. Writing is one transaction and creates only prompts that are not
there yet: a row matches a prompt of the dataset by ``source_index`` when it gives one, else
by its text, so importing the same file again adds nothing. A row without ``source_index``
gets the next free one, in file order.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction

from annotate.models import Dataset, Prompt

COLUMNS = ("text", "category", "source_index")
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
MAX_SOURCE_INDEX = 2**31 - 1  # PositiveIntegerField, on every database
CATEGORY_MAX_LENGTH = Prompt._meta.get_field("category").max_length
BATCH = 5000


def import_max_rows() -> int:
    return getattr(settings, "CALIBRA_PROMPT_IMPORT_MAX_ROWS", DEFAULT_MAX_ROWS)


def import_max_bytes() -> int:
    return getattr(settings, "CALIBRA_PROMPT_IMPORT_MAX_BYTES", DEFAULT_MAX_BYTES)


class PromptImportError(ValueError):
    """Bad input. The message names the file, and the line and column where there is one."""


class DatasetMissing(PromptImportError):
    """No dataset of the name given, and creating one was not allowed."""


@dataclass(frozen=True)
class PromptRow:
    line: int
    text: str
    category: str
    source_index: int | None


@dataclass(frozen=True)
class PromptImportResult:
    dataset: Dataset
    created: int
    existing: int
    dataset_created: bool = False


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PromptImportError(
            f"{name} line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


def _cell(name: str, line: int, column: str, value: str) -> str:
    if "\x00" in value:
        raise PromptImportError(f"{name} line {line}: {column} contains a NUL character")
    return value.strip()


def prompts_csv_parse(data: bytes, *, name: str, max_rows: int | None = None) -> list[PromptRow]:
    """The rows of a prompts CSV file, checked; PromptImportError on the first fault."""
    max_rows = import_max_rows() if max_rows is None else max_rows
    text = _decode(data, name)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[PromptRow] = []
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):  # blank lines first
            header = next(reader, None)
        if header is None:
            raise PromptImportError(f"{name}: empty file (the first line must name the columns: text, "
                                    "category, source_index)")
        line = reader.line_num
        header = [_cell(name, line, "the header", cell).lower() for cell in header]
        if "text" not in header:
            raise PromptImportError(f"{name} line {line}: no 'text' column in the header (the first line "
                                    f"must name the columns: {', '.join(COLUMNS)})")
        for position, column in enumerate(header):
            if column not in COLUMNS:
                raise PromptImportError(f"{name} line {line}: unknown column {column!r} (expected "
                                        f"{', '.join(COLUMNS)})")
            if header.index(column) != position:
                raise PromptImportError(f"{name} line {line}: column {column!r} appears twice")
        lines_by_index: dict[int, int] = {}
        lines_by_text: dict[str, int] = {}
        previous_end = reader.line_num
        for cells in reader:
            line, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) >= max_rows:
                raise PromptImportError(f"{name} line {line}: more than {max_rows:,} prompts; split the file")
            if len(cells) != len(header):
                raise PromptImportError(f"{name} line {line}: {len(cells)} fields, but the header names "
                                        f"{len(header)}")
            row = {column: _cell(name, line, column, cell) for column, cell in zip(header, cells)}
            if not row["text"]:
                raise PromptImportError(f"{name} line {line}: text is empty")
            category = row.get("category", "")
            if len(category) > CATEGORY_MAX_LENGTH:
                raise PromptImportError(f"{name} line {line}: category is longer than {CATEGORY_MAX_LENGTH} "
                                        "characters")
            source_index = None
            if row.get("source_index"):
                raw = row["source_index"]
                if not (raw.isascii() and raw.isdigit()):
                    raise PromptImportError(f"{name} line {line}: source_index {raw!r} is not a whole number")
                source_index = int(raw)
                if source_index > MAX_SOURCE_INDEX:
                    raise PromptImportError(f"{name} line {line}: source_index {raw} is more than "
                                            f"{MAX_SOURCE_INDEX}")
                if source_index in lines_by_index:
                    raise PromptImportError(f"{name} line {line}: source_index {source_index} repeats line "
                                            f"{lines_by_index[source_index]}")
                lines_by_index[source_index] = line
            elif row["text"] in lines_by_text:
                raise PromptImportError(f"{name} line {line}: text repeats line {lines_by_text[row['text']]} "
                                        "(give source_index to import the same text twice)")
            lines_by_text.setdefault(row["text"], line)
            rows.append(PromptRow(line, row["text"], category, source_index))
    except csv.Error as exc:
        raise PromptImportError(f"{name} line {reader.line_num}: {exc}") from None
    return rows


@transaction.atomic
def prompts_import(*, dataset: Dataset, rows: list[PromptRow], name: str) -> PromptImportResult:
    """Write the parsed rows into ``dataset``: only new prompts, all or nothing."""
    existing = list(Prompt.objects.select_for_update().filter(dataset=dataset))
    by_index = {p.source_index: p for p in existing}
    by_text = {}
    for prompt in sorted(existing, key=lambda p: p.source_index):
        by_text.setdefault(prompt.text, prompt)
    new: list[PromptRow] = []
    matched = 0
    for row in rows:
        known = by_index.get(row.source_index) if row.source_index is not None else by_text.get(row.text)
        if known is None:
            new.append(row)
            continue
        if known.text != row.text:
            raise PromptImportError(f"{name} line {row.line}: source_index {row.source_index} is "
                                    f"{known.text!r} in the database, not {row.text!r}")
        if known.category != row.category:
            raise PromptImportError(f"{name} line {row.line}: category {row.category!r} differs from "
                                    f"{known.category!r} in the database")
        matched += 1
    taken = set(by_index) | {row.source_index for row in rows if row.source_index is not None}
    next_index = max(taken, default=-1) + 1
    prompts = []
    for row in new:
        if row.source_index is None:
            if next_index > MAX_SOURCE_INDEX:
                raise PromptImportError(f"{name} line {row.line}: no source_index is left for this prompt")
            index, next_index = next_index, next_index + 1
        else:
            index = row.source_index
        prompts.append(Prompt(dataset=dataset, text=row.text, category=row.category, source_index=index))
    Prompt.objects.bulk_create(prompts, batch_size=BATCH)
    return PromptImportResult(dataset=dataset, created=len(prompts), existing=matched)


def prompts_csv_import(*, data: bytes, name: str, dataset: Dataset | None = None,
                       dataset_name: str | None = None, create: bool = True) -> PromptImportResult:
    """Parse and import a prompts CSV file into ``dataset``, or into the dataset called
    ``dataset_name`` (created, as a custom dataset, when there is none yet; refused when
    ``create`` is false). PromptImportError and nothing written on bad input, the new dataset
    included."""
    rows = prompts_csv_parse(data, name=name)
    try:
        with transaction.atomic():
            created = False
            if dataset is None:
                dataset_name = (dataset_name or "").strip()
                if not dataset_name or len(dataset_name) > Dataset._meta.get_field("name").max_length:
                    raise PromptImportError(f"dataset name {dataset_name!r} must be 1 to 200 characters")
                if create:
                    dataset, created = Dataset.objects.get_or_create(name=dataset_name)
                else:
                    dataset = Dataset.objects.filter(name=dataset_name).first()
                    if dataset is None:
                        raise DatasetMissing(f"there is no dataset named {dataset_name!r}, and creating "
                                             "one was not allowed")
            result = prompts_import(dataset=dataset, rows=rows, name=name)
    except IntegrityError:  # another import added prompts meanwhile
        raise PromptImportError(f"{name}: the dataset changed during the import; nothing was written, "
                                "run it again") from None
    return PromptImportResult(result.dataset, result.created, result.existing, dataset_created=created)
