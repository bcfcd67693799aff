"""The app factory: ``create_app(settings) -> faust.App``.

Agents, tables and views are registered explicitly here; nothing is found by
import-time side effects or autodiscovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from .settings import Settings


@dataclass(frozen=True)
class EventideApp:
    """The Faust app and the pieces registered on it."""

    app: faust.App
    """The Faust application (worker, web server, tables)."""
    settings: Settings
    """The settings it was built from."""
    orders: Any
    """The ``orders`` table (orderId → order read model)."""


def faust_options(settings: Settings) -> dict[str, Any]:
    """The ``faust.App`` keyword arguments derived from the settings."""
    return {
        "broker": "kafka://" + ";".join(settings.bootstrap_servers),
        "store": "rocksdb://",  # Faust picks rocksdict when python-rocksdb is absent
        "datadir": str(settings.data_dir),
        "web_enabled": True,
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "web_port": settings.web_port,
        "canonical_url": settings.web_url,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "key_serializer": "raw",  # table keys: the UTF-8 bytes of the entity id
        "value_serializer": "json",  # table values: JSON documents (orjson)
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "autodiscover": False,
    }


def create_app(settings: Settings) -> EventideApp:
    """Build the Faust app with every agent, table and view registered."""
    from agents import orders as orders_agent
    from tables.orders import define_orders_table
    from tables.views import register_views

    app = faust.App(settings.app_id, **faust_options(settings))
    orders = define_orders_table(app, settings.partitions)
    orders_agent.register(app, settings, orders)
    register_views(app, orders)
    return EventideApp(app=app, settings=settings, orders=orders)
