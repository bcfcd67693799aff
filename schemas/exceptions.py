"""Decode and validation errors of the event contracts.

Retrying never helps: the same bytes fail the same way, so every class here is
``retriable = False`` and such events are skipped (later: dead-lettered).
"""

from __future__ import annotations

from streams.exceptions import EventideError


class EventError(EventideError):
    """An event could not be used; the message says which part and why."""

    retriable = False


class DecodeError(EventError):
    """The bytes are not a well-formed envelope (not JSON, not an object)."""


class ValidationError(EventError):
    """The envelope or its data lacks a field or holds a value of the wrong type."""

    def __init__(self, path: str, expected: str, found: object) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(f"{path}: expected {expected}, got {_show(found)}")


def _show(value: object) -> str:
    if value is _MISSING:
        return "nothing (field missing)"
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 80 else text[:77] + "..."


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
MISSING: object = _MISSING
"""Sentinel passed as ``found`` when a required field is absent."""
