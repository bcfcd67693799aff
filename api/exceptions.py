"""Errors of the command API, its outbox store and its relay.

Like every :class:`~schemas.exceptions.EventideError`, these carry no HTTP
status: the API maps each class to its status where it builds the response
(:func:`api.app.http_status`). The message says what was wrong, with the
offending value, and what to do; ``retriable`` says whether trying again can
help.
"""

from __future__ import annotations

from schemas.exceptions import EventideError


class ApiError(EventideError):
    """Base class of the command layer's errors."""


class NotFoundError(ApiError):
    """The command names an entity that does not exist."""


class ConflictError(ApiError):
    """The command is not allowed in the entity's current state, e.g. shipping
    an order whose payment is not confirmed."""


class InvalidCommandError(ApiError):
    """The command is well-formed but a field's value cannot be accepted."""

    def __init__(self, field: str, reason: str, value: object = None) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"{field}: {reason}")


class IdempotencyKeyReusedError(ApiError):
    """An ``Idempotency-Key`` came back with a different request."""


class StoreError(ApiError):
    """The database could not be reached or used; retrying may help."""

    retriable = True


class ConcurrencyError(StoreError):
    """Another transaction appended to the same entity first; the command is retried."""
