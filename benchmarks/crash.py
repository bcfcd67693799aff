"""Crash scenario: kill -9 a worker repeatedly while it processes, then audit.

    python -m benchmarks.crash --orders 80000 --customers 15000 --kills 5

Publishes the workload (with duplicate events) in chunks while a worker
processes it; kills the worker with SIGKILL at random moments, restarting it
each time; once everything is drained, every read model served over HTTP is
compared with the state computed offline: zero lost, zero double-applied.
The same helpers back tests/integration/test_crash_recovery.py at a small size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventide.tools import devbroker
from eventide.tools.demo import fetch_json
from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, USER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings
from streams.topics import ensure_topics

from . import report
from .procs import ROOT, env_of, free_port, http_settings, log, ready
from .workload import Workload, expected_state, make_workload, publish


def publish_slowly(
    settings: Settings, work: Workload, chunks: int, pause: float
) -> threading.Thread:
    """Publish users, then the orders in ``chunks`` pieces ``pause`` s apart, in a thread."""
    size = -(-len(work.orders) // chunks)

    def run() -> None:
        asyncio.run(publish(settings, Workload(users=work.users, orders=[])))
        for i in range(0, len(work.orders), size):
            asyncio.run(publish(settings, Workload(users=[], orders=work.orders[i : i + size])))
            time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _lag(settings: Settings) -> int:
    topics = [settings.topic(t.name) for t in (ORDER_EVENTS, USER_EVENTS, CUSTOMER_FACTS)]
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    consumer = AIOKafkaConsumer(**aiokafka_options(settings))
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.projection_group)
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        done = {tp: m.offset for tp, m in committed.items()}
        return sum(end - max(done.get(tp, 0), 0) for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def lag(settings: Settings) -> int:
    """Events not yet committed by the projections (sources and customer facts)."""
    return asyncio.run(_lag(settings))


def wait_drained(settings: Settings, timeout: float = 600) -> None:
    """Wait until the projections' group has committed every event, twice in a row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lag(settings) == 0:
            time.sleep(1)  # customer facts emitted by the last batch
            if lag(settings) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"not drained after {timeout:.0f}s; lag {lag(settings)}")


def audit(
    base_url: str, expected: dict[str, dict[str, Any]], table: str, token: str = ""
) -> dict[str, Any]:
    """Fetch every key over HTTP; return {key: (status, body)} for those that differ."""

    def one(key: str) -> tuple[str, Any]:
        for _ in range(20):
            code, body = fetch_json(f"{base_url}/{table}/{key}", token=token)
            if code != 503:
                break
            time.sleep(0.5)
        return key, (code, body)

    with ThreadPoolExecutor(8) as pool:
        got = dict(pool.map(one, sorted(expected)))
    return {k: v for k, v in got.items() if v != (200, expected[k])}


def classify(diffs: dict[str, Any], expected: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Lost (missing or behind) vs double-applied (ahead) vs other differences."""
    out = {"lost": 0, "double_applied": 0, "other": 0}
    for key, (code, body) in diffs.items():
        want = expected[key]
        if code == 404:
            out["lost"] += 1
        elif "eventCount" in want and isinstance(body, dict):
            have = body.get("eventCount", 0)
            out[
                "lost"
                if have < want["eventCount"]
                else "double_applied"
                if have > want["eventCount"]
                else "other"
            ] += 1
        elif "orderCount" in want and isinstance(body, dict):
            have = body.get("orderCount", 0)
            out[
                "lost"
                if have < want["orderCount"]
                else "double_applied"
                if have > want["orderCount"]
                else "other"
            ] += 1
        else:
            out["other"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=80_000)
    ap.add_argument("--customers", type=int, default=15_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between published chunks")
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--kafka-client",
        choices=["confluent", "aiokafka"],
        default=os.environ.get("EVENTIDE_KAFKA_CLIENT", "aiokafka"),
        help="EVENTIDE_KAFKA_CLIENT of the worker (default: from the environment, else aiokafka)",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="write the report to docs/benchmarks/crash/ (kept in git)",
    )
    args = ap.parse_args(argv)
    command = report.command_line("benchmarks.crash", argv)
    machine = report.machine()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    workdir = Path(tempfile.mkdtemp(prefix="eventide-crash-"))
    base = Settings.from_env(
        {"EVENTIDE_BROKER_URL": args.broker, "EVENTIDE_STATE_DIR": str(ROOT / ".eventide")}
    )
    started_broker = not devbroker.is_answering(base)
    if started_broker:
        devbroker.start(base, log)
    tag = uuid.uuid4().hex[:8]
    settings = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": args.broker,
            "EVENTIDE_APP_ID": f"crash-{tag}",
            "EVENTIDE_TOPIC_PREFIX": f"crash-{tag}-",
            "EVENTIDE_DATA_DIR": str(workdir / "data"),
            "EVENTIDE_STATE_DIR": str(workdir / "state"),
            "EVENTIDE_WEB_PORT": str(free_port()),
            "EVENTIDE_SESSION_TIMEOUT_MS": "6000",
            "EVENTIDE_KAFKA_CLIENT": args.kafka_client,
            **http_settings(),
        }
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        with (workdir / "worker.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "eventide.cli", "worker"],
                env=env_of(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        deadline = time.monotonic() + 120
        while not ready(settings):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start; see {workdir / 'worker.log'}")
            time.sleep(0.2)
        return proc

    try:
        log(f"generating {args.orders:,} orders for {args.customers:,} customers")
        work = make_workload(args.orders, args.customers, seed=args.seed, duplicate_rate=0.03)
        total = len(work.users) + len(work.orders)
        exp_orders, exp_customers = expected_state(work)
        asyncio.run(ensure_topics(settings))
        proc = start()
        t0 = time.monotonic()
        publisher = publish_slowly(settings, work, args.chunks, args.pause)
        span = args.chunks * args.pause
        rng = random.Random()
        moments = sorted(rng.uniform(1.0, span) for _ in range(args.kills))
        for n, moment in enumerate(moments, 1):
            time.sleep(max(0.0, moment - (time.monotonic() - t0)))
            behind = lag(settings)
            proc.kill()
            proc.wait()
            log(f"kill -9 #{n} at {time.monotonic() - t0:.1f}s (lag {behind:,} events)")
            proc = start()
        publisher.join()
        log(f"published {total:,} events; waiting for the worker to drain")
        wait_drained(settings)
        elapsed = time.monotonic() - t0
        log(f"drained after {elapsed:.1f}s; auditing every read model over HTTP")
        token = settings.http_token.reveal()
        diffs_o = audit(settings.web_url, exp_orders, "orders", token)
        diffs_c = audit(settings.web_url, exp_customers, "customers", token)
        result = {
            "scenario": "crash",
            "command": command,
            "when": when,
            "machine": machine,
            "args": vars(args),
            "events": total,
            "orders": len(exp_orders),
            "customers": len(exp_customers),
            "kills": args.kills,
            "seconds": elapsed,
            "orders_audit": classify(diffs_o, exp_orders),
            "customers_audit": classify(diffs_c, exp_customers),
        }
        for key, diff in list(diffs_o.items())[:3] + list(diffs_c.items())[:3]:
            log(f"  MISMATCH {key}: {diff}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(60)
        if started_broker:
            devbroker.stop(base, log)
    out = report.run_dir("crash", args.reference)
    markdown = crash_report(result)
    report.write(out, result, markdown, args.reference)
    print(markdown)
    shutil.rmtree(workdir, ignore_errors=True)
    bad = sum(result["orders_audit"].values()) + sum(result["customers_audit"].values())
    return 1 if bad else 0


def crash_report(result: dict[str, Any]) -> str:
    """The crash scenario's page: every read model audited after the kills."""
    lines = report.header("Crash: kill -9 of the worker during processing", result)
    lines += [
        f"{result['events']:,} events published in chunks while one worker (engine client "
        f"{result['args'].get('kafka_client', 'aiokafka')}) processed them; "
        f"the worker was killed with SIGKILL {result['kills']} times at random moments and "
        f"restarted each time; drained after {result['seconds']:.1f} s. Then every read model "
        "was fetched over HTTP and compared with the state computed offline from the "
        "same events.",
        "",
        "| read model | keys audited | lost | double-applied | other differences |",
        "|---|---:|---:|---:|---:|",
    ]
    for table, keys in (("orders", result["orders"]), ("customers", result["customers"])):
        audit_ = result[f"{table}_audit"]
        lines.append(
            f"| {table} | {keys:,} | {audit_['lost']} | {audit_['double_applied']} | "
            f"{audit_['other']} |"
        )
    lines += [
        "",
        "*Lost*: missing, or fewer events/orders counted than published; *double-applied*: "
        "more (`benchmarks/crash.py`). Correctness, not speed: no plot.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
