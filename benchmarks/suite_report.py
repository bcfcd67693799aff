"""The suite's reports: a markdown page and PNG plots per scenario (see benchmarks/__main__.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import color_of, hbars, header, ratio

NAMES = {
    "eventide": "Eventide, 1 worker",
    "eventide_orders": "Eventide, 1 worker, orders only",
    "quix_streams": "Quix Streams",
    "plain_aiokafka": "plain aiokafka",
    "naive_faust": "naive Faust agent",
}

WHAT = {
    "quix_streams": "orders (RocksDB state + its changelog, each new view to a topic)",
    "plain_aiokafka": "orders in a dict: no state store, no changelog, no output (the ceiling)",
    "naive_faust": "orders, one Faust table write (and changelog record) per event",
}

TIMING = (
    "Each rate is every event the implementation had to process, from the moment it fetched "
    "its first record (an Eventide worker's `/health` turning ready; a peer's own mark) to "
    "the poll (every 100 ms) at which the broker shows its group's last commit; start-up "
    "and group join are left out (`benchmarks/timing.py`). CPU µs/event is the process's "
    "CPU time over that window (`/proc/<pid>/stat`) per event; *other cores* is what every "
    "other program on the machine used meanwhile (broker and suite excluded): the noise."
)


def _name(name: str, row: dict[str, Any]) -> str:
    """An implementation's name in tables and plots; Eventide's says its projections."""
    if name == "eventide":
        return f"{NAMES[name]}, {' + '.join(row.get('projections', '').split(','))}"
    return NAMES[name]


def _what(name: str, row: dict[str, Any]) -> str:
    if name == "eventide":
        maintained = " + ".join(row.get("projections", "").split(","))
        return f"{maintained} (RocksDB tables and their changelogs, customer-facts)"
    if name == "eventide_orders":
        return "orders (RocksDB, its changelog; customer-facts emitted, not read)"
    return WHAT[name]


def throughput_report(result: dict[str, Any], out: Path) -> str:
    """The throughput scenario's page; writes ``throughput.png`` beside it."""
    throughput_plot(result, out / "throughput.png")
    return throughput_markdown(result)


def throughput_markdown(result: dict[str, Any]) -> str:
    """The throughput scenario's page."""
    rows: dict[str, Any] = result["rows"]
    quix = rows.get("quix_streams", {}).get("events_per_s")
    naive = rows.get("naive_faust", {}).get("events_per_s")
    lines = header("Throughput: Eventide and its peers on the same events", result)
    lines += [
        "| implementation | what it maintains | events | seconds | events/s | "
        "CPU µs/event | x Quix Streams | x naive Faust | other cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {_name(name, row)} | {_what(name, row)} | {row['events']:,} | "
            f"{row['drain_s']:.2f} | {row['events_per_s']:,.0f} | "
            f"{row['cpu_us_per_event']:.1f} | {ratio(row['events_per_s'], quix)} | "
            f"{ratio(row['events_per_s'], naive)} | {row['other_cores']:.2f} |"
        )
    lines += [""]
    if quix and ("eventide_orders" in rows or "eventide" in rows):
        pairs = [
            f"{_name(n, rows[n])}: **{ratio(rows[n]['events_per_s'], quix)}** Quix Streams"
            for n in ("eventide_orders", "eventide")
            if n in rows
        ]
        lines += [
            "Against Quix Streams on the orders projection, same run: " + "; ".join(pairs) + ".",
            "",
        ]
    lines += [TIMING, ""]
    if "eventide" in rows and "eventide_orders" in rows:
        lines += [
            "The peers read `order-events` only. *Eventide, orders only* "
            "(`EVENTIDE_PROJECTIONS=orders`) is the same projection on the same events; "
            "*Eventide, 1 worker* also maintains the customers read model through the "
            "customer-facts topic it writes and reads back, so it does more work per event. "
            "Eventide publishes the orders read model's changes once, on `order-views`, which "
            "is also the table's changelog (one record per changed key per batch); Quix "
            "Streams writes its state changelog and, for every applied event, the new view to "
            "a views topic.",
            "",
        ]
    checks = [
        f"{_name(n, r)} {r['verified']['checked']:,} checked, {r['verified']['mismatches']} "
        "mismatches"
        for n, r in rows.items()
        if "verified" in r
    ]
    rec = result["recovery"]
    lines += [
        f"Read models compared over HTTP with the state computed offline: {'; '.join(checks)}.",
        "",
        f"Recovery of the tables from their changelogs ({rec['restored_records'] or 0:,.0f} "
        f"records) after the worker's RocksDB was deleted: ready {rec['restart_to_ready_s']:.1f} s "
        f"after the process started (`eventide_recovery_seconds` "
        f"{rec['eventide_recovery_seconds'] or 0:.1f} s); {rec['verified']['checked']:,} read "
        f"models checked, {rec['verified']['mismatches']} mismatches.",
        "",
        "![Throughput and CPU per event](throughput.png)",
        "",
    ]
    return "\n".join(lines)


def throughput_plot(result: dict[str, Any], path: Path) -> None:
    """Events/s and CPU µs/event of every implementation, side by side."""
    rows: dict[str, Any] = result["rows"]
    quix = rows.get("quix_streams", {}).get("events_per_s")
    naive = rows.get("naive_faust", {}).get("events_per_s")
    base = "Quix Streams" if quix else "naive Faust"
    hbars(
        path,
        "Drain of the same pre-loaded Avro events, one process each",
        [
            (
                f"events/s (higher is better; ratio to {base} of the same run)",
                [
                    (
                        _name(n, r),
                        r["events_per_s"],
                        f"{r['events_per_s']:,.0f}/s  {ratio(r['events_per_s'], quix or naive)}",
                    )
                    for n, r in rows.items()
                ],
            ),
            (
                "CPU µs per event of the process (lower is better)",
                [
                    (_name(n, r), r["cpu_us_per_event"], f"{r['cpu_us_per_event']:.1f} µs")
                    for n, r in rows.items()
                ],
            ),
        ],
    )


def scaling_report(result: dict[str, Any], out: Path) -> str:
    """The scaling scenario's page; writes ``throughput.png`` beside it."""
    _scaling_plot(result["rows"], out / "throughput.png", result["args"]["partitions"])
    return scaling_markdown(result)


def scaling_markdown(result: dict[str, Any]) -> str:
    """The scaling scenario's page."""
    rows: list[dict[str, Any]] = result["rows"]
    ones = {r.get("standby_replicas"): r["events_per_s"] for r in rows if r["workers"] == 1}
    args = result["args"]
    cluster = args.get("cluster") or 0
    where = (
        f" on a {cluster}-broker cluster (replication factor 3, min.insync.replicas 2)"
        if cluster
        else ""
    )
    standby = bool(args.get("standby"))
    lines = header(
        f"Scaling: Eventide worker processes of one group on {args['partitions']} "
        f"partitions{where}",
        result,
    )
    lines += [
        "| worker processes | "
        + ("standby replicas | " if standby else "")
        + "events | seconds | events/s | x 1 worker | "
        "CPU µs/event, each worker | CPU µs/event, all workers | cores: workers / broker"
        + ("s" if cluster else "")
        + " / other | notes |",
        "|---:|" + ("---:|" if standby else "") + "---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        cores = r["cores"]
        workers_cores = sum(v for k, v in cores.items() if k.startswith("worker-"))
        each = ", ".join(
            f"{w['cpu_us_per_event']:.1f}" if w["cpu_us_per_event"] else "-"
            for w in r["per_worker"]
        )
        notes = []
        if r["rebalanced"]:
            notes.append("rebalanced during the run: shares per worker are off")
        if r["processed_while_paused"]:
            notes.append(f"{r['processed_while_paused']:,} processed before the start")
        one = ones.get(r.get("standby_replicas"))
        lines.append(
            f"| {r['workers']} | "
            + (f"{r.get('standby_replicas')} | " if standby else "")
            + f"{r['events']:,} | {r['drain_s']:.2f} | "
            f"{r['events_per_s']:,.0f} | {ratio(r['events_per_s'], one)} | {each} | "
            f"{r['cpu_us_per_event']:.1f} | {workers_cores:.2f} / {cores.get('broker', 0):.2f} / "
            f"{cores['other']:.2f} | {'; '.join(notes)} |"
        )
    lines += ["", _cpu_sentence(rows)] if rows else []
    lines += [
        "",
        f"Projections: {args['projections']}. Each row drains the same workload "
        "in fresh topics. The workers start, join the group and are paused "
        "(`POST /admin/pause`) before the events are published; the run starts "
        "when they are resumed together and ends at the poll (every 100 ms) at which "
        "the group has committed every source event and customer fact. "
        "*Each worker*: the worker process's CPU time over the run divided by the events of "
        "the source partitions it owned; *all workers*: their CPU time summed, per event. "
        "On a machine with fewer cores than workers + broker, the total cannot grow with "
        "the workers: what the rows show then is whether the CPU cost of an event "
        "stays the same when the partitions are split (`benchmarks/scaling.py`)."
        + (
            " On the cluster every topic has three replicas and producers wait for two "
            "(acks=all, min.insync.replicas 2); *x 1 worker* compares rows with the same "
            "standby count. A standby replica (EVENTIDE_STANDBY_REPLICAS) follows the "
            "changelogs of partitions its worker does not own; with one worker there is "
            "nobody to be a standby."
            if cluster
            else ""
        ),
        "",
        "![Events/s and CPU per event by worker processes](throughput.png)",
        "",
    ]
    return "\n".join(lines)


def _cpu_sentence(rows: list[dict[str, Any]]) -> str:
    """How each worker's CPU per event moved with the number of workers, in words
    (against the first row of the same standby count)."""
    standbys = len({r.get("standby_replicas") for r in rows}) > 1
    bases: dict[Any, dict[str, Any]] = {}
    parts = []
    for r in rows:
        base = bases.setdefault(r.get("standby_replicas"), r)
        each = [w["cpu_us_per_event"] for w in r["per_worker"] if w["cpu_us_per_event"]]
        spread = f"{min(each):.0f}" if len(each) < 2 else f"{min(each):.0f}-{max(each):.0f}"
        change = r["cpu_us_per_event"] / base["cpu_us_per_event"] - 1
        parts.append(
            f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}"
            + (f" ({r.get('standby_replicas')} standby)" if standbys else "")
            + f": {spread} µs"
            + (" each" if len(each) > 1 else "")
            + ("" if r is base else f" ({change:+.0%} against {base['workers']})")
        )
    return "CPU per event of each worker in this run: " + "; ".join(parts) + "."


def _scaling_plot(rows: list[dict[str, Any]], path: Path, partitions: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    standbys = len({r.get("standby_replicas") for r in rows}) > 1
    labels = [
        str(r["workers"]) + (f"\n{r.get('standby_replicas')} standby" if standbys else "")
        for r in rows
    ]
    ones = {r.get("standby_replicas"): r["events_per_s"] for r in rows if r["workers"] == 1}
    bars = left.bar(labels, [r["events_per_s"] for r in rows], color=color_of("eventide"))
    left.bar_label(
        bars,
        labels=[
            f"{r['events_per_s']:,.0f}/s\n"
            f"{r['events_per_s'] / ones.get(r.get('standby_replicas'), r['events_per_s']):.2f}x"
            for r in rows
        ],
        fontsize=8,
    )
    left.set_xlabel("Eventide worker processes (one consumer group)")
    left.set_ylabel("events/s, all workers together")
    left.set_ylim(0, max(r["events_per_s"] for r in rows) * 1.3 if rows else 1)
    left.set_title("Total throughput")
    for i, r in enumerate(rows):
        each = [w["cpu_us_per_event"] for w in r["per_worker"] if w["cpu_us_per_event"]]
        right.scatter([i] * len(each), each, color=color_of("eventide"), alpha=0.7, zorder=3)
    right.plot(
        range(len(rows)),
        [r["cpu_us_per_event"] for r in rows],
        color="black",
        marker="_",
        markersize=20,
        linestyle=":",
        label="all workers' CPU / all events",
    )
    right.set_xticks(range(len(rows)), labels)
    right.set_xlabel("Eventide worker processes (one consumer group)")
    right.set_ylabel("CPU µs per event")
    right.set_ylim(bottom=0)
    right.set_title("CPU per event: each worker (dots), all together (line)")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Scaling by partitions ({partitions} partitions, fresh topics per row)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latency_report(result: dict[str, Any], out: Path) -> str:
    """The latency scenario's page; writes ``latency.png`` beside it."""
    _latency_plot(result["rows"], out / "latency.png")
    return latency_markdown(result)


def latency_markdown(result: dict[str, Any]) -> str:
    """The latency scenario's page."""
    rows: list[dict[str, Any]] = result["rows"]
    args = result["args"]
    lines = header("Latency: one Eventide worker at fixed offered loads", result)
    lines += [
        "| offered events/s | events | p50 ms | p95 ms | p99 ms | bare consumer p50 ms "
        "| bare consumer p99 ms | Eventide p50 minus bare p50, ms | max lag (records) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ms = [_ms(row[k]) for k in ("p50_s", "p95_s", "p99_s")]
        floor = row.get("floor") or {}
        bare = [_ms(floor.get(k)) for k in ("p50_s", "p99_s")]
        added = (
            _ms(row["p50_s"] - floor["p50_s"])
            if row["p50_s"] is not None and floor.get("p50_s") is not None
            else "n/a"
        )
        lines.append(
            f"| {row['offered_per_s']:,} | {row['events']:,} | {ms[0]} | {ms[1]} | {ms[2]} | "
            f"{bare[0]} | {bare[1]} | {added} | {row['lag_max']:,.0f} |"
        )
    lines += [
        "",
        f"Projections: {args['projections']}. A producer in the suite's process publishes "
        f"fresh order lifecycles (JSON) at each rate for {args['rate_seconds']:g} s, after a "
        "warm-up at the first rate; the percentiles are interpolated inside the buckets of "
        "the worker's `eventide_end_to_end_latency_seconds` histogram (Kafka record timestamp "
        "→ read model written to RocksDB), as Prometheus' `histogram_quantile` does; the lag "
        "is the worker's `eventide_consumer_lag_records`, sampled every 0.5 s "
        "(`benchmarks/latency.py`). The producer shares the machine's cores with the worker "
        "and the broker.",
        "",
        "The baseline of the same run is the latency floor: before the worker starts, the "
        "same producer offers the same rates to topics of their own, and a bare aiokafka group "
        "consumer in a process of its own, no decode, no state, no output, notes how old each "
        "record is when `getmany` hands it over (exact percentiles; `benchmarks/latency_floor.py`"
        "). It is what the producer, the broker and one fetch cost on this machine; "
        "Eventide adds its fetch, the batch, the outputs' and the changelog's round trips to "
        "the broker (acks=all) and the RocksDB write.",
        "",
        "![Latency percentiles by offered load](latency.png)",
        "",
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.1f}"


def _latency_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, style, marker, color in (
        ("p50_s", "p50", "-", "o", "navy"),
        ("p95_s", "p95", "--", "s", "tab:blue"),
        ("p99_s", "p99", ":", "^", "deepskyblue"),
    ):
        points = [(r["offered_per_s"], r[key] * 1000) for r in rows if r[key] is not None]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=marker,
            linestyle=style,
            color=color,
            label=f"Eventide {label}",
        )
    for key, label, style in (("p50_s", "p50", "-"), ("p99_s", "p99", ":")):
        points = [
            (r["offered_per_s"], r["floor"][key] * 1000)
            for r in rows
            if r.get("floor") and r["floor"].get(key) is not None
        ]
        if points:
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="x",
                linestyle=style,
                color="gray",
                label=f"bare consumer, record age {label} (floor)",
            )
    ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered load, events/s (as sent by the producer)")
    ax.set_ylabel("end-to-end latency, ms (log scale)")
    ax.set_title("Eventide, one worker: event timestamp → read model in RocksDB")
    ax.grid(which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
