"""The topic catalogue and its creation on the broker.

Source topics are created explicitly, with the configured partition count,
before a worker or producer uses them: the dev broker runs with topic
auto-creation off, so a typo in a topic name fails loudly instead of creating
a stray topic with the broker's defaults.

Event topics (``user-events``, ``order-events``) and the ``customer-facts``
repartition topic are created with ``retention.ms=-1``: they are the event
store, and ``eventide rebuild`` replays them from the beginning
(streams/rebuild.py). The broker's default (7 days) would delete history. A
topic that already exists keeps its configuration; set it with
``kafka-configs.sh --alter --add-config retention.ms=-1``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from .exceptions import BrokerError, TopicConfigError
from .failures import dlq_topic, retry_topic
from .settings import Settings

logger = logging.getLogger(__name__)


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

    def configs(self) -> dict[str, str]:
        """Topic configuration set when Eventide creates it."""
        configs = {}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        if self.compacted:
            configs["cleanup.policy"] = "compact"
        return configs


def changelog_spec(settings: Settings, table: str) -> TopicSpec:
    """The changelog topic of ``table`` (name without the configured prefix)."""
    return TopicSpec(
        f"{settings.app_id}-{table}-changelog",
        "the table's key",
        f"changelog of the {table} table: its changed keys and applied offsets",
        consumed=False,
        compacted=True,
    )


KEEP_FOREVER = -1

USER_EVENTS = TopicSpec("user-events", "userId", "user.* events", retention_ms=KEEP_FOREVER)
ORDER_EVENTS = TopicSpec("order-events", "orderId", "order.* events", retention_ms=KEEP_FOREVER)

CUSTOMER_FACTS = TopicSpec(
    "customer-facts",
    "customerId",
    "repartition: per-order facts for the customers read model, co-partitioned with user-events",
    retention_ms=KEEP_FOREVER,
)
ORDER_VIEWS = TopicSpec(
    "order-views", "orderId", "every change of the orders read model", consumed=False
)

CATALOGUE: tuple[TopicSpec, ...] = (USER_EVENTS, ORDER_EVENTS, CUSTOMER_FACTS, ORDER_VIEWS)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the catalogue's topics that are missing; check the others."""
    return await create_topics(settings, CATALOGUE)


async def create_topics(settings: Settings, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics of ``specs`` that are missing (with their retry and
    dead-letter companions when consumed); check the others.

    The one path by which Eventide creates topics. Returns the names created.
    Raises :class:`BrokerError` when Kafka cannot be reached, and
    :class:`TopicConfigError` when a topic cannot be created or exists with
    another partition count than ``settings.partitions``: tables
    are co-partitioned with their source topics, so that would misroute keys.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.app_id}-admin"
    )
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise BrokerError(
            f"cannot reach Kafka at {settings.broker_url} (EVENTIDE_BROKER_URL): {exc}; "
            "is the broker running? `eventide broker start` starts the dev broker"
        ) from exc
    try:
        names = []
        configs: dict[str, dict[str, str]] = {}
        for spec in specs:
            name = settings.topic(spec.name)
            names.append(name)
            configs[name] = spec.configs()
            if spec.consumed:
                names += [retry_topic(name), dlq_topic(name)]
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        n,
                        settings.partitions,
                        settings.replication_factor,
                        topic_configs=configs.get(n, {}),
                    )
                    for n in missing
                ]
            )
            for name, code, message in (e[:3] for e in response.topic_errors):
                # 36: created meanwhile by another process, which is fine.
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise TopicConfigError(
                        f"could not create topic {name!r}: {message} (code {code})"
                    )
            logger.info("created topics %s with %d partitions", missing, settings.partitions)
        present = [n for n in names if n in existing]
        if present:
            for meta in await admin.describe_topics(present):
                count = len(meta["partitions"])
                if count != settings.partitions:
                    raise TopicConfigError(
                        f"topic {meta['topic']!r} has {count} partitions but "
                        f"EVENTIDE_PARTITIONS={settings.partitions}; set EVENTIDE_PARTITIONS="
                        f"{count} or recreate the topic"
                    )
            kept = [n for n in present if "retention.ms" in configs.get(n, {})]
            if kept:
                await _warn_on_retention(admin, kept, configs)
        return missing
    finally:
        await admin.close()


async def _warn_on_retention(
    admin: AIOKafkaAdminClient, names: list[str], wanted: dict[str, dict[str, str]]
) -> None:
    """Log a warning for each existing topic whose retention deletes the history
    that ``eventide rebuild`` replays (the topic is left as it is)."""
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
        found = {
            resource["resource_name"]: {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]
            }
            for response in responses
            for resource in response.to_object()["resources"]
        }
    except Exception as exc:  # a check, never a reason not to start
        logger.warning("could not check the retention of topics %s: %s", names, exc)
        return
    for name in names:
        want = wanted[name]["retention.ms"]
        have = found.get(name, {}).get("retention.ms")
        if have is not None and have != want:
            logger.warning(
                "topic %r deletes events after retention.ms=%s; `eventide rebuild` needs the "
                "whole history: kafka-configs.sh --alter --entity-type topics --entity-name %s "
                "--add-config retention.ms=%s",
                name,
                have,
                name,
                want,
            )
