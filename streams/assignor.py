"""Partition assignment that keeps co-partitioned topics together and tells
every worker who owns what.

Range assignment per topic gives partition *p* of every co-partitioned topic
(``user-events`` and ``customer-facts``, say) to the same worker, which is what
lets one worker own partition *p* of a table fed by both. Each member puts its
web URL in its subscription metadata; the leader sends the complete
URL → partitions map to every member with its assignment, so any worker can
route a query to the owner of a key's partition.

:class:`GroupHosts` is that map and its lookup; on librdkafka, which has no
pluggable Python assignors, the transport fills it from a description of the
group after each assignment (streams/confluent_transport.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

logger = logging.getLogger(__name__)


class GroupHosts:
    """The group-wide map of web URL → topic partitions, as of the last assignment."""

    def __init__(self) -> None:
        self.hosts: dict[str, dict[str, list[int]]] = {}
        """web URL → {topic: [partitions]} of the whole group, as of the last assignment."""

    def owner(self, topic: str, partition: int) -> str | None:
        """Web URL of the worker that owns ``topic[partition]``, if known."""
        for url, topics in self.hosts.items():
            if partition in topics.get(topic, ()):
                return url
        return None


class HostAwareRangeAssignor(GroupHosts, RangePartitionAssignor):
    """Range assignment plus the group-wide map of web URL → topic partitions."""

    name = "eventide-range"
    version = 0

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(self.version, list(topics), self.url.encode())

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        plain = RangePartitionAssignor.assign(cluster, members)
        hosts = {
            members[m].user_data.decode(): {t: list(ps) for t, ps in a.assignment}
            for m, a in plain.items()
        }
        blob = orjson.dumps(hosts)
        return {
            m: ConsumerProtocolMemberAssignment(self.version, a.assignment, blob)
            for m, a in plain.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        try:
            self.hosts = orjson.loads(assignment.user_data) if assignment.user_data else {}
        except orjson.JSONDecodeError:
            logger.warning("assignment carried no host map; queries are served locally only")
            self.hosts = {}
