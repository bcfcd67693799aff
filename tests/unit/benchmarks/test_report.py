"""The benchmark suite's bookkeeping: where runs go, what they say, how drains are counted.

No benchmark runs here and nothing is timed: these check the pure parts
(reports, topic selection, first-record marks, assignment checks) on
made-up results.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import report, scaling, suite_report, timing
from benchmarks.peers import mark
from streams.settings import Settings

MACHINE = {
    "cpu": "Test CPU",
    "cores": 2,
    "memory_gib": 24.0,
    "python": "3.11.7",
    "kafka": "4.1.1, one KRaft node on the same machine",
    "commit": "abc1234",
    "tree_modified": False,
    "load_average": ["0.10", "0.20", "0.30"],
}


def _row(events: int, seconds: float, cpu_us: float, **extra: object) -> dict[str, object]:
    return {
        "events": events,
        "drain_s": seconds,
        "events_per_s": events / seconds,
        "cpu_us_per_event": cpu_us,
        "other_cores": 0.05,
        **extra,
    }


def _result(**extra: object) -> dict[str, object]:
    return {
        "command": "python -m benchmarks --orders 100",
        "when": "2026-12-01 12:00:00 UTC",
        "machine": MACHINE,
        "args": {"partitions": 8, "projections": "orders,customers", "rate_seconds": 5.0},
        **extra,
    }


@pytest.fixture
def docs(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REFERENCE", tmp_path / "docs")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    return tmp_path


def test_ratio_is_to_the_baseline_and_blank_without_one():
    assert report.ratio(30_000, 15_000) == "2.00x"
    assert report.ratio(30_000, None) == ""
    assert report.ratio(None, 15_000) == ""


def test_the_command_line_is_the_one_to_type_again():
    line = report.command_line("benchmarks", ["--orders", "20000", "--rates", "1000,2000"])
    assert line == "python -m benchmarks --orders 20000 --rates 1000,2000"


def test_the_machine_names_cpu_cores_memory_python_kafka_and_commit():
    m = report.machine()
    assert {"cpu", "cores", "python", "kafka", "commit"} <= set(m)
    assert m["kafka"].startswith(report.kafka_version())
    assert report.kafka_version()[0].isdigit()  # read from deploy/kafka/pom.xml
    line = report.machine_line(MACHINE)
    assert "2 cores (Test CPU)" in line and "Kafka 4.1.1" in line and "abc1234" in line


def test_a_reference_run_replaces_its_folder_and_rewrites_the_index(docs):
    out = report.run_dir("throughput", reference=True)
    (out / "old.png").write_bytes(b"png")
    (out / "ab-earlier.md").write_text("an earlier A/B, kept")
    out = report.run_dir("throughput", reference=True)
    assert not (out / "old.png").exists()
    assert (out / "ab-earlier.md").exists()
    report.write(out, {"when": "2026-12-01", "machine": MACHINE}, "# page\n", reference=True)
    assert json.loads((out / "result.json").read_text())["when"] == "2026-12-01"
    index = (docs / "docs" / "README.md").read_text()
    assert "[2026-12-01](throughput/README.md)" in index
    assert "[ab-earlier](throughput/ab-earlier.md)" in index
    assert "| scaling |" in index and "none kept yet" in index


def test_a_run_without_reference_goes_to_the_ignored_results(docs):
    out = report.run_dir("drain", reference=False, stamp="20261201-120000")
    assert out == docs / "results" / "drain-20261201-120000"
    assert not (docs / "docs").exists()


def test_throughput_page_gives_ratios_to_quix_streams_and_the_naive_agent():
    result = _result(
        rows={
            "eventide": _row(30_000, 2.0, 40.0, projections="orders,customers"),
            "eventide_orders": _row(26_000, 1.0, 30.0),
            "quix_streams": _row(26_000, 2.0, 70.0),
            "plain_aiokafka": _row(26_000, 0.5, 20.0),
            "naive_faust": _row(3_000, 1.0, 300.0),
        },
        recovery={
            "restart_to_ready_s": 3.0,
            "eventide_recovery_seconds": 1.0,
            "restored_records": 1000.0,
            "verified": {"checked": 10, "mismatches": 0},
        },
    )
    page = suite_report.throughput_markdown(result)
    assert "python -m benchmarks --orders 100" in page
    orders_only = next(
        ln for ln in page.splitlines() if ln.startswith("| Eventide, 1 worker, orders only")
    )
    assert "| 26,000 | 30.0 | 2.00x | 8.67x |" in orders_only  # against 13,000/s and 3,000/s
    assert "**2.00x** Quix Streams" in page and "**1.15x** Quix Streams" in page
    assert "![Throughput and CPU per event](throughput.png)" in page


def test_scaling_page_gives_each_workers_cpu_per_event_and_flags_a_rebalance():
    def row(workers: int, rate: float, each: list[float], rebalanced: bool = False):
        return {
            "workers": workers,
            "events": 10_000,
            "drain_s": 10_000 / rate,
            "events_per_s": rate,
            "cpu_us_per_event": sum(each) / len(each),
            "per_worker": [{"cpu_us_per_event": c} for c in each],
            "cores": {"worker-1": 1.0, "broker": 0.5, "other": 0.1},
            "other_cores": 0.1,
            "processed_while_paused": 0,
            "rebalanced": rebalanced,
        }

    page = suite_report.scaling_markdown(
        _result(rows=[row(1, 10_000, [50.0]), row(2, 12_000, [55.0, 57.0], rebalanced=True)])
    )
    two = next(ln for ln in page.splitlines() if ln.startswith("| 2 |"))
    assert "1.20x" in two and "55.0, 57.0" in two and "rebalanced during the run" in two


def test_latency_page_gives_the_percentiles_in_ms():
    rows = [
        {"offered_per_s": 1000, "events": 5000, "p50_s": 0.004, "p95_s": 0.02, "p99_s": None,
         "lag_max": 12.0},
    ]  # fmt: skip
    page = suite_report.latency_markdown(_result(rows=rows))
    assert "| 1,000 | 5,000 | 4.0 | 20.0 | n/a | n/a | n/a | n/a | 12 |" in page


def test_latency_page_sets_eventide_beside_the_bare_consumer_of_the_same_window():
    floor = {"p50_s": 0.003, "p95_s": 0.006, "p99_s": 0.009, "samples": 5000}
    rows = [
        {"offered_per_s": 1000, "events": 5000, "p50_s": 0.012, "p95_s": 0.02, "p99_s": 0.03,
         "lag_max": 12.0, "floor": floor},
    ]  # fmt: skip
    page = suite_report.latency_markdown(_result(rows=rows))
    assert "| 1,000 | 5,000 | 12.0 | 20.0 | 30.0 | 3.0 | 9.0 | 9.0 | 12 |" in page


def _settings(**env: str) -> Settings:
    return Settings.from_env({"EVENTIDE_TOPIC_PREFIX": "bench-x-", **env})


def test_orders_only_counts_order_events_and_waits_for_nothing_else():
    sources, tail = timing.topics_of(_settings(), "orders")
    assert sources == ["bench-x-order-events"]
    assert "bench-x-customer-facts" not in tail


def test_orders_and_customers_count_both_sources_and_wait_for_the_facts():
    sources, tail = timing.topics_of(_settings(), "orders,customers")
    assert sorted(sources) == ["bench-x-order-events", "bench-x-user-events"]
    assert tail[0] == "bench-x-customer-facts"
    assert timing.table_sources(_settings(), "orders,customers") == {
        "orders": ["bench-x-order-events"],
        "customers": ["bench-x-user-events"],
    }


def test_an_unknown_projection_stops_the_run():
    with pytest.raises(SystemExit):
        timing.topics_of(_settings(), "orders,nope")


def test_the_first_record_mark_is_written_once(tmp_path, monkeypatch):
    path = tmp_path / "peer.first-record"
    assert mark.read_mark(path) is None
    monkeypatch.setattr(mark, "_path", str(path))
    mark.first_record()
    first = mark.read_mark(path)
    assert first is not None
    mark.first_record()
    assert mark.read_mark(path) == first


def test_scaling_waits_for_every_table_partition_owned_exactly_once(monkeypatch):
    workers = [_settings(EVENTIDE_WEB_PORT=str(port)) for port in (7001, 7002)]
    expected = {f"{t}[{p}]" for t in ("orders", "customers") for p in range(2)}
    health = {
        7001: {"status": "ready", "partitions": ["customers[0]", "orders[0]"]},
        7002: {"status": "ready", "partitions": ["customers[1]", "orders[1]"]},
    }
    monkeypatch.setattr(scaling, "_health", lambda s: health[s.web_port])
    assert scaling.assignment(workers, expected) == [
        ["customers[0]", "orders[0]"],
        ["customers[1]", "orders[1]"],
    ]
    health[7002] = {"status": "ready", "partitions": ["customers[0]", "orders[1]"]}
    assert scaling.assignment(workers, expected) is None  # customers[1] unowned
    health[7002] = {"status": "starting", "partitions": []}
    assert scaling.assignment(workers, expected) is None


def test_the_index_gives_each_kept_runs_main_figures():
    rows = {"eventide_orders": _row(26_000, 1.0, 30.0), "quix_streams": _row(26_000, 2.0, 70.0)}
    assert report.HEADLINES["throughput"]({"rows": rows}) == (
        "Eventide orders only 26,000/s (2.00x Quix Streams)"
    )
    scaled = [
        {"workers": 1, "events_per_s": 8000.0, "cpu_us_per_event": 70.0},
        {"workers": 2, "events_per_s": 9000.0, "cpu_us_per_event": 75.4},
    ]
    assert report.HEADLINES["scaling"]({"rows": scaled}) == (
        "1 worker: 8,000/s, 70 µs CPU/event; 2 workers: 9,000/s, 75 µs CPU/event"
    )
    audit = {"lost": 0, "double_applied": 0, "other": 0}
    crash = {"orders_audit": audit, "customers_audit": audit, "kills": 5}
    assert report.HEADLINES["crash"](crash) == (
        "orders: 0 lost, 0 double-applied; customers: 0 lost, 0 double-applied (5 kills)"
    )
