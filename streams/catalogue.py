"""The topic catalogue: every topic Eventide's projections read or write.

Pure data (no Kafka client): projections name their sources and outputs with
these specs, and :mod:`streams.topics` creates them on the broker.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.envelope import Envelope

if TYPE_CHECKING:
    from .settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the catalogue."""

    name: str
    """Name without the configured prefix."""
    key: str
    """What the Kafka key is (documentation and error messages)."""
    description: str
    """What flows on the topic."""
    consumed: bool = True
    """Projections consume it: it gets ``<name>.retry`` and ``<name>.dlq`` companions."""
    retention_ms: int | None = None
    """``retention.ms`` of the topic when Eventide creates it (-1: keep forever);
    None: the broker's default."""
    compacted: bool = False
    """``cleanup.policy=compact`` (a table's changelog: the last value per key)."""
    extra_configs: tuple[tuple[str, str], ...] = ()
    """Further topic configuration set when Eventide creates it."""
    events: tuple[str, ...] = ()
    """The registered events it carries, as patterns of names (``order.*``); none:
    records of its own shape (the AsyncAPI document, the re-keying bridge)."""

    def carries(self, event_name: str) -> bool:
        """Whether events named ``event_name`` travel on this topic."""
        return any(fnmatch.fnmatchcase(event_name, p) for p in self.events)

    def configs(self) -> dict[str, str]:
        """Topic configuration set when Eventide creates it."""
        configs = {}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        if self.compacted:
            configs["cleanup.policy"] = "compact"
        configs.update(self.extra_configs)
        return configs


def changelog_spec(settings: Settings, table: str, published: TopicSpec | None = None) -> TopicSpec:
    """The changelog topic of ``table`` (name without the configured prefix).

    ``published``: a compacted topic of the catalogue that doubles as the
    changelog (``order-views`` for ``orders``), so that each change is
    produced once, not once as an output and once more as the changelog.
    """
    if published is not None:
        if not published.compacted:
            raise ValueError(f"{published.name} cannot be the changelog of {table}: not compacted")
        return published
    return TopicSpec(
        f"{settings.app_id}-{table}-changelog",
        "the table's key",
        f"changelog of the {table} table: its changed keys and applied offsets",
        consumed=False,
        compacted=True,
    )


KEEP_FOREVER = -1

USER_EVENTS = TopicSpec(
    "user-events", "userId", "user.* events", retention_ms=KEEP_FOREVER, events=("user.*",)
)
ORDER_EVENTS = TopicSpec(
    "order-events", "orderId", "order.* events", retention_ms=KEEP_FOREVER, events=("order.*",)
)

CUSTOMER_FACTS = TopicSpec(
    "customer-facts",
    "customerId",
    "repartition: per-order facts for the customers read model, co-partitioned with user-events",
    retention_ms=KEEP_FOREVER,
)
ORDER_VIEWS = TopicSpec(
    "order-views",
    "orderId",
    "every change of the orders read model; also the orders table's changelog, so keys "
    "starting with a 0x00 byte carry Eventide's metadata (applied offsets, retry state) "
    "and consumers of the views skip them",
    consumed=False,
    compacted=True,
)

PII_KEYS = TopicSpec(
    "pii-keys",
    "<customerId>/<keyId>, partitioned by customerId",
    "customers' data keys wrapped by the KEK (schemas/personal.py), and "
    "<customerId>/forgotten markers; a tombstone destroys a key (eventide forget). "
    "Compacted within the hour, so a destroyed key leaves the broker's disk too",
    consumed=False,
    compacted=True,
    extra_configs=(
        ("max.compaction.lag.ms", "3600000"),
        ("segment.ms", "3600000"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "86400000"),
    ),
)


def _saga_commands(service: str, *events: str) -> TopicSpec:
    """The topic of the order saga's commands to one participant (``events``: its
    step's command, then the compensation's)."""
    return TopicSpec(
        f"{service}-commands",
        "orderId",
        f"the order saga's commands to the {service} service: {', '.join(events)}",
        consumed=False,
        retention_ms=KEEP_FOREVER,
        events=events,
    )


INVENTORY_COMMANDS = _saga_commands("inventory", "inventory.reserve", "inventory.release")
PAYMENT_COMMANDS = _saga_commands("payment", "payment.process", "payment.refund")
SHIPMENT_COMMANDS = _saga_commands("shipment", "shipment.create", "shipment.cancel")
SAGA_REPLIES = TopicSpec(
    "saga-replies",
    "orderId",
    "the participants' replies to the order saga's commands (reserved/rejected, "
    "processed/failed, created/failed, released/refunded/cancelled), and the saga's "
    "clock: ticks under the key 0x00 'tick' that each worker writes to the partitions it owns",
    retention_ms=KEEP_FOREVER,
    events=(
        "inventory.reserved",
        "inventory.rejected",
        "inventory.released",
        "payment.processed",
        "payment.failed",
        "payment.refunded",
        "shipment.created",
        "shipment.failed",
        "shipment.cancelled",
    ),
)
TICK_KEY = b"\x00tick"
"""Key of the saga's clock records on saga-replies (streams/ticks.py); no entity id
starts with 0x00, so a tick is never taken for an entity's record."""
SAGA_COMMAND_TOPICS = {
    "inventory": INVENTORY_COMMANDS,
    "payment": PAYMENT_COMMANDS,
    "shipment": SHIPMENT_COMMANDS,
}
"""The command topic of each saga participant."""

RABBITMQ_BRIDGE_DLQ = TopicSpec(
    "rabbitmq-bridge.dlq",
    "the message's routing key",
    "RabbitMQ messages `eventide bridge rabbitmq` rejected (not a valid event, or no "
    "topic carries it): the body untouched, the AMQP routing key, exchange and message id "
    "in rabbitmq-* headers, the reason in dlq-* headers; the message itself went to the "
    "queue's dead-letter exchange (EVENTIDE_RABBITMQ_DEAD_LETTER_EXCHANGE)",
    consumed=False,
)

CATALOGUE: tuple[TopicSpec, ...] = (
    USER_EVENTS,
    ORDER_EVENTS,
    CUSTOMER_FACTS,
    ORDER_VIEWS,
    PII_KEYS,
    INVENTORY_COMMANDS,
    PAYMENT_COMMANDS,
    SHIPMENT_COMMANDS,
    SAGA_REPLIES,
    RABBITMQ_BRIDGE_DLQ,
)


KEY_FIELDS = {
    "order": "orderId",
    "user": "userId",
    # the order saga's commands and replies are keyed by the order they serve
    "inventory": "orderId",
    "payment": "orderId",
    "shipment": "orderId",
}


def key_of(event: Envelope) -> str:
    """The Kafka key of an event: the id of the entity it is about (DESIGN.md)."""
    entity = event.name.split(".", 1)[0]
    field = KEY_FIELDS.get(entity, f"{entity}Id")
    key = event.data.get(field)
    if not isinstance(key, str) or not key:
        raise ValueError(f"{event.name} event {event.id} has no data.{field} to key it by")
    return key
