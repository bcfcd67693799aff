"""Prometheus metrics of the command API and of the outbox relay, in one place.

Built from an injected :class:`~prometheus_client.CollectorRegistry` (a fresh
one, with the process collector, by default). The API serves its registry at
``GET /metrics``; a relay inside the API registers its metrics in the same
registry, a standalone ``eventide relay`` serves its own on
``EVENTIDE_RELAY_METRICS_PORT``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

COMMAND_SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
BATCH_ROWS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)


def new_registry() -> CollectorRegistry:
    """A registry with the process collector (CPU seconds, memory, open fds)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class ApiMetrics:
    """Commands by type and HTTP status, and how long they took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.commands = Counter(
            "eventide_api_commands",
            "Commands answered, by command (place_order, confirm_payment, ship_order, "
            "cancel_order, create_user) and HTTP status.",
            ["command", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "eventide_api_command_seconds",
            "Time from a command's request body received to its answer ready, by command "
            "(includes the database transaction's commit).",
            ["command"],
            buckets=COMMAND_SECONDS_BUCKETS,
            registry=registry,
        )
        self._counted: dict[tuple[str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def command(self, command: str, status: int, seconds: float) -> None:
        """Count one answered command (labelled children are cached: per-request cost)."""
        counter = self._counted.get((command, status))
        if counter is None:
            counter = self._counted[(command, status)] = self.commands.labels(command, str(status))
        counter.inc()
        timer = self._timed.get(command)
        if timer is None:
            timer = self._timed[command] = self.seconds.labels(command)
        timer.observe(seconds)


class RelayMetrics:
    """What the outbox relay publishes, how late, and what is left."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.published = Counter(
            "eventide_relay_published_events",
            "Outbox rows acknowledged by Kafka (acks=all) and marked published.",
            registry=registry,
        )
        self.batches = Counter(
            "eventide_relay_publish_batches",
            "Claims of outbox rows that were sent to Kafka (empty polls are not counted).",
            registry=registry,
        )
        self.batch_rows = Histogram(
            "eventide_relay_batch_rows",
            "Outbox rows per published batch.",
            buckets=BATCH_ROWS_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "eventide_relay_publish_lag_seconds",
            "Time from the command's commit (the outbox row's created_at) to Kafka's "
            "acknowledgement of the event.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.backlog = Gauge(
            "eventide_relay_backlog_rows",
            "Unpublished outbox rows, all relays' share included (refreshed about once a "
            "second while the relay runs).",
            registry=registry,
        )
        self.errors = Counter(
            "eventide_relay_errors",
            "Relay failures, by kind: send (rows not acknowledged, they stay pending), "
            "store (the database failed a claim), connect (Kafka unreachable).",
            ["kind"],
            registry=registry,
        )
        for kind in ("send", "store", "connect"):
            self.errors.labels(kind)
