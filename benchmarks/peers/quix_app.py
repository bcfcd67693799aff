"""Peer: a Quix Streams application with its RocksDB state.

The same projection function as Eventide's orders read model, written the way
Quix Streams' documentation shows a stateful transformation:
``sdf.apply(fn, stateful=True)`` keeps each order's view in the partition's
RocksDB state (with its changelog topic, committed every second), and every
changed view goes to an output topic (``<prefix>quix-order-views``), as
Eventide's orders projection sends it to ``order-views``. Events whose
projection refuses them are skipped, as Eventide skips invalid input.
Run as ``python -m benchmarks.peers.quix_app`` with EVENTIDE_* settings; its
consumer group is EVENTIDE_APP_ID and its state lives under EVENTIDE_DATA_DIR.
Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from quixstreams import Application, State
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import TopicConfig

from schemas.codecs import EventCodec
from schemas.exceptions import EventError
from streams.catalogue import ORDER_EVENTS
from streams.kafka_clients import confluent_options
from streams.settings import Settings
from tables.readmodels.orders import apply_order_event

from .mark import first_record

VIEWS_TOPIC = "quix-order-views"
"""The output topic's name after EVENTIDE_TOPIC_PREFIX (created by Quix)."""


def create_quix_app(settings: Settings) -> Application:
    """A Quix Streams application projecting order-events into its state and a views topic."""
    # Quix Streams takes librdkafka's settings: the same ones as Eventide's clients.
    broker: str | ConnectionConfig = ",".join(settings.bootstrap_servers)
    if settings.kafka_security.secured:
        broker = ConnectionConfig.from_librdkafka_dict(confluent_options(settings))
    app = Application(
        broker_address=broker,
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=str(settings.data_dir / "quix"),
        loglevel=logging.WARNING,
    )
    codec = EventCodec(limits=settings.limits)
    topic = app.topic(
        settings.topic(ORDER_EVENTS.name), key_deserializer="bytes", value_deserializer="bytes"
    )
    views = app.topic(
        settings.topic(VIEWS_TOPIC),
        key_serializer="bytes",
        value_serializer="bytes",
        config=TopicConfig(num_partitions=settings.partitions, replication_factor=1),
    )

    def project(value: bytes, key: Any, timestamp: int, headers: Any, state: State) -> Any:
        first_record()
        try:
            event = codec.decode(value, headers)
            view = apply_order_event(state.get("order"), event)
        except EventError:
            return None
        if view is None:
            return None
        state.set("order", view)
        return orjson.dumps(view)

    sdf = app.dataframe(topic).apply(project, stateful=True, metadata=True)
    sdf = sdf.filter(lambda encoded: encoded is not None)
    sdf.to_topic(views)
    return app


def main() -> None:
    create_quix_app(Settings.from_env()).run()


if __name__ == "__main__":
    main()
