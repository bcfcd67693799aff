"""The event codecs registered with Faust, so topics can declare them by name.

After :func:`register_codecs`, ``app.topic(..., value_serializer="eventide")``
yields :class:`~schemas.envelope.Envelope` values:

- ``eventide``: decodes Avro or JSON (told apart by the first byte: Faust
  hands codecs no headers), encodes JSON, the contract's default form;
- ``eventide-json`` / ``eventide-avro``: decode and encode one form only.

Faust wraps a codec's exception in its own ``ValueDecodeError``; agents that
need the error class (to dead-letter with it) or the ``content-type`` header
consume with ``value_serializer="raw"`` and call ``EventCodec.decode`` with
the record's headers instead.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from .codecs import EventCodec
from .envelope import Envelope

CODEC_NAMES = ("eventide", "eventide-json", "eventide-avro")


class FaustEventCodec(codecs.Codec):
    """A Faust codec over an :class:`EventCodec`; ``form`` is ``any``, ``json`` or ``avro``."""

    def __init__(self, children: Any = None, *, event_codec: EventCodec, form: str) -> None:
        if form not in ("any", "json", "avro"):
            raise ValueError(f"form must be any, json or avro, got {form!r}")
        super().__init__(children, event_codec=event_codec, form=form)
        self.event_codec = event_codec
        self.form = form

    def _loads(self, s: bytes) -> Any:
        if self.form == "avro":
            return self.event_codec.decode_avro(s)
        if self.form == "json":
            return self.event_codec.decode_json(s)
        return self.event_codec.decode(s)

    def _dumps(self, s: Any) -> bytes:
        if not isinstance(s, Envelope):
            raise TypeError(f"the {self.form} event codec encodes Envelope values, got {type(s)!r}")
        if self.form == "avro":
            return self.event_codec.encode_avro(s)
        return self.event_codec.encode_json(s)


def register_codecs(event_codec: EventCodec) -> None:
    """Register ``eventide``, ``eventide-json`` and ``eventide-avro`` with Faust."""
    for name, form in zip(CODEC_NAMES, ("any", "json", "avro"), strict=True):
        codecs.register(name, FaustEventCodec(event_codec=event_codec, form=form))
