"""The project's base exception and the runtime layer's errors.

Every error Eventide raises on purpose derives from :class:`EventideError`.
Behaviour lives on the class: ``retriable`` says whether trying the same
operation again can help (a broker that is still starting) or cannot (a
malformed event, a bad setting).
"""

from __future__ import annotations


class EventideError(Exception):
    """Base class of every error Eventide raises on purpose."""

    retriable: bool = False


class SettingsError(EventideError):
    """A setting has a value Eventide cannot use; the message names the variable."""


class BrokerError(EventideError):
    """The development broker could not be installed, started or reached."""

    retriable = True


class TopicConfigError(EventideError):
    """A topic exists with a layout (partition count) that the app cannot use."""


class RebuildError(EventideError):
    """A read-model rebuild cannot start or did not finish.

    ``status`` is the HTTP status the worker answers with for it.
    """

    status: int = 500


class UnknownReadModelError(RebuildError):
    """No read model has that name."""

    status = 404


class NotRebuildableError(RebuildError):
    """The read model records side effects; replaying its sources cannot rebuild it."""

    status = 400


class RebuildRunningError(RebuildError):
    """A rebuild of that read model is already running on the worker."""

    status = 409
    retriable = True


class RebuildUnavailableError(RebuildError):
    """The worker cannot start a rebuild now (partitions are being assigned)."""

    status = 503
    retriable = True
