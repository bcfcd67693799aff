"""The event envelope: the contract with every producer (see DESIGN.md).

JSON form::

    {"id": "uuid", "name": "order.placed", "timestamp": "2026-11-27T15:00:00.000Z",
     "version": "1.0.0", "source": "order-service", "correlationId": "uuid",
     "causationId": null, "data": {...}}

Events are written and read only through :class:`~schemas.codecs.EventCodec`,
which checks them against the schema registry; this module holds the
:class:`Envelope` itself, :func:`new_event` to build one, and the checks of
its own fields that the codec applies (:func:`checked_envelope`,
:func:`check_envelope`), each raising a :class:`~schemas.exceptions.ValidationError`
naming the offending field.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .exceptions import MISSING, ValidationError

CONTENT_TYPE_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One domain event as it travels on a topic."""

    id: str
    """Unique id of this event (a uuid); the key of every deduplication."""
    name: str
    """Past-tense fact, ``<entity>.<action>``, e.g. ``order.placed``."""
    timestamp: str
    """When the fact happened, ISO-8601 UTC with milliseconds and ``Z``."""
    version: str
    """Semantic version of the payload schema, ``major.minor.patch``."""
    source: str
    """Name of the service that published the event."""
    correlation_id: str | None
    """Id shared by every event of one business flow (a request, a saga)."""
    causation_id: str | None
    """Id of the event or command that caused this one, if any."""
    data: dict[str, Any] = field(default_factory=dict)
    """The payload; its shape is given by ``name`` and ``version``."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with the field names producers use."""
        return {
            "id": self.id,
            "name": self.name,
            "timestamp": self.timestamp,
            "version": self.version,
            "source": self.source,
            "correlationId": self.correlation_id,
            "causationId": self.causation_id,
            "data": self.data,
        }

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers every producer sets (DESIGN.md, "Headers")."""
        headers = [
            ("event-id", self.id.encode()),
            ("event-name", self.name.encode()),
            ("event-version", self.version.encode()),
            ("content-type", CONTENT_TYPE_JSON.encode()),
        ]
        if self.correlation_id:
            headers.append(("correlation-id", self.correlation_id.encode()))
        return headers


def new_event(
    name: str,
    data: dict[str, Any],
    *,
    source: str = "eventide",
    version: str = "1.0.0",
    correlation_id: str | None = None,
    causation_id: str | None = None,
    timestamp: datetime | None = None,
) -> Envelope:
    """Build an envelope with a fresh id and the current UTC time."""
    ts = (timestamp or datetime.now(UTC)).astimezone(UTC)
    event_id = str(uuid.uuid4())
    return Envelope(
        id=event_id,
        name=name,
        timestamp=ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
        version=version,
        source=source,
        correlation_id=correlation_id or event_id,
        causation_id=causation_id,
        data=data,
    )


_new = object.__new__
_SETTERS = tuple(
    Envelope.__dict__[name].__set__
    for name in (
        "id",
        "name",
        "timestamp",
        "version",
        "source",
        "correlation_id",
        "causation_id",
        "data",
    )
)


def build_envelope(
    event_id: str,
    name: str,
    timestamp: str,
    version: str,
    source: str,
    correlation_id: str | None,
    causation_id: str | None,
    data: dict[str, Any],
) -> Envelope:
    """``Envelope(...)`` for already validated values, about twice as fast.

    The frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once
    per field; the decoders build one envelope per event, so they set the slots
    directly. The result is an ordinary, equal, immutable :class:`Envelope`.
    """
    event = _new(Envelope)
    s_id, s_name, s_ts, s_version, s_source, s_corr, s_cause, s_data = _SETTERS
    s_id(event, event_id)
    s_name(event, name)
    s_ts(event, timestamp)
    s_version(event, version)
    s_source(event, source)
    s_corr(event, correlation_id)
    s_cause(event, causation_id)
    s_data(event, data)
    return event


_fromisoformat = datetime.fromisoformat


def check_strings(doc: Mapping[str, Any], max_string: int) -> None:
    """Raise :class:`ValidationError` for the first of the envelope's string fields that
    is missing, empty, not a string or longer than ``max_string`` characters."""
    for key in ("name", "version", "id", "source", "timestamp"):
        value = doc.get(key, MISSING)
        if type(value) is not str or not value:
            raise ValidationError(key, "a non-empty string", value)
        if len(value) > max_string:
            raise ValidationError(key, f"a string of at most {max_string} characters", value)


def checked_envelope(
    doc: Mapping[str, Any], version: str, data: dict[str, Any], max_string: int
) -> Envelope:
    """The envelope of ``doc`` (its JSON form), checked; the caller has checked its name
    and version, and brings its ``data`` validated.

    Raises :class:`ValidationError` naming the first field that is wrong.
    """
    event_id = doc.get("id")
    name = doc["name"]
    timestamp = doc.get("timestamp")
    source = doc.get("source")
    correlation_id = doc.get("correlationId")
    causation_id = doc.get("causationId")
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
        check_strings(doc, max_string)
        raise ValidationError("timestamp", "an ISO-8601 time of at most 64 characters", timestamp)
    if correlation_id is not None and (
        type(correlation_id) is not str or len(correlation_id) > max_string
    ):
        raise ValidationError("correlationId", "a string or null", correlation_id)
    if causation_id is not None and (
        type(causation_id) is not str or len(causation_id) > max_string
    ):
        raise ValidationError("causationId", "a string or null", causation_id)
    try:
        _fromisoformat(timestamp)
    except ValueError:
        raise ValidationError(
            "timestamp", "an ISO-8601 time such as 2026-11-27T15:00:00.000Z", timestamp
        ) from None
    return build_envelope(
        event_id, name, timestamp, version, source, correlation_id, causation_id, data
    )


def check_envelope(event: Envelope, doc: Mapping[str, Any], max_string: int) -> None:
    """Check the envelope fields of ``event`` (whose JSON form is ``doc``) before encoding.

    The cheap path for the envelopes producers build with :func:`new_event`:
    only a doubt goes through :func:`checked_envelope`, which names the field.
    """
    event_id, timestamp, source = event.id, event.timestamp, event.source
    correlation_id, causation_id = event.correlation_id, event.causation_id
    if (
        type(event_id) is str
        and type(timestamp) is str
        and type(source) is str
        and event_id
        and source
        and len(event_id) <= max_string
        and len(source) <= max_string
        and len(timestamp) <= 64
        and (correlation_id is None or type(correlation_id) is str)
        and (causation_id is None or type(causation_id) is str)
        and (correlation_id is None or len(correlation_id) <= max_string)
        and (causation_id is None or len(causation_id) <= max_string)
    ):
        try:
            _fromisoformat(timestamp)
            return
        except ValueError:
            pass
    checked_envelope(doc, event.version, event.data, max_string)  # raises, naming the field
