"""Command API benchmark: commands/s, latency p50/p99 and relay publish lag.

For each backend (SQLite, PostgreSQL) it starts ``eventide api`` (relay
inside) against a fresh database and uuid-named topics, drives order
lifecycles (place → pay → ship) over HTTP from ``--concurrency`` clients,
then reads the topics back and measures, per event, the time from the
command's event timestamp (taken before the transaction commits) to the
broker's append time (topics are created with LogAppendTime).

    python -m benchmarks.commands                       # both backends
    python -m benchmarks.commands --backend postgresql --commands 20000

Needs a running broker (EVENTIDE_BROKER_URL, `eventide broker start`). For
PostgreSQL it uses EVENTIDE_BENCH_DATABASE_URL (a maintenance database such
as postgresql://eventide@127.0.0.1:25432/postgres) or, if unset, starts the
same throwaway cluster as the tests (.eventide/pg-25432) and stops it after.
Results go to stdout and, as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.envelope import decode_envelope
from streams.settings import Settings
from streams.topics import ORDER_EVENTS, USER_EVENTS

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        config = {"message.timestamp.type": "LogAppendTime"}
        await admin.create_topics(
            [
                NewTopic(settings.topic(spec.name), settings.partitions, 1, topic_configs=config)
                for spec in (USER_EVENTS, ORDER_EVENTS)
            ]
        )
    finally:
        await admin.close()


async def _fresh_pg_database(admin_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


async def _drop_pg_database(admin_url: str, url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await conn.close()


def _start(command: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ}
    env.update(
        {f"EVENTIDE_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(settings)}
    )
    env["EVENTIDE_DATABASE_URL"] = settings.database_url.reveal()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"eventide api exited:\n{log.read_text()[-3000:]}")
            try:
                async with session.get(f"{url}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"eventide api not ready:\n{log.read_text()[-3000:]}")


async def _drive(url: str, commands: int, concurrency: int, tag: str) -> tuple[list[float], float]:
    """Order lifecycles from ``concurrency`` clients; returns (latencies, seconds)."""
    latencies: list[float] = []
    next_order = 0
    sent = 0
    done_marks = max(1, commands // 10)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(path: str, body: dict[str, Any]) -> None:
            nonlocal sent
            started = time.perf_counter()
            async with session.post(url + path, json=body) as r:
                await r.read()
                if r.status != 201:
                    raise SystemExit(f"{path}: {r.status} {await r.text()}")
            latencies.append(time.perf_counter() - started)
            sent += 1
            if sent % done_marks == 0:
                print(f"  {sent}/{commands} commands", file=sys.stderr, flush=True)

        async def client() -> None:
            nonlocal next_order
            while sent + 3 <= commands and next_order * 3 < commands:
                oid = f"{tag}-{next_order}"
                next_order += 1
                item = {"sku": "sku-book", "quantity": 2, "unitPrice": 12.5}
                await post("/orders", {"orderId": oid, "customerId": "c-1", "items": [item]})
                await post(f"/orders/{oid}/payment", {"paymentId": f"p-{oid}"})
                await post(f"/orders/{oid}/shipment", {"trackingNumber": "T", "carrier": "DHL"})

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


async def _relay_lags(
    settings: Settings, expected: int, prefix: str, timeout: float = 120
) -> list[float]:
    """Seconds from each event's timestamp to its broker append time, for the
    events of orders whose id starts with ``prefix`` (the measured run, not the
    warm-up, whose first events wait for the relay to connect)."""
    topics = [settings.topic(ORDER_EVENTS.name)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    lags: dict[str, float] = {}
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while len(lags) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:
                    event = decode_envelope(r.value)
                    if not event.data["orderId"].startswith(prefix):
                        continue
                    ts = datetime.fromisoformat(event.timestamp).timestamp()
                    lags.setdefault(event.id, r.timestamp / 1000 - ts)
    finally:
        await consumer.stop()
    return list(lags.values())


async def run_backend(
    base: Settings, backend: str, admin_url: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-commands-{backend}-"))
    if backend == "postgresql":
        assert admin_url is not None
        db_url = await _fresh_pg_database(admin_url)
    else:
        db_url = f"sqlite://{workdir / 'outbox.sqlite3'}"
    settings = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": base.broker_url,
            "EVENTIDE_APP_ID": f"bench-{tag}",
            "EVENTIDE_TOPIC_PREFIX": f"bench-{tag}-",
            "EVENTIDE_PARTITIONS": str(args.partitions),
            "EVENTIDE_STATE_DIR": str(workdir),
            "EVENTIDE_DATA_DIR": str(workdir / "data"),
            "EVENTIDE_API_PORT": str(_free_port()),
            "EVENTIDE_DATABASE_URL": db_url,
            "EVENTIDE_LOG_LEVEL": "warning",
            "EVENTIDE_API_RELAY": "true" if args.relay == "inside" else "false",
        }
    )
    await _create_topics(settings)
    log = workdir / "api.log"
    proc = _start("api", settings, log)
    relay = _start("relay", settings, workdir / "relay.log") if args.relay == "separate" else None
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        await _wait_ready(url, proc, log)
        print(f"{backend}: warm-up", file=sys.stderr)
        await _drive(url, min(600, args.commands), args.concurrency, f"warm-{tag}")
        print(f"{backend}: {args.commands} commands, {args.concurrency} clients", file=sys.stderr)
        latencies, seconds = await _drive(url, args.commands, args.concurrency, f"run-{tag}")
        lags = await _relay_lags(settings, expected=len(latencies), prefix=f"run-{tag}")
    finally:
        for child in (proc, relay):
            if child is not None:
                child.terminate()
                child.wait(30)
        if backend == "postgresql" and admin_url is not None:
            await _drop_pg_database(admin_url, db_url)
    return {
        "backend": backend,
        "commands": len(latencies),
        "concurrency": args.concurrency,
        "relay": args.relay,
        "seconds": round(seconds, 3),
        "commands_per_s": round(len(latencies) / seconds, 1),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "latency_p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
        "relay_lag_p50_ms": round(_pct(lags, 0.5) * 1000, 2),
        "relay_lag_p99_ms": round(_pct(lags, 0.99) * 1000, 2),
        "events_read_back": len(lags),
    }


def _postgres(args: argparse.Namespace) -> tuple[str, Any]:
    url = os.environ.get("EVENTIDE_BENCH_DATABASE_URL") or os.environ.get(
        "EVENTIDE_TEST_DATABASE_URL"
    )
    if url:
        return url, None
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.postgres import Cluster

    cluster = Cluster(int(os.environ.get("EVENTIDE_TEST_PG_PORT", "25432")))
    from tests.fixtures.postgres import _answers

    if asyncio.run(_answers(cluster.url)):
        return cluster.url, None
    cluster.start()
    return cluster.url, cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--commands", type=int, default=6000, help="commands per backend")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--relay",
        choices=["inside", "separate"],
        default="inside",
        help="relay inside the API process or as its own `eventide relay` process",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/commands.json")
    args = parser.parse_args()
    base = Settings.from_env()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    admin_url, cluster = _postgres(args) if "postgresql" in backends else (None, None)
    results = []
    try:
        for backend in backends:
            results.append(asyncio.run(run_backend(base, backend, admin_url, args)))
    finally:
        if cluster is not None:
            cluster.stop()
    print(
        f"\n{'backend':<11} {'commands/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'lag p50 ms':>10} {'lag p99 ms':>10}"
    )
    for r in results:
        print(
            f"{r['backend']:<11} {r['commands_per_s']:>10} {r['latency_p50_ms']:>8} "
            f"{r['latency_p99_ms']:>8} {r['relay_lag_p50_ms']:>10} {r['relay_lag_p99_ms']:>10}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "commands",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "broker": base.broker_url,
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
