"""Errors of the state layer."""

from __future__ import annotations

from schemas.exceptions import EventideError


class StateError(EventideError):
    """Base class of the state layer's errors."""


class TransactionStateError(StateError):
    """A transaction was used in a status that does not allow it (a bug, not bad input)."""
