"""The worker's Prometheus metrics, the targets and `eventide check-targets` (no broker)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

from aiokafka import TopicPartition
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from eventide.cli import main
from eventide.tools import targets
from streams.metrics import LATENCY_SAMPLES, EngineMetrics
from tables.store import PartitionStore

ROOT = Path(__file__).resolve().parents[3]


def samples(metrics: EngineMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def record(offset: int, timestamp_ms: float) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, timestamp=int(timestamp_ms))


def test_exposition_parses_and_counts_a_batch(tmp_path):
    m = EngineMetrics()  # a fresh registry, with the process collector
    store = PartitionStore(tmp_path / "orders" / "0")
    store.write({b"o-1": b"{}", b"o-2": b"{}"}, {"t": 1})
    m.watch_stores({("orders", 0): store})
    tp = TopicPartition("order-events", 0)
    now = time.time() * 1000
    batch = {tp: [record(i, now - 2000) for i in range(10)]}
    m.partition_done("orders", "order-events", 10, skipped=3, invalid=2)
    m.changelog_written("orders", 4)
    m.batch_processed(batch, token := object(), time.perf_counter())
    m.batch_committed(token)
    m.committed({tp: 10})
    m.assigned(4, restored=7, seconds=1.5)
    m.retried("orders", "order-events")

    got = samples(m)
    events = "eventide_events_total"
    assert (
        got[(events, (("outcome", "applied"), ("projection", "orders"), ("topic", "order-events")))]
        == 5
    )
    assert (
        got[(events, (("outcome", "invalid"), ("projection", "orders"), ("topic", "order-events")))]
        == 2
    )
    skipped = (
        ("outcome", "skipped_duplicate_offset"),
        ("projection", "orders"),
        ("topic", "order-events"),
    )
    assert got[(events, skipped)] == 3
    assert got[("eventide_changelog_records_total", (("table", "orders"),))] == 4
    assert got[("eventide_batch_records_count", ())] == 1
    assert got[("eventide_batch_records_sum", ())] == 10
    # every record of a small batch is observed, about 2 s old
    lat = (("topic", "order-events"),)
    assert got[("eventide_end_to_end_latency_seconds_count", lat)] == 10
    assert got[("eventide_end_to_end_latency_seconds_bucket", (("le", "1.0"), *lat))] == 0
    assert got[("eventide_end_to_end_latency_seconds_bucket", (("le", "2.5"), *lat))] == 10
    assert got[("eventide_table_keys", (("table", "orders"),))] == 3  # 2 orders + offsets key
    assert got[("eventide_recovery_seconds", ())] == 1.5
    assert got[("eventide_changelog_restored_records_total", ())] == 7
    assert got[("eventide_rebalances_total", (("kind", "assigned"),))] == 1
    assert (
        got[("eventide_retries_total", (("projection", "orders"), ("topic", "order-events")))] == 1
    )
    assert ("process_cpu_seconds_total", ()) in got
    store.close()


def test_large_batches_are_sampled_uniformly():
    m = EngineMetrics(CollectorRegistry())
    now = time.time() * 1000
    batch = {
        TopicPartition("order-events", p): [record(i, now) for i in range(5000)] for p in range(4)
    }
    token = object()
    m.batch_processed(batch, token, time.perf_counter())
    m.batch_committed(token)
    count = samples(m)[("eventide_end_to_end_latency_seconds_count", (("topic", "order-events"),))]
    assert LATENCY_SAMPLES <= count <= LATENCY_SAMPLES + 4  # one stride over the whole batch


class FakeConsumer:
    def __init__(self, ends: dict[TopicPartition, int], positions: dict[TopicPartition, int]):
        self.ends = ends
        self.positions = positions

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    async def end_offsets(self, tps):
        return {tp: self.ends[tp] for tp in tps}

    async def position(self, tp):
        return self.positions[tp]


async def test_lag_is_end_offset_minus_committed_or_position():
    m = EngineMetrics(CollectorRegistry())
    a, b = TopicPartition("order-events", 0), TopicPartition("order-events", 1)
    consumer = FakeConsumer({a: 100, b: 50}, {a: 0, b: 45})
    m.committed({a: 60})
    await m.refresh_lag(consumer)
    got = samples(m)
    assert (
        got[("eventide_consumer_lag_records", (("partition", "0"), ("topic", "order-events")))]
        == 40
    )
    assert (
        got[("eventide_consumer_lag_records", (("partition", "1"), ("topic", "order-events")))] == 5
    )
    m.revoked([b])
    assert (
        "eventide_consumer_lag_records",
        (("partition", "1"), ("topic", "order-events")),
    ) not in samples(m)


def scrape(
    at: float, events: float, lag: float | None, buckets: dict[float, float]
) -> targets.Scrape:
    return targets.Scrape(at, events, lag, buckets, 2.0)


def test_targets_pass_for_a_healthy_worker_and_miss_for_a_starved_one():
    fast = {0.1: 990.0, 0.5: 1000.0, float("inf"): 1000.0}
    healthy = targets.evaluate(scrape(0, 0, 0, {}), scrape(5, 5000, 0, fast))
    assert all(r.ok for r in healthy)
    assert {r.target.name: r.observed for r in healthy}["p99_latency"] == 0.1

    slow = {0.1: 10.0, 60.0: 20.0, float("inf"): 1000.0}
    starved = targets.evaluate(scrape(0, 0, 50_000, {}), scrape(5, 100, 90_000, slow))
    missed = {r.target.name for r in starved if not r.ok}
    assert missed == {"throughput", "p99_latency", "max_lag"}
    table = targets.format_table(starved)
    assert re.search(r"max_lag\s+<= 20,000 records\s+90,000 records\s+MISS", table)


def test_docs_state_every_target():
    doc = (ROOT / "docs" / "targets.md").read_text()
    for t in targets.TARGETS:
        limit = f"{t.limit:,.0f}" if t.limit >= 100 else f"{t.limit:g}"
        assert re.search(rf"`{t.name}`.*{re.escape(limit)}", doc), (t.name, limit)


def test_check_targets_exits_2_when_nothing_answers():
    result = CliRunner().invoke(
        main, ["check-targets", "--url", "http://127.0.0.1:9", "--window", "0"]
    )
    assert result.exit_code == 2
    assert "cannot scrape http://127.0.0.1:9/metrics" in result.output


def test_dashboard_and_alerts_use_exported_metric_names():
    m = EngineMetrics()
    m.partition_done("orders", "t", 1, 0, 0)
    m.retried("orders", "t")
    m.dead_letter("orders", "t", "invalid")
    m.changelog_written("orders", 1)
    m.assigned(1, 0, 0.1)
    m.revoked([])
    exported = {name for name, _ in samples(m)}
    exported |= {f"{n}_bucket" for n in ("eventide_end_to_end_latency_seconds",)}
    # set by the lag refresher; per table once stores are open (see the first test)
    exported |= {"eventide_consumer_lag_records", "eventide_table_keys"}
    used = set()
    for path in ("deploy/grafana/eventide-dashboard.json", "deploy/prometheus/eventide-alerts.yml"):
        used |= set(re.findall(r"\b(eventide_[a-z_]+|process_[a-z_]+)", (ROOT / path).read_text()))
    assert used - exported == set()
