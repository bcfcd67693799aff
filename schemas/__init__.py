"""Event contracts: the envelope, its codecs and validation errors."""

from .envelope import Envelope, decode_envelope, encode_envelope, new_event
from .exceptions import DecodeError, EventError, ValidationError

__all__ = [
    "DecodeError",
    "Envelope",
    "EventError",
    "ValidationError",
    "decode_envelope",
    "encode_envelope",
    "new_event",
]
