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

Every failure is a :class:`~schemas.exceptions.EventError` subclass; no
library exception escapes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from fastavro import schemaless_reader, schemaless_writer

from .avro_reader import MalformedAvro, Read, Unsupported, compile_reader, read_value
from .checks import Check, Invalid, run
from .envelope import CONTENT_TYPE_JSON, Envelope, build_envelope
from .exceptions import (
    MISSING,
    DecodeError,
    EncodeError,
    EventError,
    UnknownSchemaError,
    UnsupportedVersionError,
    ValidationError,
)
from .finite import compile_finite_check
from .limits import Limits
from .registry import Registry, SchemaEntry, parse_version
from .upcasters import Upcaster
from .validate import compile_validator

MAGIC = b"\x00"
"""First byte of every Avro record (Confluent wire format); a JSON text never starts with it."""
CONTENT_TYPE_AVRO = "application/avro"
"""``content-type`` header of Avro records; any media type containing ``avro`` is read as Avro."""

Headers = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
"""Kafka headers: aiokafka's ``[(key, value), ...]`` or a mapping; values bytes or str."""

logger = logging.getLogger(__name__)

_PLAN_CACHE_LIMIT = 4096
fromisoformat = datetime.fromisoformat
_JSON, _AVRO = "json", "avro"


@dataclass(frozen=True, slots=True)
class _Step:
    """One upcast: the function and the validator of the shape it must produce."""

    upcast: Upcaster
    check: Check
    target: SchemaEntry


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """How to bring the data of one (event, version) into the newest shape."""

    reader: SchemaEntry
    """The newest minor of the event's major: the shape data is validated into."""
    check: Check
    """Normalizing validator of :attr:`reader`'s payload."""
    finite: Check | None
    """For Avro: the NaN/infinity check, when the payload has doubles."""
    steps: tuple[_Step, ...]
    """Upcasts to the newest major, in order."""
    version: str | None
    """The envelope's version after decoding; None to keep the producer's."""
    written: str = ""
    """For Avro: ``major.minor.0`` of the writer schema, the version most records carry."""
    read: Read | None = None
    """For Avro: the compiled decoder of writer to :attr:`reader`; None to use fastavro."""


class EventCodec:
    """Decodes and encodes events of one registry under one set of limits.

    Build it once per process: the constructor compiles a validator for every
    schema in the registry (JSON and Avro paths share them).
    """

    def __init__(self, registry: Registry | None = None, limits: Limits | None = None) -> None:
        self.registry = registry if registry is not None else Registry.load()
        """The schemas and their ids (checked when loaded)."""
        self.limits = limits if limits is not None else Limits()
        """Size, depth and length limits applied to every record."""
        self._memo: dict[int, tuple[Any, Envelope]] = {}
        lim = self.limits
        self._max_bytes = lim.max_record_bytes
        self._max_depth = lim.max_json_depth
        self._max_string = lim.max_string_length
        self._strict: dict[int, Check] = {}
        self._normalize: dict[int, Check] = {}
        self._lenient: dict[int, Check] = {}
        for entry in self.registry:
            for table, normalize, drop in (
                (self._strict, False, False),
                (self._normalize, True, False),
                (self._lenient, True, True),
            ):
                table[entry.id] = compile_validator(
                    entry.payload,
                    max_string_length=lim.max_string_length,
                    max_array_length=lim.max_array_length,
                    normalize=normalize,
                    drop_unknown=drop,
                )
        # An Avro record no larger than this cannot hold a too-long string or array:
        # every character takes at least one byte, and so does every array element
        # (the registry refuses arrays of elements that take none).
        self._avro_trusted_size = min(lim.max_string_length, lim.max_array_length)
        self._json_plans: dict[tuple[str, str], _ReadPlan] = {}
        self._avro_plans: dict[int, tuple[SchemaEntry, _ReadPlan]] = {}

    # -- decoding --------------------------------------------------------------------------

    def decode(
        self, value: bytes | bytearray | memoryview | None, headers: Headers = None
    ) -> Envelope:
        """Decode one record value, Avro or JSON, into a validated :class:`Envelope`.

        A record that feeds several projections is decoded once: the last
        values decoded are remembered by identity (Envelopes are immutable).
        """
        key = id(value)  # the same value object comes with the same headers
        memo = self._memo.get(key)
        if memo is not None and memo[0] is value:
            return memo[1]
        event = self._decode(value, headers)
        if len(self._memo) >= 50_000:
            self._memo.clear()
        self._memo[key] = (value, event)
        return event

    def forget(self) -> None:
        """Drop the remembered decodes (a benchmark measuring real decoding calls it)."""
        self._memo.clear()

    def _decode(self, value: bytes | bytearray | memoryview | None, headers: Headers) -> Envelope:
        if value is None:
            raise DecodeError("empty record: the value is null (a tombstone), expected an event")
        form = _form_of(headers)
        if form is None:
            form = _AVRO if value[:1] == MAGIC else _JSON
        elif form is _AVRO and value[:1] != MAGIC:
            raise DecodeError(
                "content-type says Avro but the value does not start with the magic byte 0 "
                f"of the Confluent wire format (it starts with {bytes(value[:8])!r})"
            )
        if form is _AVRO:
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
            self._check_strings(doc)  # raises, naming the field
        plan = self._json_plans.get((name, version)) or self._json_plan(name, version)
        try:
            data = plan.check(doc.get("data", MISSING))
        except Invalid as exc:
            raise ValidationError(exc.path("data"), exc.expected, exc.found) from None
        for step in plan.steps:
            data = self._upcast(step, data)
        return self._envelope(doc, plan.version or version, data)

    def decode_avro(self, value: bytes | bytearray | memoryview) -> Envelope:
        """Decode and validate the Avro form (magic byte, 4-byte schema id, Avro binary)."""
        if len(value) > self._max_bytes:
            self.limits.check_size(value)
        if len(value) < 5 or value[:1] != MAGIC:
            raise DecodeError(
                "value is not in the Confluent Avro wire format: expected the magic byte 0 and a "
                f"4-byte schema id, got {bytes(value[:8])!r}"
            )
        schema_id = int.from_bytes(value[1:5], "big")
        cached = self._avro_plans.get(schema_id)
        writer, plan = cached if cached is not None else self._avro_plan(schema_id)
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
        elif plan.finite is not None:
            run(plan.finite, data, "data")
        for step in plan.steps:
            data = self._upcast(step, data)
        version = plan.version or version
        event_id, timestamp, source = doc["id"], doc["timestamp"], doc["source"]
        if not (small and event_id and source and len(timestamp) <= 64):
            return self._envelope(doc, version, data)
        # A small record of a known schema: its strings are strings, none too long.
        try:
            fromisoformat(timestamp)
        except ValueError:
            return self._envelope(doc, version, data)  # raises, naming the timestamp
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
        form = _classify(content_type)
        return self.encode_avro(event) if form is _AVRO else self.encode_json(event)

    def encode_json(self, event: Envelope) -> bytes:
        """The JSON form of ``event``, after checking it against its schema."""
        self._check_for_encoding(event)
        try:
            raw = orjson.dumps(event.to_dict())
        except TypeError as exc:  # pragma: no cover - the validator admits JSON types only
            raise EncodeError(f"{event.name} {event.id}: {exc}") from exc
        return self._check_encoded_size(event, raw)

    def encode_avro(self, event: Envelope) -> bytes:
        """The Avro wire form of ``event``: magic byte, schema id, Avro binary."""
        entry = self._check_for_encoding(event)
        fo = io.BytesIO()
        fo.write(MAGIC + entry.id.to_bytes(4, "big"))
        try:
            schemaless_writer(fo, entry.parsed, event.to_dict())
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

    # -- internals -------------------------------------------------------------------------

    def _check_for_encoding(self, event: Envelope) -> SchemaEntry:
        doc = event.to_dict()
        self._check_strings(doc)
        try:
            entry = self.registry.get(event.name, event.version)
        except UnknownSchemaError as exc:
            raise EncodeError(f"cannot encode {event.name} {event.id}: {exc}") from None
        self._envelope(doc, event.version, event.data)  # checks the other envelope fields
        run(self._strict[entry.id], event.data, "data")
        return entry

    def _check_encoded_size(self, event: Envelope, raw: bytes) -> bytes:
        if len(raw) > self.limits.max_record_bytes:
            raise EncodeError(
                f"{event.name} {event.id} encodes to {len(raw)} bytes, more than "
                f"{self.limits.max_record_bytes} (EVENTIDE_MAX_RECORD_BYTES): "
                "consumers would reject it"
            )
        return raw

    def _upcast(self, step: _Step, data: dict[str, Any]) -> dict[str, Any]:
        try:
            upcast = step.upcast(data)
        except EventError:
            raise
        except Exception as exc:
            raise UnsupportedVersionError(
                f"upcaster to {step.target} failed: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            checked: dict[str, Any] = run(step.check, upcast, "data")
            return checked
        except ValidationError as exc:
            raise ValidationError(
                f"{exc.path} (after upcasting to {step.target.version})", exc.expected, exc.found
            ) from None

    def _json_plan(self, name: str, version: str) -> _ReadPlan:
        parsed = parse_version(version)
        if parsed is None:
            raise ValidationError("version", "a semantic version such as 1.0.0", version[:80])
        major, minor = parsed
        reader = self._reader(name, version, major)
        exact = reader.minor == minor
        table = self._lenient if minor > reader.minor else self._normalize
        plan = self._plan(reader, table[reader.id], keep_version=exact)
        if len(self._json_plans) < _PLAN_CACHE_LIMIT:
            self._json_plans[(name, version)] = plan
        return plan

    def _avro_plan(self, schema_id: int) -> tuple[SchemaEntry, _ReadPlan]:
        writer = self.registry.by_id(schema_id)
        reader = self._reader(writer.name, writer.version, writer.major)
        plan = self._plan(reader, self._normalize[reader.id], keep_version=reader is writer)
        try:
            read: Read | None = compile_reader(
                writer.wire, None if reader is writer else reader.wire
            )
        except Unsupported as exc:
            logger.info("%s read as %s with fastavro: %s", writer, reader, exc)
            read = None
        plan = replace(plan, written=f"{writer.version}.0", read=read)
        self._avro_plans[schema_id] = (writer, plan)
        return writer, plan

    def _reader(self, name: str, version: str, major: int) -> SchemaEntry:
        versions = self.registry.versions(name)
        if not versions:
            raise UnknownSchemaError(
                f"name: no schema for event {name[:80]!r} in the registry (schemas/registry.json)"
            )
        reader = self.registry.latest(name, major)
        if reader is None:
            newest = versions[-1]
            if major > newest.major:
                raise UnsupportedVersionError(
                    f"{name} {version}: no reader for major version {major}; this worker reads "
                    f"{name} up to {newest.version}: deploy the newer schemas"
                )
            raise UnsupportedVersionError(
                f"{name} {version}: major version {major} is not in the registry "
                f"(known: {', '.join(v.version for v in versions)})"
            )
        return reader

    def _plan(self, reader: SchemaEntry, check: Check, keep_version: bool) -> _ReadPlan:
        steps: list[_Step] = []
        current = reader
        newest = self.registry.latest(reader.name)
        assert newest is not None
        while current.major < newest.major:
            upcast = self.registry.upcasters.get((current.name, current.major))
            target = self.registry.latest(current.name, current.major + 1)
            if upcast is None or target is None:
                raise UnsupportedVersionError(
                    f"{current.name} {current.major}.x cannot be read: no upcaster to "
                    f"{current.major + 1}.x in schemas/upcasters.py"
                )
            steps.append(_Step(upcast, self._normalize[target.id], target))
            current = target
        final = current
        return _ReadPlan(
            reader=reader,
            check=check,
            finite=compile_finite_check(reader.payload),
            steps=tuple(steps),
            version=None if keep_version and not steps else f"{final.major}.{final.minor}.0",
        )

    def _check_strings(self, doc: Mapping[str, Any]) -> None:
        max_string = self.limits.max_string_length
        for key in ("name", "version", "id", "source", "timestamp"):
            value = doc.get(key, MISSING)
            if type(value) is not str or not value:
                raise ValidationError(key, "a non-empty string", value)
            if len(value) > max_string:
                raise ValidationError(key, f"a string of at most {max_string} characters", value)

    def _envelope(self, doc: Mapping[str, Any], version: str, data: dict[str, Any]) -> Envelope:
        """The envelope of ``doc``, whose name and version the caller has already checked."""
        event_id = doc.get("id")
        name = doc["name"]
        timestamp = doc.get("timestamp")
        source = doc.get("source")
        correlation_id = doc.get("correlationId")
        causation_id = doc.get("causationId")
        max_string = self._max_string
        if not (
            type(event_id) is str
            and type(timestamp) is str
            and type(source) is str
            and event_id
            and source
            and len(event_id) <= max_string
            and len(source) <= max_string
            and len(timestamp) <= 64
        ):
            self._check_strings(doc)
            raise ValidationError(
                "timestamp", "an ISO-8601 time of at most 64 characters", timestamp
            )
        if correlation_id is not None and (
            type(correlation_id) is not str or len(correlation_id) > max_string
        ):
            raise ValidationError("correlationId", "a string or null", correlation_id)
        if causation_id is not None and (
            type(causation_id) is not str or len(causation_id) > max_string
        ):
            raise ValidationError("causationId", "a string or null", causation_id)
        try:
            fromisoformat(timestamp)
        except ValueError:
            raise ValidationError(
                "timestamp", "an ISO-8601 time such as 2026-11-27T15:00:00.000Z", timestamp
            ) from None
        return build_envelope(
            event_id, name, timestamp, version, source, correlation_id, causation_id, data
        )


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


_FORMS: dict[bytes | str, str] = {}


def _classify(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if "avro" in media:
        return _AVRO
    if "json" in media:
        return _JSON
    raise DecodeError(
        f'content-type "{content_type[:100]}" is neither JSON nor Avro '
        f"(expected {CONTENT_TYPE_JSON} or {CONTENT_TYPE_AVRO})"
    )


def _form_of(headers: Headers) -> str | None:
    """JSON or Avro as the ``content-type`` header says; None without the header."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    elif type(headers) is not list and type(headers) is not tuple:
        headers = list(headers)
    for key, value in headers:
        if key == "content-type":
            form = _FORMS.get(value) if type(value) is bytes or type(value) is str else None
            return form if form is not None else _remember_form(value)
    # Header names are case-sensitive in Kafka; accept other spellings, more slowly.
    for key, value in headers:
        name = key.decode("latin-1") if isinstance(key, bytes | bytearray) else str(key)
        if name.lower() == "content-type":
            return _remember_form(value)
    return None


def _remember_form(value: Any) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    form = _classify(text)
    if len(_FORMS) < 64 and isinstance(value, bytes | str):
        _FORMS[value] = form
    return form


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
