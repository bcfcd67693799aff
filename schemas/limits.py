"""Limits against hostile input, applied before and while decoding.

The record size and the JSON nesting depth are checked on the raw bytes,
before any parser runs. String and array lengths are checked by the compiled
validators (:mod:`schemas.validate`) field by field, before a value reaches an
agent; an Avro record small enough that no string or array in it can break
them skips that walk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .exceptions import LimitExceededError


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds every decoded record must stay within."""

    max_record_bytes: int = 1_048_576
    """Largest record value accepted, in bytes (EVENTIDE_MAX_RECORD_BYTES)."""
    max_json_depth: int = 32
    """Deepest nesting of JSON arrays and objects (EVENTIDE_MAX_JSON_DEPTH)."""
    max_string_length: int = 65_536
    """Longest string, in characters, of any envelope or data field (EVENTIDE_MAX_STRING_LENGTH)."""
    max_array_length: int = 10_000
    """Most elements in any array of the data (EVENTIDE_MAX_ARRAY_LENGTH)."""

    def check_size(self, raw: bytes | bytearray | memoryview) -> None:
        """Raise :class:`LimitExceededError` when ``raw`` is larger than allowed."""
        if len(raw) > self.max_record_bytes:
            raise LimitExceededError(
                f"record is {len(raw)} bytes, more than the limit of {self.max_record_bytes} "
                "(EVENTIDE_MAX_RECORD_BYTES); it was not decoded"
            )

    def check_json_depth(self, raw: bytes) -> None:
        """Raise :class:`LimitExceededError` when JSON ``raw`` nests deeper than allowed.

        Cheap for ordinary events: when the record holds no more brackets than
        the limit, it cannot nest deeper, and no scan is needed.
        """
        limit = self.max_json_depth
        if raw.count(b"{") + raw.count(b"[") <= limit:
            return
        depth = json_depth(raw, stop_above=limit)
        if depth > limit:
            raise LimitExceededError(
                f"JSON nests deeper than {limit} levels (EVENTIDE_MAX_JSON_DEPTH); "
                "it was not decoded"
            )


# An escape pair (skipped wholesale, so \" does not end a string), a quote, or a bracket.
_STRUCTURE = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)


def json_depth(raw: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in JSON text, ignoring brackets in strings.

    Malformed text gets a number too (the parser rejects it afterwards); with
    ``stop_above`` the scan ends as soon as the depth exceeds it.
    """
    depth = deepest = 0
    in_string = False
    for match in _STRUCTURE.finditer(raw):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue
        elif token in (b"{", b"["):
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest
