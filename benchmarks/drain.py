"""Drain benchmark: how fast one worker turns a pre-loaded backlog into read models.

    python -m benchmarks.drain                  # 1,030,958 events: 390k orders, 20k customers
    python -m benchmarks.drain --orders 50000   # a quick run

Pre-loads the workload (user.created per customer, order lifecycles with
duplicates) into fresh topics, then, in the same run and on the same data:

0. the ceiling: a bare aiokafka consumer reads every pre-loaded event (no
   state, no output), once without and once with Eventide's decoder; no
   Python worker can go faster than the second rate on this machine; then a
   bare confluent-kafka (librdkafka) consumer reads them all once, the
   read-only ceiling of the engine's default client (EVENTIDE_KAFKA_CLIENT);
1. Eventide: one ``eventide worker`` drains both read models (orders, and
   customers through the customer-facts repartition topic); ``--projections``
   adds notifications (the issue's benchmark is the two read models);
   ``--kafka-client`` (default: $EVENTIDE_KAFKA_CLIENT, else aiokafka) picks
   the engine's Kafka client;
2. the naive Faust agent (one table write per event) drains ``--naive-events``
   of the same order events (it is slow; its rate is what matters);
3. the rebuild: Eventide's local RocksDB is deleted and the worker restarts,
   restoring both tables from their changelogs.

A sample of read models is checked over HTTP against the state computed
offline. Results (README.md with the table, result.json, throughput.png) go to
benchmarks/results/drain-<time>/, or with ``--reference`` to
docs/benchmarks/drain/ (:mod:`benchmarks.report`); how the drains are timed:
:mod:`benchmarks.timing`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as RdPartition

from eventide.tools import devbroker
from eventide.tools.demo import fetch_json
from schemas.codecs import EventCodec
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.kafka_clients import aiokafka_options, confluent_options
from streams.settings import Settings
from streams.topics import ensure_topics

from . import report
from .procs import (
    ROOT,
    Progress,
    free_port,
    http_settings,
    log,
    ready,
    start,
    stop,
    stop_started,
    wait_until,
)
from .timing import READY_POLL_S, drain_peer, drain_worker, topics_of
from .workload import expected_state, make_workload, publish


async def _read_all(settings: Settings, total: int, decode: bool) -> dict[str, float]:
    topics = [settings.topic(ORDER_EVENTS.name), settings.topic(USER_EVENTS.name)]
    consumer = AIOKafkaConsumer(
        *topics,
        **aiokafka_options(settings),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    codec = EventCodec(limits=settings.limits)
    await consumer.start()
    try:
        seen, t0, cpu0 = 0, 0.0, 0.0
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batch and not seen:
                t0, cpu0 = time.perf_counter(), time.process_time()
            for records in batch.values():
                seen += len(records)
                if decode:
                    for r in records:
                        codec.decode(r.value, r.headers)
                    codec.forget()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await consumer.stop()
    return {"events_per_s": seen / elapsed, "cpu_us_per_event": cpu / seen * 1e6}


def _read_all_confluent(settings: Settings, total: int) -> dict[str, float]:
    """A bare confluent-kafka consumer reads every event once (batch ``consume``)."""
    topics = [settings.topic(ORDER_EVENTS.name), settings.topic(USER_EVENTS.name)]
    consumer = Consumer(
        {
            **confluent_options(settings),
            "group.id": f"ceiling-{uuid.uuid4().hex[:8]}",  # assigned, never joined
            "enable.auto.commit": False,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "fetch.max.bytes": 32 * 1024 * 1024,
        }
    )
    consumer.assign(
        [RdPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(settings.partitions)]
    )
    try:
        seen, t0, cpu0 = 0, 0.0, 0.0
        while seen < total:
            # consume() waits for all it asks for: never ask past the last event
            messages = consumer.consume(min(10_000, total - seen), 1.0)
            if messages and not seen:
                t0, cpu0 = time.perf_counter(), time.process_time()
            seen += len(messages)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        consumer.close()
    return {"events_per_s": seen / elapsed, "cpu_us_per_event": cpu / seen * 1e6}


def ceiling(settings: Settings, total: int) -> dict[str, dict[str, float]]:
    """Rates of bare consumers over the pre-loaded events: aiokafka read only and
    read + decode, confluent-kafka read only (its CPU includes librdkafka's threads).

    This process holds the expected read models (millions of objects); they are
    frozen out of the garbage collector's sight meanwhile, as a worker's heap
    would not hold them.
    """
    gc.collect()
    gc.freeze()
    try:
        return {
            "read": asyncio.run(_read_all(settings, total, decode=False)),
            "read_decode": asyncio.run(_read_all(settings, total, decode=True)),
            "confluent_read": _read_all_confluent(settings, total),
        }
    finally:
        gc.unfreeze()


def verify(settings: Settings, expected: dict[str, dict[str, Any]], n: int) -> int:
    """Compare a random sample of ``n`` read models per table over HTTP; returns mismatches."""
    rng = random.Random(5)
    bad = 0
    for table, docs in expected.items():
        for key in rng.sample(sorted(docs), min(n, len(docs))):
            for _ in range(20):  # 503: partitions being assigned (a rebalance): retry shortly
                code, body = fetch_json(
                    f"{settings.web_url}/{table}/{key}", token=settings.http_token.reveal()
                )
                if code != 503:
                    break
                time.sleep(0.5)
            if code != 200 or body != docs[key]:
                bad += 1
                if bad <= 3:
                    log(f"  MISMATCH {table}/{key}: {code} {body} != {docs[key]}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--orders",
        type=int,
        default=390_000,
        help="order lifecycles (2.6 events each on average: 390,000 give over 1M order events)",
    )
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--naive-events", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument("--verify", type=int, default=2000, help="read models checked per table")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--port",
        type=int,
        default=0,
        help="web port of the worker; the naive agent's is next (default: free ports)",
    )
    ap.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="share of orders whose order.placed fails 3 times before it applies "
        "(runs benchmarks.flaky_worker, with 200 ms retry backoff)",
    )
    ap.add_argument(
        "--projections",
        default="orders,customers",
        help="EVENTIDE_PROJECTIONS of the measured worker (add notifications to include them)",
    )
    ap.add_argument(
        "--no-ceiling", action="store_true", help="skip the bare-consumer ceiling measurement"
    )
    ap.add_argument(
        "--kafka-client",
        choices=["confluent", "aiokafka"],
        default=os.environ.get("EVENTIDE_KAFKA_CLIENT", "aiokafka"),
        help="EVENTIDE_KAFKA_CLIENT of the measured worker (default: from the environment)",
    )
    ap.add_argument(
        "--format",
        choices=["avro", "json"],
        default="avro",
        help="wire form of the pre-loaded events",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="write the report to docs/benchmarks/drain/ (kept in git)",
    )
    args = ap.parse_args(argv)
    command = report.command_line("benchmarks.drain", argv)

    workdir = Path(tempfile.mkdtemp(prefix="eventide-drain-"))
    base = Settings.from_env(
        {"EVENTIDE_BROKER_URL": args.broker, "EVENTIDE_STATE_DIR": str(ROOT / ".eventide")}
    )
    started_broker = False
    if not devbroker.is_answering(base):
        devbroker.start(base, log)
        started_broker = True
    broker_pid = devbroker.running_pid(devbroker.paths_for(base))
    tag = uuid.uuid4().hex[:8]
    machine = report.machine()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    def settings(app: str, projections: str, port: int) -> Settings:
        return Settings.from_env(
            {
                "EVENTIDE_BROKER_URL": args.broker,
                "EVENTIDE_APP_ID": f"{app}-{tag}",
                "EVENTIDE_TOPIC_PREFIX": f"bench-{tag}-",
                "EVENTIDE_PARTITIONS": str(args.partitions),
                "EVENTIDE_DATA_DIR": str(workdir / app),
                # its own notifications file (the file sink indexes it at start-up)
                "EVENTIDE_STATE_DIR": str(workdir / f"state-{app}"),
                "EVENTIDE_WEB_PORT": str(port or free_port()),
                "EVENTIDE_LOG_LEVEL": "info",
                "EVENTIDE_RETRY_BACKOFF_MS": "200",
                "EVENTIDE_PROJECTIONS": projections,
                **http_settings(),
                # Settings.to_env() sets every variable: pass the choice through
                "EVENTIDE_KAFKA_CLIENT": args.kafka_client,
            }
        )

    eventide = settings("eventide", args.projections, args.port)
    naive = settings("naive", "orders", args.port + 1 if args.port else 0)
    n: dict[str, Any] | None = None
    try:
        log(f"generating {args.orders:,} orders for {args.customers:,} customers")
        work = make_workload(args.orders, args.customers, seed=args.seed, flaky_rate=args.fail_rate)
        total = len(work.users) + len(work.orders)
        asyncio.run(ensure_topics(eventide))
        t = time.monotonic()
        asyncio.run(
            publish(
                eventide,
                work,
                args.format,
                progress=lambda k: (
                    log(f"  published {k:,} of {total:,}") if k % 200_000 < 50_000 else None
                ),
            )
        )
        log(f"pre-loaded {total:,} events in {time.monotonic() - t:.1f}s")
        log("computing the expected read models offline")
        exp_orders, exp_customers = expected_state(work)
        order_events = len(work.orders)
        del work
        names = args.projections.split(",")
        expected = {
            table: docs
            for table, docs in (("orders", exp_orders), ("customers", exp_customers))
            if table in names
        }

        ceil: dict[str, dict[str, float]] = {}
        if not args.no_ceiling:
            log("ceiling: a bare consumer reads every event, then reads and decodes them")
            ceil = ceiling(eventide, total)
            log(
                f"ceiling: read {ceil['read']['events_per_s']:,.0f}/s "
                f"({ceil['read']['cpu_us_per_event']:.1f} µs CPU/event), read + decode "
                f"{ceil['read_decode']['events_per_s']:,.0f}/s "
                f"({ceil['read_decode']['cpu_us_per_event']:.1f} µs CPU/event); "
                f"confluent-kafka read {ceil['confluent_read']['events_per_s']:,.0f}/s "
                f"({ceil['confluent_read']['cpu_us_per_event']:.1f} µs CPU/event)"
            )

        progress = Progress(eventide)
        sources, _ = topics_of(eventide, args.projections)
        events = sum(progress.ends(sources).values())
        log(f"eventide: draining {events:,} events ({args.projections}; {args.kafka_client})")
        flaky = [sys.executable, "-m", "benchmarks.flaky_worker"] if args.fail_rate else None
        e = drain_worker(eventide, events, workdir, progress, broker_pid, flaky)
        log(
            f"eventide: {events:,} events in {e['drain_s']:.1f}s = {e['events_per_s']:,.0f}/s "
            f"(worker CPU {e['cpu_us_per_event']:.1f} µs/event)"
        )
        mismatches = verify(eventide, expected, args.verify)
        log(
            f"verified {len(expected) * args.verify} read models over HTTP: {mismatches} mismatches"
        )
        stop(e.pop("proc"))

        log("rebuild: deleting local RocksDB, restarting from the changelogs")
        shutil.rmtree(eventide.data_dir)
        t = time.monotonic()
        proc = start(
            [sys.executable, "-m", "eventide.cli", "worker"], eventide, workdir / "rebuild.log"
        )
        rebuilt = wait_until(lambda: ready(eventide), 1800, "rebuild", proc, READY_POLL_S)
        rebuild_s = rebuilt - t
        rebuilt_mismatches = verify(eventide, expected, args.verify // 4)
        stop(proc)
        log(f"rebuild: {rebuild_s:.1f}s, {rebuilt_mismatches} mismatches")

        goal = min(args.naive_events, order_events)
        if goal > 0:
            log(f"naive faust: draining {goal:,} order events")
            n = drain_peer(
                "naive_faust",
                "benchmarks.peers.naive_faust",
                naive,
                goal,
                workdir,
                progress,
                broker_pid,
                [naive.topic(ORDER_EVENTS.name)],
            )
        progress.close()
    finally:
        stop_started()
        if started_broker:
            devbroker.stop(base, log)

    result = {
        "scenario": "drain",
        "command": command,
        "when": when,
        "machine": machine,
        "args": vars(args),
        "events": events,
        "format": args.format,
        "ceiling": ceil,
        "eventide": e,
        "naive_faust": n,
        "rebuild_s": rebuild_s,
        "mismatches": mismatches + rebuilt_mismatches,
        "read_models_checked": len(expected) * (args.verify + args.verify // 4),
    }
    out = report.run_dir("drain", args.reference)
    markdown = drain_report(result, out)
    report.write(out, result, markdown, args.reference)
    print(markdown)
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result["mismatches"] else 0


def drain_report(result: dict[str, Any], out: Path) -> str:
    """The drain's page; writes ``throughput.png`` beside it."""
    ceil, e, n = result["ceiling"], result["eventide"], result["naive_faust"]
    read = ceil.get("read", {}).get("events_per_s")
    naive = n["events_per_s"] if n else None
    bare = (
        ("aiokafka consumer, read only", ceil.get("read")),
        ("aiokafka consumer, read + decode", ceil.get("read_decode")),
        ("confluent-kafka consumer, read only", ceil.get("confluent_read")),
    )
    rows: list[tuple[str, int, float | None, float, float]] = [
        (f"bare {label} (no state, no output)", result["events"],
         result["events"] / c["events_per_s"],
         c["events_per_s"], c["cpu_us_per_event"])
        for label, c in bare
        if c
    ]  # fmt: skip
    rows.append(
        (
            f"Eventide, 1 worker ({result['args']['projections']}; {result['format']}; "
            f"{result['args'].get('kafka_client', 'aiokafka')})",
            e["events"],
            e["drain_s"],
            e["events_per_s"],
            e["cpu_us_per_event"],
        )
    )
    if n:
        rows.append(
            (
                "naive Faust agent (orders only)",
                n["events"],
                n["drain_s"],
                n["events_per_s"],
                n["cpu_us_per_event"],
            )
        )
    lines = report.header("Drain: one worker against the ceiling and the naive agent", result)
    lines += [
        "| implementation | events | seconds | events/s | x bare aiokafka read-only consumer | "
        "x naive Faust | CPU µs/event |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, events, seconds, rate, cpu in rows:
        lines.append(
            f"| {label} | {events:,} | {'' if seconds is None else f'{seconds:.1f}'} | "
            f"{rate:,.0f} | {report.ratio(rate, read)} | {report.ratio(rate, naive)} | "
            f"{cpu:.1f} |"
        )
    lines += [
        "",
        "The bare consumer is this process reading every pre-loaded event with no consumer "
        "group, timed from its first non-empty fetch to its last record (CPU: this process). "
        "Eventide and the naive agent are timed from their first record fetched to the poll "
        "(every 100 ms) that sees their group's last commit, over every event they had to "
        "process (`benchmarks/timing.py`); CPU µs/event is the worker process's own CPU time "
        f"per event. Other programs used {e['other_cores']:.2f} cores during Eventide's drain.",
        "",
        f"Rebuild of the tables from their changelogs after the local RocksDB was deleted: "
        f"ready {result['rebuild_s']:.1f} s after the process started. Read models compared "
        f"over HTTP with the state computed offline: {result['read_models_checked']:,} checked, "
        f"{result['mismatches']} mismatches.",
        "",
        "![Events/s and CPU per event](throughput.png)",
        "",
    ]
    short = [r[0].split(" (")[0].replace(" consumer", "") for r in rows]
    report.hbars(
        out / "throughput.png",
        f"Drain of {result['events']:,} pre-loaded {result['format'].replace('avro', 'Avro')} "
        "events, one process each",
        [
            (
                "events/s (higher is better; ratio to the bare aiokafka read-only consumer)",
                [
                    (label, r[3], f"{r[3]:,.0f}/s  {report.ratio(r[3], read)}")
                    for label, r in zip(short, rows, strict=True)
                ],
            ),
            (
                "CPU µs per event (lower is better)",
                [(label, r[4], f"{r[4]:.1f} µs") for label, r in zip(short, rows, strict=True)],
            ),
        ],
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
