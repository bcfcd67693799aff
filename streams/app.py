"""The app factory: ``create_app(settings) -> faust.App``.

Agents, tables and views are registered explicitly here; nothing is found by
import-time side effects or autodiscovery.
"""

from __future__ import annotations

from collections.abc import Awaitable
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
    engine: Any
    """The batch projection engine (owns the read-model stores)."""
    rebuilds: Any
    """Rebuilds of read models on this worker (streams/rebuild.py)."""


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
        # Faust's own group (agents other than the projections) follows the
        # same failure-detection time; its default of 60 s delays every restart.
        "broker_session_timeout": settings.session_timeout_ms / 1000,
        "broker_heartbeat_interval": max(1.0, settings.session_timeout_ms / 4000),
    }


def create_app(settings: Settings) -> EventideApp:
    """Build the Faust app with every agent, table and view registered."""
    from agents import CustomersProjection, NotificationsProjection, OrdersProjection
    from schemas.codecs import EventCodec
    from tables.views import register_views

    from .engine import Projection, ProjectionEngine
    from .sinks import build_sink

    codec = EventCodec.from_settings(settings)  # loads and checks the schema registry
    app = faust.App(settings.app_id, **faust_options(settings))
    names = settings.projection_names
    projections: list[Projection] = []
    if "orders" in names:
        projections.append(OrdersProjection(settings, codec))
    if "customers" in names:
        projections.append(CustomersProjection(settings, codec))
    if "notifications" in names:
        notifications = NotificationsProjection(settings, codec, build_sink(settings))
        projections.append(notifications)

        @app.on_before_shutdown.connect
        def close_notification_sink(sender: Any, /, *args: Any, **kw: Any) -> Awaitable[None]:
            return notifications.close()  # reopened if a last batch still sends

    engine = ProjectionEngine(settings, projections, loop=app.loop)

    @app.task
    async def start_projections() -> None:
        # Started and stopped with the app, after its web server is up.
        await app.add_runtime_dependency(engine)

    @app.timer(settings.metrics_interval)
    async def refresh_consumer_lag() -> None:
        # Log end offsets from the broker, so lag grows even when nothing is fetched.
        await engine.metrics.refresh_lag(engine.consumer)

    from .rebuild import RebuildManager

    rebuilds = RebuildManager(engine)
    register_views(app, engine, rebuilds)
    return EventideApp(app=app, settings=settings, engine=engine, rebuilds=rebuilds)
