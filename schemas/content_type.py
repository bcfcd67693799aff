"""Which form a record is in: Avro or JSON, by its ``content-type`` header or its first byte.

A record with a ``content-type`` header is in the form the header names (any
media type containing ``avro`` or ``json``); without one, a record starting
with the magic byte 0 of the Confluent wire format is Avro, anything else
JSON (a JSON text never starts with that byte).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .envelope import CONTENT_TYPE_JSON
from .exceptions import DecodeError

MAGIC = b"\x00"
"""First byte of every Avro record (Confluent wire format); a JSON text never starts with it."""
CONTENT_TYPE_AVRO = "application/avro"
"""``content-type`` header of Avro records; any media type containing ``avro`` is read as Avro."""
JSON, AVRO = "json", "avro"
"""The two forms (compared by identity on the hot path)."""

Headers = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
"""Kafka headers: aiokafka's ``[(key, value), ...]`` or a mapping; values bytes or str."""

_FORMS: dict[bytes | str, str] = {}
"""Header values already classified (a few distinct ones in practice)."""


def classify(content_type: str) -> str:
    """:data:`AVRO` or :data:`JSON` for a media type; :class:`DecodeError` for any other."""
    media = content_type.split(";", 1)[0].strip().lower()
    if "avro" in media:
        return AVRO
    if "json" in media:
        return JSON
    raise DecodeError(
        f'content-type "{content_type[:100]}" is neither JSON nor Avro '
        f"(expected {CONTENT_TYPE_JSON} or {CONTENT_TYPE_AVRO})"
    )


def form_of(headers: Headers) -> str | None:
    """JSON or Avro as the ``content-type`` header says; None without the header."""
    if not headers:
        return None
    pairs: Any = headers
    kind = type(pairs)
    if kind is not list and kind is not tuple:  # both Kafka clients give a list
        pairs = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    for key, value in pairs:
        if key == "content-type":
            form = _FORMS.get(value) if type(value) is bytes or type(value) is str else None
            return form if form is not None else _remember_form(value)
    # Header names are case-sensitive in Kafka; accept other spellings, more slowly.
    for key, value in pairs:
        name = key.decode("latin-1") if isinstance(key, bytes | bytearray) else str(key)
        if name.lower() == "content-type":
            return _remember_form(value)
    return None


def _remember_form(value: Any) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    form = classify(text)
    if len(_FORMS) < 64 and isinstance(value, bytes | str):
        _FORMS[value] = form
    return form
