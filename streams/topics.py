"""Topic creation on the broker: the one path by which Eventide makes topics.

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

Topics get ``EVENTIDE_REPLICATION_FACTOR`` replicas and inherit the cluster's
``min.insync.replicas``. Before creating any, the brokers' defaults are read:
a replication factor below ``min.insync.replicas`` fails at start-up (no write
with acks=all could succeed), one below ``default.replication.factor`` is
logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaConnectionError,
    TopicAlreadyExistsError,
)

from .catalogue import CATALOGUE, TopicSpec
from .exceptions import BrokerError, TopicConfigError
from .failures import dlq_topic, retry_topic
from .kafka_clients import aiokafka_options
from .settings import Settings

logger = logging.getLogger(__name__)


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
    admin = AIOKafkaAdminClient(**aiokafka_options(settings), client_id=f"{settings.app_id}-admin")
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise BrokerError(
            f"cannot reach Kafka at {settings.broker_url} (EVENTIDE_BROKER_URL): {exc}; "
            "is the broker running? `eventide broker start` starts the dev broker"
        ) from exc
    try:
        configs: dict[str, dict[str, str]] = {}
        for spec in specs:
            name = settings.topic(spec.name)
            configs[name] = spec.configs()
            if spec.consumed:
                configs[retry_topic(name)] = configs[dlq_topic(name)] = {}
        existing = set(await admin.list_topics())
        missing = [n for n in configs if n not in existing]
        if missing:
            await _check_replication(admin, settings)
            await _create(admin, settings, {n: configs[n] for n in missing})
        present = [n for n in configs if n in existing]
        if present:
            await _check_partitions(admin, settings, present)
            kept = [n for n in present if "retention.ms" in configs[n]]
            if kept:
                await _warn_on_retention(admin, kept, configs)
        return missing
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, settings: Settings, configs: dict[str, dict[str, str]]
) -> None:
    """Create topics (name → configuration) with the configured layout."""
    response = await admin.create_topics(
        [
            NewTopic(n, settings.partitions, settings.replication_factor, topic_configs=c)
            for n, c in configs.items()
        ]
    )
    for name, code, message in (e[:3] for e in response.topic_errors):
        # 36: created meanwhile by another process, which is fine.
        if code == InvalidReplicationFactorError.errno:
            raise TopicConfigError(
                f"could not create topic {name!r} with EVENTIDE_REPLICATION_FACTOR="
                f"{settings.replication_factor}: {message}; start more brokers or lower "
                "EVENTIDE_REPLICATION_FACTOR"
            )
        if code not in (0, TopicAlreadyExistsError.errno):
            raise TopicConfigError(f"could not create topic {name!r}: {message} (code {code})")
    logger.info("created topics %s with %d partitions", list(configs), settings.partitions)


async def _check_replication(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Before creating topics, compare EVENTIDE_REPLICATION_FACTOR with the
    cluster's defaults: raise :class:`TopicConfigError` when it is below the
    brokers' ``min.insync.replicas`` (every acks=all write would be refused with
    NOT_ENOUGH_REPLICAS), warn when it is below ``default.replication.factor``."""
    try:
        brokers = (await admin.describe_cluster())["brokers"]
        resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]))
        [response] = await admin.describe_configs([resource])
        [found] = response.to_object()["resources"]
        config = {e["config_names"]: e["config_value"] for e in found["config_entries"]}
        min_isr = int(config["min.insync.replicas"])
        default_rf = int(config["default.replication.factor"])
    except Exception as exc:  # e.g. no DescribeConfigs ACL: Kafka still checks the count
        logger.debug("could not read the brokers' replication defaults: %s", exc)
        return
    factor = settings.replication_factor
    if factor < min_isr:
        raise TopicConfigError(
            f"EVENTIDE_REPLICATION_FACTOR={factor} is below the brokers' "
            f"min.insync.replicas={min_isr}: every write with acks=all to such a topic would "
            f"be refused (NOT_ENOUGH_REPLICAS); set EVENTIDE_REPLICATION_FACTOR={default_rf}"
        )
    if factor < default_rf:
        logger.warning(
            "creating topics with EVENTIDE_REPLICATION_FACTOR=%d on a cluster whose "
            "default.replication.factor is %d: a broker failure can lose their records",
            factor,
            default_rf,
        )


async def _check_partitions(
    admin: AIOKafkaAdminClient, settings: Settings, names: list[str]
) -> None:
    """Raise :class:`TopicConfigError` for an existing topic with another partition count."""
    for meta in await admin.describe_topics(names):
        count = len(meta["partitions"])
        if count != settings.partitions:
            raise TopicConfigError(
                f"topic {meta['topic']!r} has {count} partitions but "
                f"EVENTIDE_PARTITIONS={settings.partitions}; set EVENTIDE_PARTITIONS="
                f"{count} or recreate the topic"
            )


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
