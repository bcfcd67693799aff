"""The benchmark suite: Eventide and its peers in one run, on the same data.

    python -m benchmarks --orders 20000 --customers 5000

Against the real broker (``--broker``; started when it does not answer):

1. drain: one Eventide worker turns a pre-loaded backlog into both read models;
2. recovery: its local RocksDB is deleted; time until the restarted worker
   has restored both tables from their changelogs and is ready;
3. peers on the same order events, each with the same orders projection:
   the naive Faust agent (``--naive-events`` of them; it is slow), a Quix
   Streams application with RocksDB state, and the ceiling: a plain aiokafka
   consumer decoding into a dict;
4. scaling: the same backlog (fresh topics) drained by two worker processes;
5. latency: p50/p95/p99 end-to-end at fixed offered loads (``--rates``), read
   from the worker's /metrics histogram, until the producer or the worker
   saturates.

Writes ``bench-<time>.json``, ``.md`` and ``.png`` plots to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventide.tools import devbroker
from streams.catalogue import ORDER_EVENTS
from streams.settings import Settings
from streams.topics import ensure_topics

from .drain import RESULTS, ROOT, Progress, log, ready, start, stop, wait_until
from .latency import latency_at_loads, scrape
from .scaling import drain_workers, stop_all
from .workload import make_workload, publish


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, Python and Kafka versions."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["memory_gib"] = round(int(mem) / 1024 / 1024, 1)
        model = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        info["cpu"] = model[0].split(":", 1)[1].strip() if model else platform.processor()
    except OSError:
        pass
    info["kafka"] = "4.1.1, one KRaft node on the same machine"
    return info


def drain_peer(
    name: str,
    module: str,
    settings: Settings,
    events: int,
    available: int,
    workdir: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Run a peer until its group has committed ``events`` more order events (of ``available``).

    Timed from its first commit, so start-up and group join are left out.
    """
    topic = [settings.topic(ORDER_EVENTS.name)]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    proc = start([sys.executable, "-m", module], settings, workdir / f"{name}.log")
    try:
        first, t0 = poll(progress, settings.app_id, topic, lambda n: n > 0, 180, proc, name)
        goal = min(first + events, available)
        done, t1 = poll(progress, settings.app_id, topic, lambda n: n >= goal, 3600, proc, name)
        elapsed = t1 - t0
    finally:
        stop(proc)
    rate = (done - first) / elapsed
    log(f"{name}: {done - first:,} events in {elapsed:.1f}s = {rate:,.0f}/s")
    return {"events": done - first, "drain_s": elapsed, "events_per_s": rate}


def poll(
    progress: Progress,
    group: str,
    topic: list[str],
    until: Callable[[int], bool],
    timeout: float,
    proc: Any,
    name: str,
) -> tuple[int, float]:
    """Poll the group's committed offsets every 50 ms; (committed, when) once ``until`` holds."""
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name}: the process exited with {proc.returncode}")
        done = progress(group, topic)[0]
        if until(done):
            return done, time.monotonic()
        if time.monotonic() - shown > 5:
            log(f"  {name}: {done:,} events committed")
            shown = time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"{name}: not done after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=50_000)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--naive-events", type=int, default=5_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument("--rates", default="1000,2000,4000,8000,16000", help="offered events/s")
    ap.add_argument("--rate-seconds", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=36080, help="first of 5 web ports used")
    ap.add_argument("--skip", default="", help="comma-separated: peers,scaling,latency")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    workdir = Path(tempfile.mkdtemp(prefix="eventide-bench-"))
    base = Settings.from_env(
        {"EVENTIDE_BROKER_URL": args.broker, "EVENTIDE_STATE_DIR": str(ROOT / ".eventide")}
    )
    started_broker = not devbroker.is_answering(base)
    if started_broker:
        devbroker.start(base, log)

    def settings(app: str, tag: str, port: int, data: str | None = None) -> Settings:
        return Settings.from_env(
            {
                "EVENTIDE_BROKER_URL": args.broker,
                "EVENTIDE_APP_ID": f"{app}-{tag}",
                "EVENTIDE_TOPIC_PREFIX": f"bench-{tag}-",
                "EVENTIDE_PARTITIONS": str(args.partitions),
                "EVENTIDE_DATA_DIR": str(workdir / (data or app) / tag),
                # its own notifications file (the file sink indexes it at start-up)
                "EVENTIDE_STATE_DIR": str(workdir / "state" / app / tag),
                "EVENTIDE_WEB_PORT": str(port),
                "EVENTIDE_METRICS_INTERVAL": "1",
            }
        )

    result: dict[str, Any] = {"scenario": "suite", "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result["machine"] = machine()
    result["args"] = vars(args)
    procs: list[Any] = []
    try:
        log(f"generating {args.orders:,} orders for {args.customers:,} customers")
        work = make_workload(args.orders, args.customers, seed=1)
        total = len(work.users) + len(work.orders)
        order_events = len(work.orders)
        result["events"] = {"total": total, "order_events": order_events}

        def preload(tag: str) -> Settings:
            s = settings("eventide", tag, args.port)
            asyncio.run(ensure_topics(s))
            t = time.monotonic()
            asyncio.run(publish(s, work, "avro"))
            log(
                f"pre-loaded {total:,} Avro events into bench-{tag}-* "
                f"in {time.monotonic() - t:.1f}s"
            )
            return s

        # 1. drain, one worker
        tag = uuid.uuid4().hex[:8]
        one = preload(tag)
        progress = Progress(one)
        log("drain: one eventide worker, both read models")
        d = drain_workers([one], total, workdir, progress)
        procs = d.pop("procs")
        log(f"eventide: {d['events']:,} events in {d['drain_s']:.1f}s = {d['events_per_s']:,.0f}/s")
        result["eventide"] = d
        stop_all(procs)

        # 2. recovery from changelogs
        log("recovery: deleting local RocksDB, restarting from the changelogs")
        shutil.rmtree(one.data_dir)
        t = time.monotonic()
        proc = start([sys.executable, "-m", "eventide.cli", "worker"], one, workdir / "rebuild.log")
        procs = [proc]
        wait_until(lambda: ready(one), 1800, "recovery", proc)
        recovery_s = time.monotonic() - t
        reported = scrape(one.web_url)
        metrics_text = _fetch(f"{one.web_url}/metrics")
        stop(proc)
        result["recovery"] = {
            "restart_to_ready_s": recovery_s,
            "eventide_recovery_seconds": _sample(metrics_text, "eventide_recovery_seconds"),
            "restored_records": _sample(metrics_text, "eventide_changelog_restored_records_total"),
        }
        del reported
        log(f"recovery: ready {recovery_s:.1f}s after start; {result['recovery']}")

        # 3. peers on the same order events
        peers: dict[str, Any] = {}
        if "peers" not in skip:
            for name, module, events in (
                ("plain_aiokafka", "benchmarks.peers.plain_aiokafka", order_events),
                ("quix_streams", "benchmarks.peers.quix_app", order_events),
                (
                    "naive_faust",
                    "benchmarks.peers.naive_faust",
                    min(args.naive_events, order_events),
                ),
            ):
                log(f"peer {name}: draining {events:,} order events")
                peer = settings(name.replace("_", "-"), tag, args.port + 1, data=name)
                peers[name] = drain_peer(
                    name, module, peer, events, order_events, workdir, progress
                )
        result["peers"] = peers
        progress.close()

        # 4. scaling to two workers
        if "scaling" not in skip:
            tag2 = uuid.uuid4().hex[:8]
            two = preload(tag2)
            second = settings("eventide", tag2, args.port + 2, data="eventide-2")
            progress = Progress(two)
            log("scaling: two eventide workers")
            s2 = drain_workers([two, second], total, workdir, progress)
            procs = s2.pop("procs")
            stop_all(procs)
            progress.close()
            log(
                f"two workers: {s2['events']:,} events in {s2['drain_s']:.1f}s = "
                f"{s2['events_per_s']:,.0f}/s"
            )
            result["scaling"] = {"1": d, "2": s2}

        # 5. latency at offered loads
        if "latency" not in skip:
            tag3 = uuid.uuid4().hex[:8]
            lat = settings("eventide", tag3, args.port + 3)
            asyncio.run(ensure_topics(lat))
            proc = start([sys.executable, "-m", "eventide.cli", "worker"], lat, workdir / "lat.log")
            procs = [proc]
            wait_until(lambda: ready(lat), 120, "latency worker start", proc)
            rates = [int(r) for r in args.rates.split(",") if r]
            log(f"latency: offered loads {rates} for {args.rate_seconds:.0f}s each")
            result["latency"] = latency_at_loads(lat, rates, args.rate_seconds, log)
            stop(proc)
    finally:
        stop_all(procs)
        if started_broker:
            devbroker.stop(base, log)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    table = report(result, " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]))
    (RESULTS / f"bench-{stamp}.md").write_text(table)
    plots(result, RESULTS / f"bench-{stamp}")
    print(table)
    print(f"results: {out} (+ .md, -throughput.png, -latency.png)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _fetch(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _sample(text: str, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return None


def report(result: dict[str, Any], command: str) -> str:
    """The markdown table of one run."""
    m = result["machine"]
    e = result["eventide"]
    lines = [
        f"`{command}` — {result['when']}; {m.get('cores')} cores ({m.get('cpu', '?')}), "
        f"{m.get('memory_gib', '?')} GiB, Python {m['python']}, Kafka {m['kafka']}.",
        "",
        "| implementation | what it maintains | events | seconds | events/s | ratio to Eventide |",
        "|---|---|---:|---:|---:|---:|",
        f"| Eventide, 1 worker | orders + customers (RocksDB, changelogs, outputs) | "
        f"{e['events']:,} | {e['drain_s']:.1f} | {e['events_per_s']:,.0f} | 1.00 |",
    ]
    what = {
        "plain_aiokafka": "orders in a dict (no state store, no changelog): the ceiling",
        "quix_streams": "orders in Quix RocksDB state + changelog",
        "naive_faust": "orders, one Faust table write per event",
    }
    for name, p in result.get("peers", {}).items():
        lines.append(
            f"| {name.replace('_', ' ')} | {what[name]} | {p['events']:,} | {p['drain_s']:.1f} | "
            f"{p['events_per_s']:,.0f} | {p['events_per_s'] / e['events_per_s']:.2f} |"
        )
    if "scaling" in result:
        s2 = result["scaling"]["2"]
        lines.append(
            f"| Eventide, 2 workers | orders + customers | {s2['events']:,} | "
            f"{s2['drain_s']:.1f} | "
            f"{s2['events_per_s']:,.0f} | {s2['events_per_s'] / e['events_per_s']:.2f} |"
        )
    r = result["recovery"]
    lines += [
        "",
        f"Recovery of both tables from changelogs ({r['restored_records'] or 0:,.0f} records): "
        f"ready {r['restart_to_ready_s']:.1f}s after the process started "
        f"(eventide_recovery_seconds {r['eventide_recovery_seconds'] or 0:.1f}s).",
    ]
    if result.get("latency"):
        lines += [
            "",
            "| offered events/s | p50 ms | p95 ms | p99 ms | max lag (records) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in result["latency"]:
            ms = [
                ("n/a" if row[k] is None else f"{row[k] * 1000:,.0f}")
                for k in ("p50_s", "p95_s", "p99_s")
            ]
            lines.append(
                f"| {row['offered_per_s']:,} | {ms[0]} | {ms[1]} | {ms[2]} | "
                f"{row['lag_max']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], prefix: Path) -> None:
    """Throughput bars and latency-versus-load lines as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["Eventide (1 worker)"]
    rates = [result["eventide"]["events_per_s"]]
    if "scaling" in result:
        names.append("Eventide (2 workers)")
        rates.append(result["scaling"]["2"]["events_per_s"])
    for name, p in result.get("peers", {}).items():
        names.append(name.replace("_", " "))
        rates.append(p["events_per_s"])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names[::-1], rates[::-1], color="tab:blue")
    ax.set_xlabel("events/s (drain of a pre-loaded backlog)")
    ax.set_title(f"Throughput, {result['machine'].get('cores')} cores, Kafka 4.1.1")
    fig.tight_layout()
    fig.savefig(f"{prefix}-throughput.png", dpi=100)
    plt.close(fig)
    if result.get("latency"):
        rows = result["latency"]
        fig, ax = plt.subplots(figsize=(8, 4))
        for key, label in (("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99")):
            ax.plot(
                [r["offered_per_s"] for r in rows],
                [(r[key] or 0) * 1000 for r in rows],
                marker="o",
                label=label,
            )
        ax.set_xlabel("offered load, events/s")
        ax.set_ylabel("end-to-end latency, ms")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Eventide end-to-end latency (event timestamp → RocksDB)")
        fig.tight_layout()
        fig.savefig(f"{prefix}-latency.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
