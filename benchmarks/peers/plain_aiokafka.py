"""Peer, the ceiling: a plain aiokafka consumer decoding into a dict.

The same projection function as Eventide's orders read model, with no state
store, no changelog, no outputs: ``getmany`` batches, ``EventCodec.decode``,
``apply_order_event`` into an in-memory dict, one offset commit per batch.
Run as ``python -m benchmarks.peers.plain_aiokafka`` with EVENTIDE_* settings;
its consumer group is EVENTIDE_APP_ID. Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas.codecs import EventCodec
from schemas.exceptions import EventError
from streams.catalogue import ORDER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings
from tables.readmodels.orders import apply_order_event

from .mark import first_record


async def run(settings: Settings, stop: asyncio.Event) -> int:
    """Consume order-events until ``stop`` is set; returns the read models kept."""
    codec = EventCodec(limits=settings.limits)
    orders: dict[str, Any] = {}
    consumer = AIOKafkaConsumer(
        settings.topic(ORDER_EVENTS.name),
        **aiokafka_options(settings),
        group_id=settings.app_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            if batch:
                first_record()
            for records in batch.values():
                for record in records:
                    try:
                        event = codec.decode(record.value, record.headers)
                        key = event.data.get("orderId")
                        view = apply_order_event(orders.get(key), event)
                    except EventError:
                        continue
                    if view is not None:
                        orders[key] = view
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()
    return len(orders)


def main() -> None:
    settings = Settings.from_env()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(run(settings, stop))


if __name__ == "__main__":
    main()
