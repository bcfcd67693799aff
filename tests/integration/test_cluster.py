"""The three-broker dev cluster: replicated topics, a leader killed under writes.

One cluster for the module (tests/fixtures/cluster.py); the test that kills a
node restarts it before it ends.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from eventide.tools.devcluster import DevCluster
from streams.catalogue import ORDER_EVENTS
from streams.exceptions import TopicConfigError
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.cluster import restore

pytestmark = pytest.mark.integration


def eventide(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``eventide broker ...`` against the cluster, as a user would."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EVENTIDE_")},
        "EVENTIDE_BROKER_URL": cluster.layout.broker_url,
        "EVENTIDE_STATE_DIR": str(cluster.home.parent),
        "PYTHONPATH": ":".join(sys.path),
    }
    return subprocess.run(
        [sys.executable, "-m", "eventide.cli", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


async def topic_config(settings: Settings, resource: ConfigResource) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_configs([resource])
    finally:
        await admin.close()
    [found] = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in found["config_entries"]}


async def produce(settings: Settings, topic: str, partition: int, values: list[bytes]) -> None:
    """Write ``values`` with acks=all; raises if any is not acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=15000,
    )
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def read_all(settings: Settings, topic: str, partition: int, group: str) -> list[bytes]:
    """Every record of one partition, as a consumer group that commits its offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while len(values) < end:
            batch = await consumer.getmany(tp, timeout_ms=5000)
            values += [r.value for r in batch.get(tp, []) if r.value is not None]
        await consumer.commit()
        return values
    finally:
        await consumer.stop()


async def test_eventide_topics_take_the_clusters_replication(
    kafka_cluster: DevCluster, make_cluster_settings: Callable[..., Settings]
) -> None:
    settings = make_cluster_settings()
    await ensure_topics(settings)
    topic = settings.topic(ORDER_EVENTS.name)

    state = await kafka_cluster.partitions(topic)
    assert len(state) == settings.partitions
    assert all(len(p.replicas) == 3 and len(p.isr) == 3 for p in state.values()), state
    config = await topic_config(settings, ConfigResource(ConfigResourceType.TOPIC, topic))
    assert config["min.insync.replicas"] == "2"
    assert config["unclean.leader.election.enable"] == "false"

    # The consumer offsets topic is made by the first group that commits: three replicas.
    await produce(settings, topic, 0, [b"one"])
    assert await read_all(settings, topic, 0, f"{settings.app_id}-probe") == [b"one"]
    offsets = await kafka_cluster.partitions("__consumer_offsets")
    assert all(len(p.replicas) == 3 for p in offsets.values())
    broker = await topic_config(settings, ConfigResource(ConfigResourceType.BROKER, "1"))
    assert broker["transaction.state.log.replication.factor"] == "3"
    assert broker["transaction.state.log.min.isr"] == "2"


async def test_replication_below_min_insync_replicas_fails_at_start(
    make_cluster_settings: Callable[..., Settings],
) -> None:
    settings = make_cluster_settings(EVENTIDE_REPLICATION_FACTOR="1")
    with pytest.raises(TopicConfigError, match=r"EVENTIDE_REPLICATION_FACTOR=1 .*min\.insync"):
        await ensure_topics(settings)


def test_writes_survive_the_leader_killed_and_it_rejoins(
    kafka_cluster: DevCluster, make_cluster_settings: Callable[..., Settings]
) -> None:
    settings = make_cluster_settings()
    asyncio.run(ensure_topics(settings))
    topic = settings.topic(ORDER_EVENTS.name)
    before = [f"before-{i}".encode() for i in range(50)]
    asyncio.run(produce(settings, topic, 0, before))
    leader = kafka_cluster.leader_of(topic, 0)
    assert leader is not None
    try:
        killed = eventide(kafka_cluster, "kill", "--node", str(leader))
        assert killed.returncode == 0, killed.stderr
        assert f"node {leader}" in killed.stdout and "killed" in killed.stdout

        # Two replicas of three are left, min.insync.replicas is 2: acks=all still works.
        after = [f"after-{i}".encode() for i in range(50)]
        asyncio.run(produce(settings, topic, 0, after))
        state = kafka_cluster.partition(topic, 0)
        assert state.leader not in (None, leader)
        assert leader not in state.isr
        assert asyncio.run(read_all(settings, topic, 0, f"{settings.app_id}-check")) == (
            before + after
        )
        down = eventide(kafka_cluster, "status")
        assert down.returncode == 1
        assert f"node {leader}: down" in down.stdout

        restarted = eventide(kafka_cluster, "start", "--node", str(leader))
        assert restarted.returncode == 0, restarted.stderr + restarted.stdout
    finally:
        restore(kafka_cluster)
    up = eventide(kafka_cluster, "status")
    assert up.returncode == 0, up.stdout
    assert f"node {leader}: up" in up.stdout
    # The restarted node catches up and is back in the partition's in-sync replicas.
    kafka_cluster.wait_for(
        f"node {leader} back in the ISR",
        lambda: leader in kafka_cluster.partition(topic, 0).isr,
        timeout=60,
    )
