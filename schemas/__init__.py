"""Event contracts: the envelope, its schemas and registry, codecs, validation errors,
the fields' value rules (``schemas.constraints``) and the encryption of personal
fields (``schemas.personal``)."""

from .codecs import CONTENT_TYPE_AVRO, EventCodec, decode_event, default_codec
from .constraints import FieldConstraints, payload_constraints
from .envelope import CONTENT_TYPE_JSON, Envelope, new_event
from .exceptions import (
    DataKeyNotFoundError,
    DecodeError,
    DecryptionError,
    EncodeError,
    EventError,
    IncompatibleSchemaError,
    KekError,
    LimitExceededError,
    PersonalDataError,
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
    "DataKeyNotFoundError",
    "DecodeError",
    "DecryptionError",
    "EncodeError",
    "Envelope",
    "EventCodec",
    "EventError",
    "FieldConstraints",
    "IncompatibleSchemaError",
    "KekError",
    "LimitExceededError",
    "Limits",
    "PersonalDataError",
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
    "payload_constraints",
]
