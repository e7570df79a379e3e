"""The API's one JSON parser: DRF's, refusing with a 400 what would otherwise become a 500
further on: nesting deeper than ``MAX_DEPTH`` (Python's decoder recurses, and so do the
serializers, ``deepcopy`` and the database's JSON encoding) and NUL characters in strings
(PostgreSQL stores none, in text or in jsonb).

Both checks cost one C-level scan of the body on the annotators' hot path: a body with no more
brackets than ``MAX_DEPTH`` cannot nest deeper, and one without the text ``\\u0000`` holds no NUL
(a raw NUL byte is not valid JSON: the decoder refuses it).
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
# \u0000 as an escape, not as the text after an escaped backslash (\\u0000).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def nesting_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest, those inside strings left out."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def nul_path(data, path: str = "") -> str | None:
    """Where the first string (a key or a value) holding a NUL is: ``"a.0.b"``, or None."""
    if isinstance(data, str):
        return path if "\x00" in data else None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return here
        found = nul_path(value, here)
        if found is not None:
            return found
    return None


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
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:  # the scan above refuses such depths first; never a 500 all the same
            raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if "\\u0000" in text and _NUL_ESCAPE.search(text):
            where = nul_path(data)
            if where is not None:
                raise ParseError(f"JSON string at {where or 'the top level'!r} holds a NUL character (\\u0000)")
        return data
