"""Event contracts: the envelope, its schemas and registry, codecs and validation errors."""

from .codecs import CONTENT_TYPE_AVRO, EventCodec, decode_event, default_codec
from .envelope import CONTENT_TYPE_JSON, Envelope, new_event
from .exceptions import (
    DecodeError,
    EncodeError,
    EventError,
    IncompatibleSchemaError,
    LimitExceededError,
    RegistryError,
    SchemaError,
    UnknownSchemaError,
    UnsupportedVersionError,
    ValidationError,
)
from .limits import Limits
from .registry import Registry, SchemaEntry

__all__ = [
    "CONTENT_TYPE_AVRO",
    "CONTENT_TYPE_JSON",
    "DecodeError",
    "EncodeError",
    "Envelope",
    "EventCodec",
    "EventError",
    "IncompatibleSchemaError",
    "LimitExceededError",
    "Limits",
    "Registry",
    "RegistryError",
    "SchemaEntry",
    "SchemaError",
    "UnknownSchemaError",
    "UnsupportedVersionError",
    "ValidationError",
    "decode_event",
    "default_codec",
    "new_event",
]
