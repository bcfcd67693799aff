"""Peer: a Quix Streams application with its RocksDB state.

The same projection function as Eventide's orders read model, written the way
Quix Streams' documentation shows a stateful update: ``sdf.update(fn,
stateful=True)`` keeps each order's view in the partition's RocksDB state
(with its changelog topic), committed every second.
Run as ``python -m benchmarks.peers.quix_app`` with EVENTIDE_* settings; its
consumer group is EVENTIDE_APP_ID and its state lives under EVENTIDE_DATA_DIR.
Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import logging
from typing import Any

from quixstreams import Application, State

from schemas.codecs import EventCodec
from schemas.exceptions import EventError
from streams.catalogue import ORDER_EVENTS
from streams.settings import Settings
from tables.readmodels.orders import apply_order_event


def create_quix_app(settings: Settings) -> Application:
    """A Quix Streams application projecting order-events into its state."""
    app = Application(
        broker_address=",".join(settings.bootstrap_servers),
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=str(settings.data_dir / "quix"),
        loglevel=logging.WARNING,
    )
    codec = EventCodec(limits=settings.limits)
    topic = app.topic(
        settings.topic(ORDER_EVENTS.name), key_deserializer="str", value_deserializer="bytes"
    )

    def project(value: bytes, key: Any, timestamp: int, headers: Any, state: State) -> None:
        try:
            event = codec.decode(value, headers)
            view = apply_order_event(state.get("order"), event)
        except EventError:
            return
        if view is not None:
            state.set("order", view)

    app.dataframe(topic).update(project, stateful=True, metadata=True)
    return app


def main() -> None:
    create_quix_app(Settings.from_env()).run()


if __name__ == "__main__":
    main()
