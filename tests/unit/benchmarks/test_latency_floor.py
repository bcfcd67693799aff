"""The latency floor's summary and topics (benchmarks/latency_floor.py)."""

from benchmarks.latency import histogram_quantile
from benchmarks.latency_floor import engine_topics, summarise
from streams.settings import Settings


def test_the_floor_subscribes_to_what_the_worker_engine_consumes():
    settings = Settings.from_env({"EVENTIDE_TOPIC_PREFIX": "t-", "EVENTIDE_PROJECTIONS": "orders"})
    assert engine_topics(settings) == ["t-order-events", "t-order-events.retry"]


def test_the_floor_gives_exact_percentiles_and_the_workers_buckets():
    ages = [0.001 * i for i in range(1, 101)]  # 1 ms .. 100 ms
    result = summarise(ages)
    assert result["n"] == 100
    assert result["p50_s"] == ages[50] and result["p99_s"] == ages[99]
    # counted into the worker's cumulative buckets, read back as the worker's histogram is
    assert result["buckets"][0.01] == 10 and result["buckets"][float("inf")] == 100
    assert abs(histogram_quantile(0.5, result["buckets"]) - 0.05) < 0.002


def test_no_records_means_no_percentiles():
    assert summarise([])["p50_s"] is None
