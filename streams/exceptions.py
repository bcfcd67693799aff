"""The runtime layer's errors.

Every error Eventide raises on purpose derives from
:class:`schemas.exceptions.EventideError` (the bottom layer). Behaviour lives
on the class: ``retriable`` says whether trying the same operation again can
help (a broker that is still starting) or cannot (a bad setting). None
carries an HTTP status: the worker's views map them at their edge.
"""

from __future__ import annotations

from schemas.exceptions import EventideError, ValidationError


class SettingsError(EventideError):
    """A setting has a value Eventide cannot use; the message names the variable."""


class BrokerError(EventideError):
    """The development broker could not be installed, started or reached."""

    retriable = True


class KafkaSecurityError(EventideError):
    """Kafka refused the connection: TLS, SASL or an ACL. The message names the
    setting to look at and the broker's answer; trying again cannot help."""


class KafkaAuthorizationError(KafkaSecurityError):
    """The broker's ACLs deny the principal a topic, group or cluster operation."""


class DeliveryError(EventideError):
    """The producer could not deliver a batch's records: the batch fails."""

    retriable = True


class TopicConfigError(EventideError):
    """A topic exists with a layout (partition count) that the app cannot use."""


class RebuildError(EventideError):
    """A read-model rebuild cannot start or did not finish."""


class UnknownReadModelError(RebuildError):
    """No read model has that name."""


class NotRebuildableError(RebuildError):
    """The read model records side effects; replaying its sources cannot rebuild it."""


class RebuildRunningError(RebuildError):
    """A rebuild of that read model is already running on the worker."""

    retriable = True


class RebuildUnavailableError(RebuildError):
    """The worker cannot start a rebuild now (partitions are being assigned)."""

    retriable = True


class RecordKeyError(ValidationError):
    """A record's Kafka key is missing or is not the id of the entity its event is
    about (DESIGN.md: ``orderId`` for ``order.*``, ``userId`` for ``user.*``,
    ``customerId`` for customer facts). Dead-lettered, never applied: a record
    under the wrong key lands on a partition that does not own its entity."""

    def __init__(self, found: bytes | None, entity_id: str, field: str) -> None:
        noun = field[:-2] + " id" if field.endswith("Id") else field
        super().__init__("key", f'the {noun} "{entity_id}" (events are keyed by {field})', found)
        if found is None:  # say "no key" rather than "None"
            self.args = (str(self).rsplit(", got ", 1)[0] + ", got no key",)
