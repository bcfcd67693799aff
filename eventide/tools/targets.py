"""Documented performance targets and ``eventide check-targets``.

:data:`TARGETS` is the one machine-readable statement of the targets;
``docs/targets.md`` states the same numbers with how they were measured (a
unit test keeps the two in agreement). :func:`check` scrapes a running
worker's ``/metrics`` twice, ``window`` seconds apart, and compares:

- throughput: events read per second over the window, judged only while the
  worker is backlogged (its lag is at least :data:`BACKLOG` records at both
  scrapes): an idle worker's rate is the offered load, not its capacity;
- p99 end-to-end latency: from the latency histogram's increase over the
  window, or since start when nothing arrived in the window (the bucket's
  upper bound, so the figure errs high);
- lag: the sum of the consumer lag over the worker's partitions;
- recovery: the duration of the worker's last partition assignment.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from streams.httpaccess import bearer

BACKLOG = 1000
"""Lag (records) at or above which the worker counts as backlogged."""


@dataclass(frozen=True)
class Target:
    """One documented target."""

    name: str
    """Short identifier (``throughput``, ``p99_latency``, ``max_lag``, ``recovery``)."""
    description: str
    """What is measured, with its unit."""
    limit: float
    """The bound."""
    at_least: bool
    """True: the observed value must be >= limit; False: <= limit."""
    unit: str
    """Unit of ``limit`` and of the observed value."""


TARGETS: tuple[Target, ...] = (
    Target("throughput", "events per second per worker while backlogged", 8000, True, "events/s"),
    Target("p99_latency", "p99 end-to-end latency at up to 4,000 events/s", 1.0, False, "s"),
    Target("max_lag", "consumer lag in steady state (all partitions)", 20000, False, "records"),
    Target("recovery", "recovery of the last assignment from changelogs", 30.0, False, "s"),
)


@dataclass(frozen=True)
class Scrape:
    """The values of one ``/metrics`` scrape that the targets need."""

    at: float
    """time.monotonic() of the scrape."""
    events: float
    """Sum of eventide_events_total over every label."""
    lag: float | None
    """Sum of eventide_consumer_lag_records, None before the first refresh."""
    latency_buckets: dict[float, float]
    """Upper bound → cumulative count of eventide_end_to_end_latency_seconds (all topics)."""
    recovery: float | None
    """eventide_recovery_seconds, None before the first assignment."""


@dataclass(frozen=True)
class Result:
    """One target compared with what was observed."""

    target: Target
    observed: float | None
    """None: no data (not judged)."""
    ok: bool
    note: str = ""


def parse(text: str, at: float) -> Scrape:
    """Extract a :class:`Scrape` from the Prometheus text format."""
    events = 0.0
    lag: float | None = None
    buckets: dict[float, float] = {}
    recovery: float | None = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "eventide_events_total":
                events += s.value
            elif s.name == "eventide_consumer_lag_records":
                lag = (lag or 0.0) + s.value
            elif s.name == "eventide_end_to_end_latency_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "eventide_recovery_seconds":
                recovery = s.value
    return Scrape(at, events, lag, buckets, recovery)


def scrape(url: str, timeout: float = 5.0, token: str = "") -> Scrape:
    """Fetch and parse ``<url>/metrics`` (``token``: bearer token, when /metrics is closed)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/metrics", headers=bearer(token))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    return parse(text, time.monotonic())


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Upper bound of the bucket holding the ``q`` quantile (cumulative counts)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    for le in bounds:
        if buckets[le] >= q * total:
            return le
    return math.inf


def evaluate(first: Scrape, second: Scrape, targets: Sequence[Target] = TARGETS) -> list[Result]:
    """Compare two scrapes of one worker with ``targets``."""
    values: dict[str, tuple[float | None, str]] = {}
    span = max(second.at - first.at, 1e-9)
    rate = (second.events - first.events) / span
    backlogged = (first.lag or 0) >= BACKLOG and (second.lag or 0) >= BACKLOG
    if backlogged:
        values["throughput"] = (rate, f"backlog {second.lag:,.0f} records")
    else:
        values["throughput"] = (None, f"not backlogged; {rate:,.0f} events/s offered")
    window = {
        le: count - first.latency_buckets.get(le, 0.0)
        for le, count in second.latency_buckets.items()
    }
    if quantile(window, 0.99) is not None:
        values["p99_latency"] = (quantile(window, 0.99), "over the window")
    elif quantile(second.latency_buckets, 0.99) is not None:
        values["p99_latency"] = (quantile(second.latency_buckets, 0.99), "since start")
    else:
        values["p99_latency"] = (None, "no event processed yet")
    values["max_lag"] = (second.lag, "") if second.lag is not None else (None, "not refreshed yet")
    values["recovery"] = (
        (second.recovery, "") if second.recovery is not None else (None, "no assignment yet")
    )
    results = []
    for target in targets:
        observed, note = values.get(target.name, (None, "not measured"))
        if observed is None:
            ok = True
        elif target.at_least:
            ok = observed >= target.limit
        else:
            ok = observed <= target.limit
        results.append(Result(target, observed, ok, note))
    return results


def format_table(results: Sequence[Result]) -> str:
    """The results as an aligned text table."""
    rows = [("target", "limit", "observed", "result", "note")]
    for r in results:
        t = r.target
        limit = f"{'>=' if t.at_least else '<='} {_num(t.limit)} {t.unit}"
        observed = "n/a" if r.observed is None else f"{_num(r.observed)} {t.unit}"
        verdict = "n/a" if r.observed is None else ("ok" if r.ok else "MISS")
        rows.append((t.name, limit, observed, verdict, r.note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def check(
    url: str,
    window: float = 5.0,
    targets: Sequence[Target] = TARGETS,
    sleep: Callable[[float], None] = time.sleep,
    token: str = "",
) -> list[Result]:
    """Scrape ``url`` twice, ``window`` seconds apart, and compare with ``targets``."""
    first = scrape(url, token=token)
    sleep(window)
    return evaluate(first, scrape(url, token=token), targets)
