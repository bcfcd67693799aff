"""Errors of the event contracts: decoding, validation, the registry, evolution.

:class:`EventideError` is the root of every error Eventide raises on purpose,
in every layer; it lives here, in the bottom layer, so that every package can
derive from it. It carries no HTTP status: the API and the worker's views map
errors to status codes at their edge. Behaviour lives on the class:
``retriable`` says whether trying the same operation again can help.

Two families of the contracts' own errors:

- :class:`EventError`: one event could not be used (bad bytes, a missing
  field, a version no reader handles). Retrying never helps, the same bytes
  fail the same way, so these events are skipped or dead-lettered.
- :class:`SchemaError`: the committed schemas or the registry are wrong (an id
  reused, an incompatible minor version). Found at start-up and by
  ``eventide schemas check``; a code change fixes them, never a retry.
"""

from __future__ import annotations


class EventideError(Exception):
    """Base class of every error Eventide raises on purpose."""

    retriable: bool = False


class EventError(EventideError):
    """An event could not be used; the message says which part and why."""

    retriable = False


class DecodeError(EventError):
    """The bytes are not a well-formed event (not JSON, not Avro, not an object)."""


class LimitExceededError(DecodeError):
    """The record breaks a size, depth or length limit; it was not decoded further."""


class UnknownSchemaError(DecodeError):
    """The record names a schema id or an event name the registry does not hold."""


class UnsupportedVersionError(DecodeError):
    """The event's version has no reader: a newer major, or an older one without upcaster."""


class ValidationError(EventError):
    """The envelope or its data lacks a field or holds a value of the wrong type."""

    def __init__(self, path: str, expected: str, found: object) -> None:
        self.path = path
        """Where the problem is, e.g. ``data.items[2].quantity``."""
        self.expected = expected
        """What the schema wants there, e.g. ``int``."""
        self.found = found
        """The offending value (:data:`MISSING` when the field is absent)."""
        super().__init__(f"{path}: expected {expected}, got {_show(found)}")


class EncodeError(EventError):
    """An event cannot be encoded: its name and version have no schema, or it is too large."""


class SchemaError(EventideError):
    """A committed schema or the registry is invalid; the message names the file or id."""

    retriable = False


class RegistryError(SchemaError):
    """``schemas/registry.json`` and the ``.avsc`` files disagree (ids, files, fingerprints)."""


class IncompatibleSchemaError(SchemaError):
    """A minor version breaks Avro schema resolution against the previous one."""


class PersonalDataError(EventideError):
    """Personal data could not be encrypted or decrypted (schemas/personal.py)."""

    retriable = False


class KekError(PersonalDataError):
    """A key-encryption key is missing or malformed; the message names the setting."""


class DecryptionError(PersonalDataError):
    """A value or a wrapped key does not decrypt: another key, or altered. Refused."""


class DataKeyNotFoundError(PersonalDataError):
    """No data key by that id: the customer was forgotten, or the key is not read yet."""

    retriable = True


class KeyRecordError(PersonalDataError):
    """A record of the keys topic is malformed."""


def _show(value: object) -> str:
    if value is _MISSING:
        return "nothing (field missing)"
    if isinstance(value, list | dict) and len(value) > 20:
        return f"{'an array' if isinstance(value, list) else 'an object'} of {len(value)} elements"
    if isinstance(value, str) and len(value) > 80:
        value = value[:80]
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 80 else text[:77] + "..."


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
MISSING: object = _MISSING
"""Sentinel passed as ``found`` when a required field is absent."""
