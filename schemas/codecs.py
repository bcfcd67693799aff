"""Event codecs: Avro (Confluent wire format) and JSON, both to one :class:`Envelope`.

:meth:`EventCodec.decode` is the entry point for a consumed record::

    codec = EventCodec(limits=settings.limits)   # once; compiles every schema
    envelope = codec.decode(record.value, record.headers)

It applies the limits (:mod:`schemas.limits`) first, picks the form from the
``content-type`` header (anything with ``avro`` or ``json`` in it), or, without
one, from the first byte (0 is the Avro magic byte, JSON never starts with it),
then decodes and validates the data against the event's schema. Either form
yields the same :class:`Envelope`: ``data`` is a dict in the shape of the
newest schema of the event (defaults filled in, older majors upcast), and
``version`` is the version of that shape (the producer's own version when it
is the newest).

Encoding is the one way every producer writes an event (the command API's
outbox, the relay's headers, :class:`~streams.produce.EventPublisher`, the
operator tools): :meth:`EventCodec.encode` writes JSON, or Avro when asked,
after checking the envelope and the data against the schema of the event's
name and version; an event without one raises
:class:`~schemas.exceptions.EncodeError`.

Every failure is a :class:`~schemas.exceptions.EventError` subclass; no
library exception escapes. The parts: :mod:`schemas.content_type` (which
form), :mod:`schemas.read_plans` (validators and the way to the newest
shape), :mod:`schemas.avro_reader` (compiled Avro decoders),
:mod:`schemas.validate` (compiled validators).
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import orjson
from fastavro import schemaless_reader, schemaless_writer

from .avro_reader import MalformedAvro, read_value
from .checks import Check, Invalid, run
from .content_type import AVRO, CONTENT_TYPE_AVRO, JSON, MAGIC, Headers, classify, form_of
from .envelope import (
    CONTENT_TYPE_JSON,
    Envelope,
    build_envelope,
    check_envelope,
    check_strings,
    checked_envelope,
)
from .exceptions import MISSING, DecodeError, EncodeError, UnknownSchemaError, ValidationError
from .limits import Limits
from .read_plans import PLAN_CACHE_LIMIT, ReadPlans, upcast
from .registry import Registry, SchemaEntry, parse_version

__all__ = [
    "CONTENT_TYPE_AVRO",
    "CONTENT_TYPE_JSON",
    "MAGIC",
    "EventCodec",
    "Headers",
    "decode_event",
    "default_codec",
]

fromisoformat = datetime.fromisoformat


class EventCodec:
    """Decodes and encodes events of one registry under one set of limits.

    Build it once per process: the constructor compiles a validator for every
    schema in the registry (JSON and Avro paths share them).
    """

    def __init__(
        self, registry: Registry | None = None, limits: Limits | None = None, memo: bool = False
    ) -> None:
        self.registry = registry if registry is not None else Registry.load()
        """The schemas and their ids (checked when loaded)."""
        self.limits = limits if limits is not None else Limits()
        """Size, depth and length limits applied to every record."""
        self._memo: dict[int, tuple[Any, Envelope]] | None = {} if memo else None
        """``memo``: the last values decoded, by identity, for records that feed
        several projections (each decodes them); None when nothing is shared."""
        lim = self.limits
        self._max_bytes = lim.max_record_bytes
        self._max_depth = lim.max_json_depth
        self._max_string = lim.max_string_length
        self._plans = ReadPlans(self.registry, lim)
        # An Avro record no larger than this cannot hold a too-long string or array:
        # every character takes at least one byte, and so does every array element
        # (the registry refuses arrays of elements that take none).
        self._avro_trusted_size = min(lim.max_string_length, lim.max_array_length)
        self._json_plans = self._plans.json
        self._avro_plans = self._plans.avro
        self._writers: dict[tuple[str, str], tuple[SchemaEntry, Check]] = {}
        """(name, version) of an event to encode → its schema and strict validator."""

    # -- decoding --------------------------------------------------------------------------

    def decode(
        self, value: bytes | bytearray | memoryview | None, headers: Headers = None
    ) -> Envelope:
        """Decode one record value, Avro or JSON, into a validated :class:`Envelope`.

        With ``memo``, a record that feeds several projections is decoded once:
        the last values decoded are remembered by identity (Envelopes are
        immutable).
        """
        remembered = self._memo
        if remembered is None:
            return self._decode(value, headers)
        key = id(value)  # the same value object comes with the same headers
        memo = remembered.get(key)
        if memo is not None and memo[0] is value:
            return memo[1]
        event = self._decode(value, headers)
        if len(remembered) >= 50_000:
            remembered.clear()
        remembered[key] = (value, event)
        return event

    def forget(self) -> None:
        """Drop the remembered decodes (a benchmark measuring real decoding calls it)."""
        if self._memo is not None:
            self._memo.clear()

    def _decode(self, value: bytes | bytearray | memoryview | None, headers: Headers) -> Envelope:
        """:meth:`decode` without the memo: the form from the headers or the first byte."""
        if value is None:
            raise DecodeError("empty record: the value is null (a tombstone), expected an event")
        form = form_of(headers)
        if form is None:
            form = AVRO if value[:1] == MAGIC else JSON
        elif form is AVRO and value[:1] != MAGIC:
            raise DecodeError(
                "content-type says Avro but the value does not start with the magic byte 0 "
                f"of the Confluent wire format (it starts with {bytes(value[:8])!r})"
            )
        if form is AVRO:
            return self.decode_avro(value)
        return self.decode_json(value)

    def decode_json(self, value: bytes | bytearray | memoryview) -> Envelope:
        """Decode and validate the JSON form of an event."""
        if len(value) > self._max_bytes:
            self.limits.check_size(value)
        raw = value if type(value) is bytes else bytes(value)
        if raw.count(b"{") + raw.count(b"[") > self._max_depth:
            self.limits.check_json_depth(raw)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            hint = (
                " (it starts with the Avro magic byte 0: is its content-type header wrong?)"
                if raw[:1] == MAGIC
                else ""
            )
            raise DecodeError(f"value is not valid JSON: {exc}{hint}") from exc
        if type(doc) is not dict:
            raise ValidationError("$", "a JSON object (the envelope)", doc)
        name = doc.get("name", MISSING)
        version = doc.get("version", MISSING)
        if type(name) is not str or type(version) is not str or not name or not version:
            check_strings(doc, self._max_string)  # raises, naming the field
        plan = self._json_plans.get((name, version)) or self._plans.for_json(name, version)
        try:
            data = plan.check(doc.get("data", MISSING))
        except Invalid as exc:
            raise ValidationError(exc.path("data"), exc.expected, exc.found) from None
        for step in plan.steps:
            data = upcast(step, data)
        return checked_envelope(doc, plan.version or version, data, self._max_string)

    def decode_avro(self, value: bytes | bytearray | memoryview) -> Envelope:
        """Decode and validate the Avro form (magic byte, 4-byte schema id, Avro binary).

        Kept in one piece (about 75 lines): it runs for every Avro record, and
        the small-record path at its end, which skips the envelope's checks that
        Avro and the limits already guarantee, would pay a call per record more
        if split off.
        """
        if len(value) > self._max_bytes:
            self.limits.check_size(value)
        if len(value) < 5 or value[:1] != MAGIC:
            raise DecodeError(
                "value is not in the Confluent Avro wire format: expected the magic byte 0 and a "
                f"4-byte schema id, got {bytes(value[:8])!r}"
            )
        schema_id = int.from_bytes(value[1:5], "big")
        cached = self._avro_plans.get(schema_id)
        writer, plan = cached if cached is not None else self._plans.for_avro(schema_id)
        read = plan.read
        if read is not None:
            raw = value if type(value) is bytes else bytes(value)
            try:
                doc, end = read_value(read, raw, 5)
            except MalformedAvro as exc:
                raise DecodeError(f"value is not a valid Avro record of {writer}: {exc}") from exc
        else:
            doc, end = _fastavro_read(value, writer, plan.reader)
        if end != len(value):
            raise DecodeError(
                f"{len(value) - end} bytes left after the Avro record of {writer}: "
                "the data does not match its schema id"
            )
        if not isinstance(doc, dict):  # pragma: no cover - the wire schema is a record
            raise DecodeError(f"Avro record of {writer} did not decode to a record")
        name, version = doc["name"], doc["version"]
        if name != writer.name:
            raise ValidationError(
                "name", f'"{writer.name}", the event of schema id {schema_id}', name
            )
        if version != plan.written and parse_version(version) != (writer.major, writer.minor):
            raise ValidationError(
                "version", f"{writer.version}.x, the version of schema id {schema_id}", version
            )
        data = doc["data"]
        small = len(value) <= self._avro_trusted_size
        if not small:
            data = run(plan.check, data, "data")
        elif plan.finite is not None:  # NaN, infinities and the fields' constraints
            try:
                plan.finite(data)
            except Invalid as exc:
                raise ValidationError(exc.path("data"), exc.expected, exc.found) from None
        for step in plan.steps:
            data = upcast(step, data)
        version = plan.version or version
        event_id, timestamp, source = doc["id"], doc["timestamp"], doc["source"]
        if not (small and event_id and source and len(timestamp) <= 64):
            return checked_envelope(doc, version, data, self._max_string)
        # A small record of a known schema: its strings are strings, none too long.
        try:
            fromisoformat(timestamp)
        except ValueError:
            return checked_envelope(doc, version, data, self._max_string)  # raises
        return build_envelope(
            event_id,
            name,
            timestamp,
            version,
            source,
            doc["correlationId"],
            doc["causationId"],
            data,
        )

    # -- encoding --------------------------------------------------------------------------

    def encode(self, event: Envelope, content_type: str = CONTENT_TYPE_JSON) -> bytes:
        """Encode ``event`` in the form ``content_type`` names (JSON or Avro)."""
        form = classify(content_type)
        return self.encode_avro(event) if form is AVRO else self.encode_json(event)

    def encode_json(self, event: Envelope) -> bytes:
        """The JSON form of ``event``, after checking it against its schema."""
        doc = event.to_dict()
        self._check_for_encoding(event, doc)
        try:
            raw = orjson.dumps(doc)
        except TypeError as exc:  # pragma: no cover - the validator admits JSON types only
            raise EncodeError(f"{event.name} {event.id}: {exc}") from exc
        return self._check_encoded_size(event, raw)

    def encode_avro(self, event: Envelope) -> bytes:
        """The Avro wire form of ``event``: magic byte, schema id, Avro binary."""
        doc = event.to_dict()
        entry = self._check_for_encoding(event, doc)
        fo = io.BytesIO()
        fo.write(MAGIC + entry.id.to_bytes(4, "big"))
        try:
            schemaless_writer(fo, entry.parsed, doc)
        except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover - validated
            raise EncodeError(f"{event.name} {event.id} does not fit {entry}: {exc}") from exc
        return self._check_encoded_size(event, fo.getvalue())

    def headers(
        self, event: Envelope, content_type: str = CONTENT_TYPE_JSON
    ) -> list[tuple[str, bytes]]:
        """The contract's Kafka headers for ``event`` sent as ``content_type``."""
        return [
            (k, content_type.encode() if k == "content-type" else v) for k, v in event.headers()
        ]

    def _check_for_encoding(self, event: Envelope, doc: dict[str, Any]) -> SchemaEntry:
        """The schema of ``event``, after checking the envelope and the data against it.

        Raises :class:`EncodeError` when its name and version have no schema.
        """
        writer = self._writers.get((event.name, event.version))
        if writer is None:
            writer = self._writer(doc)
        entry, check = writer
        check_envelope(event, doc, self._max_string)
        run(check, event.data, "data")
        return entry

    def _writer(self, doc: dict[str, Any]) -> tuple[SchemaEntry, Check]:
        """The schema and strict validator of the event ``doc``; :class:`EncodeError` if none."""
        check_strings(doc, self._max_string)
        name, version = doc["name"], doc["version"]
        try:
            entry = self.registry.get(name, version)
        except UnknownSchemaError as exc:
            raise EncodeError(f"cannot encode {name} {doc['id']}: {exc}") from None
        writer = (entry, self._plans.strict[entry.id])
        if len(self._writers) < PLAN_CACHE_LIMIT:
            self._writers[(name, version)] = writer
        return writer

    def _check_encoded_size(self, event: Envelope, raw: bytes) -> bytes:
        if len(raw) > self._max_bytes:
            raise EncodeError(
                f"{event.name} {event.id} encodes to {len(raw)} bytes, more than "
                f"{self._max_bytes} (EVENTIDE_MAX_RECORD_BYTES): consumers would reject it"
            )
        return raw


def _fastavro_read(
    value: bytes | bytearray | memoryview, writer: SchemaEntry, reader: SchemaEntry
) -> tuple[Any, int]:
    """The record decoded by fastavro (pairs :mod:`schemas.avro_reader` does not compile)."""
    fo = io.BytesIO(value)
    fo.seek(5)
    try:
        doc = schemaless_reader(fo, writer.parsed, None if reader is writer else reader.parsed)
    except Exception as exc:  # fastavro raises many kinds on malformed input
        raise DecodeError(
            f"value is not a valid Avro record of {writer}: {type(exc).__name__}: {exc}"
        ) from exc
    return doc, fo.tell()


_default_codec: EventCodec | None = None


def default_codec() -> EventCodec:
    """A process-wide codec over the committed registry with default limits."""
    global _default_codec
    if _default_codec is None:
        _default_codec = EventCodec()
    return _default_codec


def decode_event(value: bytes | bytearray | memoryview | None, headers: Headers = None) -> Envelope:
    """Decode one record with :func:`default_codec` (limits, content type, schema validation).

    Workers should build their own ``EventCodec(limits=settings.limits)`` to apply
    the configured limits; this is the same with the default limits.
    """
    return default_codec().decode(value, headers)
