"""The security scenario's bookkeeping: rows, ratios, factors, its page and its commands.

Made-up results, no broker and nothing timed (benchmarks/security.py runs them).
"""

from __future__ import annotations

import json

import pytest

from benchmarks import commands, report, security, security_report

MACHINE = {
    "cpu": "Test CPU",
    "cores": 2,
    "memory_gib": 24.0,
    "python": "3.11.7",
    "kafka": "4.1.1, one KRaft node on the same machine",
    "commit": "abc1234",
    "tree_modified": False,
    "load_average": ["3.10", "2.20", "1.30"],
}


def _row(events_per_s: float, cpu_us: float, commands_per_s: float, api_us: float) -> dict:
    return {
        "drain": {
            "events": 100_000,
            "drain_s": 100_000 / events_per_s,
            "events_per_s": events_per_s,
            "cpu_us_per_event": cpu_us,
            "start_s": 4.0,
            "other_cores": 0.25,
            "mismatches": 0,
            "read_models_checked": 1000,
        },
        "commands": {
            "commands": 3000,
            "concurrency": 16,
            "seconds": 3000 / commands_per_s,
            "commands_per_s": commands_per_s,
            "latency_p50_ms": 20.0,
            "latency_p99_ms": 80.0,
            "relay_lag_p50_ms": 40.0,
            "relay_lag_p99_ms": 120.0,
            "api_cpu_us_per_command": api_us,
            "cores": {"api": 0.8, "other": 0.4},
        },
    }


def _result(**rows: dict) -> dict:
    return {
        "scenario": "security",
        "command": "python -m benchmarks.security --reference",
        "when": "2026-12-01 22:00:00 UTC",
        "machine": MACHINE,
        "rows": rows,
    }


THREE = _result(
    plain=_row(8000.0, 100.0, 1000.0, 700.0),
    **{
        "plain+pii": _row(7200.0, 110.0, 800.0, 900.0),
        "secured+pii": _row(4000.0, 200.0, 500.0, 1400.0),
    },
)


def test_each_figure_is_given_per_row_with_the_secured_over_plaintext_ratio():
    lines = {line["label"]: line for line in security_report.comparison(THREE)}
    drain = lines["drain, events/s"]
    assert drain["values"] == {"plain": 8000.0, "plain+pii": 7200.0, "secured+pii": 4000.0}
    assert drain["ratio"] == pytest.approx(0.5)
    assert lines["commands/s"]["ratio"] == pytest.approx(0.5)
    assert lines["API CPU µs/command"]["ratio"] == pytest.approx(2.0)
    assert lines["drain, worker CPU µs/event"]["ratio"] == pytest.approx(2.0)


def test_without_the_plaintext_row_there_is_no_ratio_rather_than_a_wrong_one():
    only = _result(**{"secured+pii": _row(4000.0, 200.0, 500.0, 1400.0)})
    assert all(line["ratio"] is None for line in security_report.comparison(only))


def test_each_factor_is_the_row_with_it_over_the_row_without_it():
    factors = {
        (f["factor"], f["with"], f["without"]): f["ratios"] for f in security_report.factors(THREE)
    }
    # the pairs whose two rows were measured, and no other
    assert set(factors) == {
        ("encryption", "plain+pii", "plain"),
        ("TLS + SCRAM + ACLs", "secured+pii", "plain+pii"),
        ("all together", "secured+pii", "plain"),
    }
    encryption = factors[("encryption", "plain+pii", "plain")]
    assert encryption["events_per_s"] == pytest.approx(0.9)
    assert encryption["commands_per_s"] == pytest.approx(0.8)
    tls = factors[("TLS + SCRAM + ACLs", "secured+pii", "plain+pii")]
    assert tls["events_per_s"] == pytest.approx(4000 / 7200)
    assert tls["api_cpu_us_per_command"] == pytest.approx(1400 / 900)


def test_the_page_puts_the_rows_side_by_side_with_the_ratio_and_the_machine():
    page = security_report.security_markdown(THREE)
    assert "python -m benchmarks.security --reference" in page
    assert "load average before the run 3.10/2.20/1.30" in page
    assert (
        "| figure | plaintext | plaintext + encryption | TLS + SCRAM + ACLs + encryption "
        "| secured / plaintext |"
    ) in page
    assert "| drain, events/s | 8,000 | 7,200 | 4,000 | 0.50x |" in page
    assert "| commands/s | 1,000 | 800 | 500 | 0.50x |" in page
    assert "| encryption | plain+pii / plain | 0.90x | 1.10x | 0.80x | 1.29x |" in page
    assert "![Drain and command rates, CPU per event and per command](throughput.png)" in page


def test_the_index_line_gives_both_rates_secured_over_plaintext():
    assert report.HEADLINES["security"](THREE) == (
        "TLS + SCRAM + encryption / plaintext: drain 0.50x (4,000 vs 8,000 events/s), "
        "commands 0.50x (500 vs 1,000 commands/s)"
    )


def test_the_index_lists_the_security_run(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REFERENCE", tmp_path)
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "result.json").write_text(json.dumps(THREE))
    report.write_index()
    index = (tmp_path / "README.md").read_text()
    line = next(ln for ln in index.splitlines() if ln.startswith("| security |"))
    assert "commit abc1234" in line and "drain 0.50x" in line


def test_a_customer_lifecycle_creates_the_customer_then_orders_for_them():
    steps = commands.customer_lifecycle("run-1-7")
    assert [path for path, _ in steps] == [
        "/users",
        "/orders",
        "/orders/run-1-7/payment",
        "/orders/run-1-7/shipment",
    ]
    user = json.loads(steps[0][1])
    assert user == {
        "userId": "u-run-1-7",
        "email": "run-1-7@example.com",
        "name": "Customer run-1-7",
    }
    assert json.loads(steps[1][1])["customerId"] == "u-run-1-7"
    assert json.loads(steps[1][1])["orderId"] == "run-1-7"


def test_the_secured_broker_is_on_the_plaintext_port_plus_8():
    assert security.secure_url("kafka://127.0.0.1:39500") == "kafka://127.0.0.1:39508"


def test_an_unknown_row_is_refused_before_anything_starts(capsys):
    with pytest.raises(SystemExit):
        security.main(["--rows", "plain,tls"])
    assert "--rows: unknown tls" in capsys.readouterr().err


def test_a_run_on_a_machine_busier_than_its_cores_says_it_was_shared():
    page = security_report.security_markdown(THREE)
    assert "**The machine was shared**: load average 3.10 (1 min) before the run on 2 cores" in page
    quiet = {**THREE, "machine": {**MACHINE, "load_average": ["0.40", "0.30", "0.20"]}}
    assert "shared" not in security_report.security_markdown(quiet)
