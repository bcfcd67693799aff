"""Peer: the naive Faust agent — one table read and one table write per event.

The same projection function as Eventide's orders read model, run the way a
Faust tutorial would: ``async for`` over the stream, ``table[key] = view``.
Run as ``python -m benchmarks.peers.naive_faust`` with EVENTIDE_* settings;
its consumer group is EVENTIDE_APP_ID.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from faust.worker import Worker

from eventide.app import faust_options
from schemas.codecs import EventCodec
from schemas.exceptions import EventError
from streams.catalogue import ORDER_EVENTS
from streams.settings import Settings
from tables.readmodels.orders import apply_order_event

from .mark import first_record

logger = logging.getLogger(__name__)


def create_naive_app(settings: Settings) -> faust.App:
    """A Faust app with one per-event agent writing the orders table."""
    app = faust.App(settings.app_id, **faust_options(settings))
    topic = app.topic(
        settings.topic(ORDER_EVENTS.name), key_serializer="raw", value_serializer="raw"
    )
    orders = app.Table("orders", default=None, partitions=settings.partitions)
    codec = EventCodec(limits=settings.limits)

    @app.agent(topic)
    async def project(stream: faust.StreamT) -> None:
        async for record in stream.events():
            first_record()
            try:
                event = codec.decode(record.message.value, record.message.headers)
                key = event.data.get("orderId")
                view = apply_order_event(orders.get(key), event)
            except EventError:
                continue
            if view is not None:
                orders[key] = view

    return app


def main() -> None:
    settings = Settings.from_env()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_naive_app(settings)
    Worker(app, loglevel="warning", quiet=True, loop=loop).execute_from_commandline()


if __name__ == "__main__":
    main()
