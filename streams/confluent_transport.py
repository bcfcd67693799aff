"""The engine's Kafka clients on librdkafka (``EVENTIDE_KAFKA_CLIENT=confluent``).

:class:`ConfluentTransport` gives the engine a
:class:`~streams.confluent_sender.ConfluentSender` and a
:class:`~streams.confluent_consumer.ConfluentConsumer` (static membership,
manual commits, librdkafka's ``range`` assignor: partition *p* of topics with
equal partition counts, such as ``user-events`` and ``customer-facts``, goes
to the same worker). Changelog replays, standbys and rebuilds keep their
aiokafka readers (:class:`~streams.transport.KafkaReaders`): they read outside
the group and are not on the hot path.

**Who owns what.** librdkafka has no pluggable Python assignors, so the host
map cannot travel with the assignment as it does on aiokafka. Each worker puts
its web URL in its consumer's ``client.id`` (``<group>-consumer@<url>``);
after every assignment the transport describes the group (``DescribeGroups``:
each member's client id and assignment) and fills the engine's
:class:`~streams.assignor.GroupHosts` from it. Every membership change
rebalances every member (eager protocol), so every worker refreshes its map;
a static member that restarts gets its old assignment back without a
rebalance, under the same URL, so the others' maps stay right.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from .assignor import GroupHosts
from .catalogue import TopicSpec
from .confluent_consumer import ConfluentConsumer
from .confluent_sender import ConfluentSender
from .kafka_clients import check_confluent, confluent_options
from .settings import Settings
from .topics import create_topics
from .transport import KafkaReaders, instance_id

logger = logging.getLogger(__name__)

URL_MARK = "@"
"""Separates the client id's name from the worker's web URL."""
DESCRIBE_ATTEMPTS = 60
DESCRIBE_INTERVAL_S = 0.5


def consumer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings of the projections' group consumer."""
    group = settings.projection_group
    return {
        **confluent_options(settings),
        "client.id": f"{group}-consumer{URL_MARK}{settings.web_url}",
        "group.id": group,
        # Static membership: a restarted worker takes its partitions back at
        # once instead of waiting out the old member's session.
        "group.instance.id": instance_id(settings),
        "partition.assignment.strategy": "range",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(1000, settings.session_timeout_ms // 4),
        "max.poll.interval.ms": 300_000,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "fetch.max.bytes": 32 * 1024 * 1024,
        "logger": logging.getLogger("streams.rdkafka.consumer"),
    }


def member_url(client_id: str | None) -> str | None:
    """The web URL in a member's client id, if it is an Eventide worker's."""
    _, mark, url = (client_id or "").rpartition(URL_MARK)
    return url if mark and url.startswith(("http://", "https://")) else None


def hosts_of(description: Any) -> dict[str, dict[str, list[int]]]:
    """web URL → {topic: [partitions]} from a ``ConsumerGroupDescription``."""
    hosts: dict[str, dict[str, list[int]]] = {}
    for member in description.members:
        url = member_url(member.client_id)
        if url is None:
            continue
        topics = hosts.setdefault(url, {})
        assignment = member.assignment.topic_partitions if member.assignment else []
        for part in assignment:
            topics.setdefault(part.topic, []).append(part.partition)
    for topics in hosts.values():
        for partitions in topics.values():
            partitions.sort()
    return hosts


class ConfluentTransport(KafkaReaders):
    """The engine's producer and group consumer on librdkafka."""

    def __init__(
        self, settings: Settings, hosts: GroupHosts, changelogs: Sequence[TopicSpec] = ()
    ) -> None:
        self.settings = settings
        self.hosts = hosts
        """The group's host map, refreshed after every assignment."""
        self.changelogs = tuple(changelogs)
        """Changelog topics created (compacted) before the clients start."""
        self.consumer: ConfluentConsumer | None = None
        self.sender: ConfluentSender | None = None
        self._admin: AdminClient | None = None
        self._refresh: asyncio.Task[None] | None = None

    async def start(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        settings = self.settings
        # librdkafka retries a refused credential forever: check once, with a deadline.
        await check_confluent(settings, purpose=self.group_id)
        if self.changelogs:
            await create_topics(settings, self.changelogs)
        self.sender = ConfluentSender.create(settings, f"{self.group_id}-producer")
        self._admin = AdminClient(
            {
                **confluent_options(settings),
                "client.id": f"{self.group_id}-admin",
                "logger": logging.getLogger("streams.rdkafka.admin"),
            }
        )
        self.consumer = ConfluentConsumer(
            consumer_config(settings), admin=self._admin, on_assignment=self.refresh_hosts
        )
        self.consumer.subscribe(topics, listener)

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self.consumer is not None:
            await self.consumer.close()  # leaves the group: partitions move at once
        if self.sender is not None:
            await self.sender.close()
        await self.close_readers()

    # -- the host map -----------------------------------------------------------

    def refresh_hosts(self) -> None:
        """Describe the group anew (event loop; called at every assignment)."""
        if self._refresh is not None:
            self._refresh.cancel()
        self._refresh = asyncio.get_running_loop().create_task(
            self._describe(), name="eventide-host-map"
        )

    async def _describe(self) -> None:
        """Fill the host map from the group's description once the group is stable."""
        assert self._admin is not None
        group = self.group_id
        for _ in range(DESCRIBE_ATTEMPTS):
            try:
                futures = self._admin.describe_consumer_groups([group], request_timeout=10)
                description = await asyncio.wrap_future(futures[group])
            except KafkaException as exc:
                logger.info("describing group %s: %s; trying again", group, exc)
            else:
                if description.state == ConsumerGroupState.STABLE:
                    self.hosts.hosts = hosts_of(description)
                    logger.info("group %s: %s", group, _summary(self.hosts.hosts))
                    return
            await asyncio.sleep(DESCRIBE_INTERVAL_S)
        logger.warning("group %s did not settle: queries keep the previous owners", group)


def _summary(hosts: dict[str, dict[str, list[int]]]) -> str:
    return "; ".join(
        f"{url} owns {sum(len(ps) for ps in topics.values())} partitions"
        for url, topics in sorted(hosts.items())
    )
