"""The app factory: ``create_app(settings) -> faust.App``.

The projections come from the catalogue ``agents.PROJECTIONS`` (their
declarations), filtered by EVENTIDE_PROJECTIONS; the engine, the rebuild
manager and the views are registered explicitly here. Nothing is found by
import-time side effects or autodiscovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from agents import PROJECTIONS, SagaProjection
from schemas.codecs import EventCodec
from streams.engine import ProjectionEngine
from streams.exceptions import SettingsError
from streams.health import LagRefresher, WorkerHealth
from streams.httpaccess import AccessPolicy
from streams.kafka_clients import faust_credentials
from streams.keys import KafkaKeyStore, KeyRingService
from streams.logthrottle import install_log_throttle
from streams.projection import Projection
from streams.rebuild import RebuildManager
from streams.settings import Settings
from streams.ticks import Ticker
from streams.views import register_views, web_application_options

LOG_THROTTLE_SECONDS = 10.0
"""Interval of the Kafka clients' log throttle: one line per cause per interval."""


@dataclass(frozen=True)
class EventideApp:
    """The Faust app and the pieces registered on it."""

    app: faust.App
    """The Faust application (worker, web server, tables)."""
    settings: Settings
    """The settings it was built from."""
    engine: ProjectionEngine
    """The batch projection engine (owns the read-model stores)."""
    rebuilds: RebuildManager
    """Rebuilds of read models on this worker (streams/rebuild.py)."""


def faust_options(settings: Settings) -> dict[str, Any]:
    """The ``faust.App`` keyword arguments derived from the settings."""
    return {
        "broker": "kafka://" + ";".join(settings.bootstrap_servers),
        "broker_credentials": faust_credentials(settings),  # TLS and SASL, as every client
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


def select_projections(settings: Settings) -> list[type[Projection]]:
    """The declared projections EVENTIDE_PROJECTIONS names (all by default; ``all``
    includes the order saga only with EVENTIDE_SAGAS=true).

    Raises :class:`SettingsError` naming the variable and the declared names
    when it names one that no module of ``agents/`` declares.
    """
    declared = {cls.spec.name: cls for cls in PROJECTIONS}
    names = settings.projection_names
    if names is None:  # the saga sends commands and events: only when asked for
        return [cls for cls in PROJECTIONS if cls is not SagaProjection or settings.sagas]
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise SettingsError(
            f"EVENTIDE_PROJECTIONS={settings.projections!r}: no projection named "
            f"{', '.join(unknown)}; the projections are {', '.join(declared)} (or all)"
        )
    return [cls for cls in PROJECTIONS if cls.spec.name in names]


def create_app(settings: Settings) -> EventideApp:
    """Build the Faust app with the selected projections, the engine and the views.

    Raises :class:`SettingsError` naming the variable for an unknown projection
    or an HTTP token misconfiguration (streams/httpaccess.py).
    """
    selected = select_projections(settings)
    access = AccessPolicy.from_settings(settings, "worker", settings.web_host)
    # The codec loads and checks the schema registry. Its memo decodes once a record
    # that several projections read; with no topic shared it would only cost.
    feeds = [t.name for cls in selected for t in cls.spec.sources]
    codec = EventCodec(limits=settings.limits, memo=len(feeds) != len(set(feeds)))
    options = {
        **faust_options(settings),
        "web_application_options": web_application_options(access),
    }
    app = faust.App(settings.app_id, **options)
    projections = [cls(settings, codec) for cls in selected]
    # Customers' data keys, read from the keys topic; projections decrypt with
    # them when serving a read model or sending a notification, never in apply.
    keys = KafkaKeyStore(settings)
    for p in projections:
        p.keys = keys.ring
    engine = ProjectionEngine(settings, projections, loop=app.loop)
    sagas = [p for p in projections if isinstance(p, SagaProjection)]
    for p in sagas:
        p.metrics = engine.metrics.sagas

    @app.task
    async def start_projections() -> None:
        # A lost broker makes the Kafka clients log the same error thousands of
        # times a second: one line per cause per 10 s (after the worker's logging
        # is set up, on the clients' loggers only).
        install_log_throttle(LOG_THROTTLE_SECONDS)
        # Started and stopped with the app, after its web server is up.
        await app.add_runtime_dependency(KeyRingService(keys, loop=app.loop))
        await app.add_runtime_dependency(engine)

    # /health: degraded while the broker does not answer the lag refresh (a
    # ListOffsets request) for a few intervals, or the engine does not poll.
    interval = settings.metrics_interval
    health = WorkerHealth(engine, stale_after=max(3 * interval, 6.0))
    lag = LagRefresher(engine, health, interval)

    @app.task
    async def refresh_consumer_lag() -> None:
        # Log end offsets from the broker, so lag grows even when nothing is fetched;
        # a refresh still running when the next is due is skipped, never overlapped.
        await lag.run()

    if sagas:
        ticker = Ticker(engine, sagas[0].replies_topic, settings.saga_tick_ms)

        @app.task
        async def tick_sagas() -> None:
            # The saga's clock: deadlines are found when a tick is applied (agents/saga.py).
            await ticker.run()

    rebuilds = RebuildManager(engine)
    register_views(app, engine, rebuilds, declared=PROJECTIONS, health=health)
    return EventideApp(app=app, settings=settings, engine=engine, rebuilds=rebuilds)
