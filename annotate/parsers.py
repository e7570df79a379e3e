"""The API's one JSON parser: DRF's, refusing with a 400 what would otherwise become a 500
further on: nesting deeper than ``MAX_DEPTH`` (Python's decoder recurses, and so do the
serializers, ``deepcopy`` and the database's JSON encoding), NUL characters and lone UTF-16
surrogates in strings (PostgreSQL stores no NUL, and no response can encode a lone surrogate
that an error message echoes), and numbers too large for a float (``1e999``: no database
stores infinity in JSON).

The string checks cost one C-level scan of the body on the annotators' hot path: a body with no
more brackets than ``MAX_DEPTH`` cannot nest deeper, and one without the escapes ``\\u0000`` or
``\\ud800``-``\\udfff`` holds neither character (raw, neither is valid JSON text).
"""
from __future__ import annotations

import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

MAX_DEPTH = 32

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
# \u0000 or a surrogate as an escape, not as the text after an escaped backslash (\\u0000).
_BAD_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F])")
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_WHAT = {"\x00": "a NUL character (\\u0000)"}


def nesting_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest, those inside strings left out."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def bad_char_path(data, path: str = "") -> tuple[str, str] | None:
    """Where the first string (a key or a value) holding a NUL or a lone surrogate is, and the
    character: ``("a.0.b", "\\x00")``, or None."""
    if isinstance(data, str):
        found = _BAD_CHAR.search(data)
        return None if found is None else (path, found.group())
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and (found := _BAD_CHAR.search(key)):
            return here, found.group()
        found = bad_char_path(value, here)
        if found is not None:
            return found
    return None


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


class SafeJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if (text.count("[") + text.count("{") > MAX_DEPTH and nesting_depth(text) > MAX_DEPTH):
            raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels")
        try:
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None,
                              parse_float=_finite_float)
        except RecursionError:  # the scan above refuses such depths first; never a 500 all the same
            raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if "\\u" in text and _BAD_ESCAPE.search(text):
            found = bad_char_path(data)
            if found is not None:
                where, char = found[0].encode("ascii", "backslashreplace").decode(), found[1]
                what = _WHAT.get(char) or f"a lone surrogate (\\u{ord(char):04x})"
                raise ParseError(f"JSON string at {where or 'the top level'!r} holds {what}")
        return data
