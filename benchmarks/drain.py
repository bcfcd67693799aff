"""Drain benchmark: how fast one worker turns a pre-loaded backlog into read models.

    python -m benchmarks.drain                  # 1,030,958 events: 390k orders, 20k customers
    python -m benchmarks.drain --orders 50000   # a quick run

Pre-loads the workload (user.created per customer, order lifecycles with
duplicates) into fresh topics, then, in the same run and on the same data:

0. the ceiling: a bare aiokafka consumer reads every pre-loaded event (no
   state, no output), once without and once with Eventide's decoder; no
   Python worker can go faster than the second rate on this machine;
1. Eventide: one ``eventide worker`` drains both read models (orders, and
   customers through the customer-facts repartition topic); ``--projections``
   adds notifications (the issue's benchmark is the two read models);
2. the naive Faust agent (one table write per event) drains ``--naive-events``
   of the same order events (it is slow; its rate is what matters);
3. the rebuild: Eventide's local RocksDB is deleted and the worker restarts,
   restoring both tables from their changelogs.

A sample of read models is checked over HTTP against the state computed
offline. Results: JSON and a markdown table under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventide.tools import devbroker
from eventide.tools.demo import fetch_json
from schemas.codecs import EventCodec
from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, USER_EVENTS
from streams.failures import retry_topic
from streams.settings import Settings
from streams.topics import ensure_topics

from .workload import expected_state, make_workload, publish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env_of(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as EVENTIDE_* variables."""
    return {**os.environ, **settings.to_env()}


class Progress:
    """Committed vs end offsets of a consumer group, on one long-lived connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        servers = self.settings.bootstrap_servers
        self.admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=servers)
        await self.admin.start()
        await self.consumer.start()

    def __call__(self, group: str, topics: list[str]) -> tuple[int, int]:
        return self.loop.run_until_complete(self._progress(group, topics))

    async def _progress(self, group: str, topics: list[str]) -> tuple[int, int]:
        committed = await self.admin.list_consumer_group_offsets(group)
        parts = range(self.settings.partitions)
        tps = [TopicPartition(t, p) for t in topics for p in parts]
        ends = await self.consumer.end_offsets(tps)
        done = sum(m.offset for tp, m in committed.items() if tp in ends and m.offset > 0)
        return done, sum(ends.values())

    def ends(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """End offset of every partition of ``topics``: (topic, partition) → offset."""
        parts = range(self.settings.partitions)
        tps = [TopicPartition(t, p) for t in topics for p in parts]
        ends = self.loop.run_until_complete(self.consumer.end_offsets(tps))
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    def close(self) -> None:
        self.loop.run_until_complete(self.consumer.stop())
        self.loop.run_until_complete(self.admin.close())
        self.loop.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes],
    interval: float = 0.5,
) -> float:
    """Call ``check`` every ``interval`` s until it holds; returns the time.monotonic() it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with {proc.returncode}")
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise SystemExit(f"{what}: not done after {timeout:.0f}s")


STARTED: list[subprocess.Popen[bytes]] = []
"""Every process :func:`start` started, for :func:`stop_started` to end on the way out."""


def start(
    cmd: list[str], settings: Settings, logfile: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env={**env_of(settings), **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    STARTED.append(proc)
    return proc


def stop_started() -> None:
    """Stop every process :func:`start` started that still runs (a failed run leaves none)."""
    while STARTED:
        stop(STARTED.pop())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ready(settings: Settings) -> bool:
    try:
        return fetch_json(f"{settings.web_url}/health", timeout=2)[0] == 200
    except OSError:
        return False


def drain_eventide(
    settings: Settings,
    total: int,
    workdir: Path,
    progress: Progress,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Start a worker, time the drain of both read models (and of the retry topics)."""
    group = settings.projection_group
    sources = [settings.topic(ORDER_EVENTS.name), settings.topic(USER_EVENTS.name)]
    facts = [settings.topic(CUSTOMER_FACTS.name)]
    facts += [retry_topic(t) for t in sources + facts]
    launched = time.monotonic()
    command = command or [sys.executable, "-m", "eventide.cli", "worker"]
    proc = start(command, settings, workdir / "worker.log")
    wait_until(lambda: ready(settings), 120, "eventide worker start", proc)
    t_ready = time.monotonic()
    cpu_ready = cpu_seconds(proc.pid)
    last = [0.0]

    def drained() -> bool:
        done, end = progress(group, sources)
        if time.monotonic() - last[0] > 5:
            log(f"  eventide: {done:,}/{end:,} source events")
            last[0] = time.monotonic()
        if done < end:
            return False
        fdone, fend = progress(group, facts)
        return fdone >= fend

    wait_until(drained, 3600, "eventide drain", proc)
    t_done = time.monotonic()
    cpu = cpu_seconds(proc.pid) - cpu_ready
    return {
        "proc": proc,
        "worker_cpu_s": cpu,
        "worker_cpu_us_per_event": cpu / total * 1e6,
        "start_s": t_ready - launched,
        "drain_s": t_done - t_ready,
        "events_per_s": total / (t_done - t_ready),
    }


def drain_naive(
    settings: Settings, events: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Run the naive Faust agent until it has committed ``events`` events."""
    topic = [settings.topic(ORDER_EVENTS.name)]
    proc = start(
        [sys.executable, "-m", "benchmarks.peers.naive_faust"], settings, workdir / "naive.log"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # first commit marks the start of processing
        if progress(settings.app_id, topic)[0] > 0:
            break
        time.sleep(0.2)
    t0 = time.monotonic()
    first = progress(settings.app_id, topic)[0]
    last = [0.0]

    def enough() -> bool:
        done = progress(settings.app_id, topic)[0]
        if time.monotonic() - last[0] > 5:
            log(f"  naive faust: {done:,}/{events:,} events")
            last[0] = time.monotonic()
        return done >= events

    wait_until(enough, 3600, "naive faust drain", proc)
    done = progress(settings.app_id, topic)[0]
    elapsed = time.monotonic() - t0
    stop(proc)
    return {"events": done - first, "drain_s": elapsed, "events_per_s": (done - first) / elapsed}


async def _read_all(settings: Settings, total: int, decode: bool) -> dict[str, float]:
    topics = [settings.topic(ORDER_EVENTS.name), settings.topic(USER_EVENTS.name)]
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
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


def ceiling(settings: Settings, total: int) -> dict[str, dict[str, float]]:
    """Rates of a bare consumer over the pre-loaded events: read only, and read + decode.

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
        }
    finally:
        gc.unfreeze()


def verify(settings: Settings, orders: dict[str, Any], customers: dict[str, Any], n: int) -> int:
    """Compare a random sample of read models over HTTP; returns mismatches."""
    rng = random.Random(5)
    bad = 0
    for table, expected in (("orders", orders), ("customers", customers)):
        for key in rng.sample(sorted(expected), min(n, len(expected))):
            code, body = fetch_json(f"{settings.web_url}/{table}/{key}")
            if code != 200 or body != expected[key]:
                bad += 1
                if bad <= 3:
                    log(f"  MISMATCH {table}/{key}: {code} {body} != {expected[key]}")
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
        "--format",
        choices=["avro", "json"],
        default="avro",
        help="wire form of the pre-loaded events",
    )
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="eventide-drain-"))
    base = Settings.from_env(
        {"EVENTIDE_BROKER_URL": args.broker, "EVENTIDE_STATE_DIR": str(ROOT / ".eventide")}
    )
    started_broker = False
    if not devbroker.is_answering(base):
        devbroker.start(base, log)
        started_broker = True
    tag = uuid.uuid4().hex[:8]

    def settings(app: str, port: int) -> Settings:
        return Settings.from_env(
            {
                "EVENTIDE_BROKER_URL": args.broker,
                "EVENTIDE_APP_ID": f"{app}-{tag}",
                "EVENTIDE_TOPIC_PREFIX": f"bench-{tag}-",
                "EVENTIDE_PARTITIONS": str(args.partitions),
                "EVENTIDE_DATA_DIR": str(workdir / app),
                # its own notifications file (the file sink indexes it at start-up)
                "EVENTIDE_STATE_DIR": str(workdir / f"state-{app}"),
                "EVENTIDE_WEB_PORT": str(port),
                "EVENTIDE_LOG_LEVEL": "info",
                "EVENTIDE_RETRY_BACKOFF_MS": "200",
                "EVENTIDE_PROJECTIONS": args.projections,
            }
        )

    eventide, naive = settings("eventide", 36066), settings("naive", 36067)
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
                progress=lambda n: (
                    log(f"  published {n:,} of {total:,}") if n % 200_000 < 50_000 else None
                ),
            )
        )
        log(f"pre-loaded {total:,} events in {time.monotonic() - t:.1f}s")
        log("computing the expected read models offline")
        exp_orders, exp_customers = expected_state(work)
        del work

        ceil: dict[str, dict[str, float]] = {}
        if not args.no_ceiling:
            log("ceiling: a bare consumer reads every event, then reads and decodes them")
            ceil = ceiling(eventide, total)
            log(
                f"ceiling: read {ceil['read']['events_per_s']:,.0f}/s "
                f"({ceil['read']['cpu_us_per_event']:.1f} µs CPU/event), read + decode "
                f"{ceil['read_decode']['events_per_s']:,.0f}/s "
                f"({ceil['read_decode']['cpu_us_per_event']:.1f} µs CPU/event)"
            )

        log(f"eventide: draining ({args.projections})")
        progress = Progress(eventide)
        flaky = [sys.executable, "-m", "benchmarks.flaky_worker"] if args.fail_rate else None
        e = drain_eventide(eventide, total, workdir, progress, flaky)
        log(
            f"eventide: {total:,} events in {e['drain_s']:.1f}s = {e['events_per_s']:,.0f}/s "
            f"(worker CPU {e['worker_cpu_us_per_event']:.1f} µs/event)"
        )
        mismatches = verify(eventide, exp_orders, exp_customers, args.verify)
        log(f"verified {2 * args.verify} read models over HTTP: {mismatches} mismatches")
        stop(e.pop("proc"))

        log("rebuild: deleting local RocksDB, restarting from the changelogs")
        shutil.rmtree(eventide.data_dir)
        t = time.monotonic()
        proc = start(
            [sys.executable, "-m", "eventide.cli", "worker"], eventide, workdir / "rebuild.log"
        )
        wait_until(lambda: ready(eventide), 1800, "rebuild", proc)
        rebuild_s = time.monotonic() - t
        rebuilt_mismatches = verify(eventide, exp_orders, exp_customers, args.verify // 4)
        stop(proc)
        log(f"rebuild: {rebuild_s:.1f}s, {rebuilt_mismatches} mismatches")

        log(f"naive faust: draining {args.naive_events:,} order events")
        n = drain_naive(naive, min(args.naive_events, total - args.customers), workdir, progress)
        progress.close()
        log(
            f"naive faust: {n['events']:,} events in {n['drain_s']:.1f}s = "
            f"{n['events_per_s']:,.0f}/s"
        )
    finally:
        if started_broker:
            devbroker.stop(base, log)

    def to_naive(rate: float) -> float:
        """A rate as a multiple of the naive agent's (nan with --naive-events 0)."""
        return rate / n["events_per_s"] if n["events_per_s"] else float("nan")

    result = {
        "scenario": "drain",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "kafka": "4.1.1 (single KRaft node on the same machine)",
        },
        "events": total,
        "format": args.format,
        "fail_rate": args.fail_rate,
        "orders": args.orders,
        "customers": args.customers,
        "partitions": args.partitions,
        "projections": args.projections,
        "ceiling": ceil,
        "eventide": e,
        "naive_faust": n,
        "ratio_eventide_to_naive": to_naive(e["events_per_s"]),
        "rebuild_s": rebuild_s,
        "mismatches": mismatches + rebuilt_mismatches,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"drain-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    rows = [
        f"| bare aiokafka consumer, {label} (ceiling, no state) | {total:,} | | "
        f"{c['events_per_s']:,.0f} | {to_naive(c['events_per_s']):.1f}x | "
        f"{c['cpu_us_per_event']:.1f} |\n"
        for label, c in (
            ("read only", ceil.get("read")),
            ("read + decode", ceil.get("read_decode")),
        )
        if c
    ]
    table = (
        "| implementation | events | seconds | events/s | ratio to naive | CPU µs/event |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        + "".join(rows)
        + f"| eventide (batch engine: {args.projections}; {args.format}) | {total:,} | "
        f"{e['drain_s']:.1f} | "
        f"{e['events_per_s']:,.0f} | {result['ratio_eventide_to_naive']:.1f}x | "
        f"{e['worker_cpu_us_per_event']:.1f} |\n"
        f"| naive faust agent (orders only) | {n['events']:,} | {n['drain_s']:.1f} | "
        f"{n['events_per_s']:,.0f} | 1.0x | |\n"
        f"\nrebuild of both tables from changelogs: {rebuild_s:.1f}s; "
        f"read models checked: {mismatches + rebuilt_mismatches} mismatches\n"
    )
    (RESULTS / out.name.replace(".json", ".md")).write_text(table)
    print(table)
    print(f"results: {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
