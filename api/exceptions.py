"""Errors of the command API, its outbox store and its relay.

Each error that reaches a client carries the HTTP status it maps to
(``status``); the message says what was wrong, with the offending value,
and what to do.
"""

from __future__ import annotations

from schemas.exceptions import EventideError


class ApiError(EventideError):
    """Base class of the command layer's errors."""

    status: int = 500


class NotFoundError(ApiError):
    """The command names an entity that does not exist (HTTP 404)."""

    status = 404


class ConflictError(ApiError):
    """The command is not allowed in the entity's current state (HTTP 409),
    e.g. shipping an order whose payment is not confirmed."""

    status = 409


class InvalidCommandError(ApiError):
    """The command is well-formed but a field's value cannot be accepted (HTTP 422)."""

    status = 422

    def __init__(self, field: str, reason: str, value: object = None) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"{field}: {reason}")


class IdempotencyKeyReusedError(ApiError):
    """An ``Idempotency-Key`` came back with a different request (HTTP 422)."""

    status = 422


class StoreError(ApiError):
    """The database could not be reached or used; retrying may help (HTTP 503)."""

    status = 503
    retriable = True


class ConcurrencyError(StoreError):
    """Another transaction appended to the same entity first; the command is retried."""
