"""The one CSV writer for files people open in a spreadsheet (judgment exports, report CSV,
admin exports, the audit log), neutralising formula injection as OWASP recommends: a text cell
that starts with ``=``, ``+``, ``-``, ``@``, TAB or CR gets a leading ``'``, so Excel, LibreOffice
and Sheets show it as text instead of running it. Numbers (int, float, Decimal, or text a
program formatted from one: ``NumberText``) are written as they are, so ``-0.25`` stays a number."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class NumberText(str):
    """A number the program formatted itself (fixed digits); never user text, so never a formula."""


def number_text(value: float | int, spec: str) -> NumberText:
    return NumberText(format(value, spec))


def safe_cell(value: Any) -> Any:
    """The cell as a spreadsheet should read it: user text that would start a formula gets a ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not isinstance(value, NumberText):
        return "'" + value
    return value


class SafeWriter:
    """``csv.writer`` with every cell through ``safe_cell``. A row with a CR inside a text cell is
    written fully quoted: with a ``\\n`` line end the csv module leaves a bare CR unquoted, and
    readers (Excel included) take it for a new row, whose first cell could then be a formula."""

    def __init__(self, out, **options):
        self._out = out
        self._buffer = io.StringIO()
        self._plain = csv.writer(self._buffer, **options)
        self._quoted = csv.writer(self._buffer, **{**options, "quoting": csv.QUOTE_ALL})
        # What a written chunk shows if a cell starts a formula (the formula character first: the
        # regex engine then scans for it in C) or holds a CR the csv module left unquoted. A chunk
        # without either (nearly all of a large export) is written as it is, at csv.writer's speed.
        dialect = self._plain.dialect
        starts = re.escape("".join(FORMULA_STARTS))
        before, quote = f"[{re.escape(dialect.delimiter)}\\n]", re.escape(dialect.quotechar or "")
        self._formula = re.compile(f"[{starts}](?:(?<={before}.)|(?<={before}{quote}.))")
        self._bare_cr = "\r" not in dialect.lineterminator

    def writerow(self, row: Iterable[Any]) -> None:
        self.writerows([row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        self._plain.writerows(rows)
        text = "\n" + self._buffer.getvalue()  # the first cell starts a line too
        if self._formula.search(text) or (self._bare_cr and "\r" in text):
            take(self._buffer)
            for row in rows:
                cells = [safe_cell(cell) for cell in row]
                has_cr = any(isinstance(cell, str) and "\r" in cell for cell in cells)
                (self._quoted if has_cr else self._plain).writerow(cells)
        self._out.write(take(self._buffer))


def take(buffer: io.StringIO) -> str:
    """What the buffer holds, emptying it (a streamed response's next piece)."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def writer(out, **options) -> SafeWriter:
    return SafeWriter(out, **options)
