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
