"""Command API benchmark: commands/s, latency p50/p99 and relay publish lag.

For each backend (SQLite, PostgreSQL) it starts ``eventide api`` (relay
inside, or ``--relay separate``) against a fresh database and uuid-named
topics, drives order lifecycles (place → pay → ship) over HTTP from
``--concurrency`` clients, each on one keep-alive connection of a minimal
HTTP/1.1 client (:mod:`benchmarks.httpdrive`: about 60 µs of CPU per command,
where aiohttp took 330-380 µs, 40 % of what the API itself took then), then
reads the topics back and measures, per event, the time from the command's
event timestamp (taken before the transaction commits) to the broker's
append time (topics are created with LogAppendTime).

It also reports the cores each process used during the measured run (from
``/proc``: the API, the relay, the load driver, the broker, PostgreSQL, the
whole machine and ``other``, i.e. everything else on the machine) and the
API's CPU time per command, which stays comparable when other programs
share the machine and the rates do not.

    python -m benchmarks.commands                       # both backends
    python -m benchmarks.commands --backend postgresql --commands 20000 --repeat 3
    python -m benchmarks.commands --profile /tmp/prof   # py-spy collapsed stacks per process

Needs a running broker (EVENTIDE_BROKER_URL, `eventide broker start`). For
PostgreSQL it uses EVENTIDE_BENCH_DATABASE_URL (a maintenance database such
as postgresql://eventide@127.0.0.1:25432/postgres) or, if unset, starts the
same throwaway cluster as the tests on ``--pg-port`` (default
EVENTIDE_TEST_PG_PORT, else 25432; in .eventide/pg-<port>) and stops it
after. Results go to stdout and to ``benchmarks/results/commands-<time>/``
(README.md, result.json with every run and the medians, throughput.png,
latency.png), or with ``--reference`` to ``docs/benchmarks/commands/``;
``--out`` writes the JSON to a file of its own too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from eventide.tools import devbroker
from schemas.codecs import EventCodec
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.httpaccess import bearer, http_env
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings

from . import report
from .cpu import CpuMeter
from .httpdrive import Connection

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
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
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
    # to_env(): secrets in clear (a KEK, a Kafka password), not their "***"
    env = {**os.environ, **settings.to_env()}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventide.cli", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, token: str = "") -> None:
    def ready() -> bool:
        try:
            request = urllib.request.Request(f"{url}/health", headers=bearer(token))
            with urllib.request.urlopen(request, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"eventide api exited:\n{log.read_text()[-3000:]}")
        if await asyncio.to_thread(ready):
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"eventide api not ready:\n{log.read_text()[-3000:]}")


Lifecycle = Callable[[str], list[tuple[str, bytes]]]
"""An entity id → the (path, JSON body) of the commands one client sends in turn."""


def order_lifecycle(oid: str) -> list[tuple[str, bytes]]:
    """Place, pay and ship order ``oid`` (no personal data)."""
    return [
        ("/orders", b'{"orderId":"%s","customerId":"c-1","items":[{"sku":"sku-book",'
         b'"quantity":2,"unitPrice":12.5}]}' % oid.encode()),
        (f"/orders/{oid}/payment", b'{"paymentId":"p-%s"}' % oid.encode()),
        (f"/orders/{oid}/shipment", b'{"trackingNumber":"T","carrier":"DHL"}'),
    ]  # fmt: skip


def customer_lifecycle(oid: str) -> list[tuple[str, bytes]]:
    """Create customer ``u-<oid>`` (e-mail and name: personal, encrypted with
    EVENTIDE_PII_ENCRYPTION under a new data key), then place, pay and ship an order
    of theirs."""
    user = f"u-{oid}".encode()
    steps = [
        ("/users", b'{"userId":"%s","email":"%s@example.com","name":"Customer %s"}'
         % (user, oid.encode(), oid.encode())),
        *order_lifecycle(oid),
    ]  # fmt: skip
    path, body = steps[1]
    steps[1] = (path, body.replace(b'"customerId":"c-1"', b'"customerId":"%s"' % user))
    return steps


async def _drive(
    url: str,
    commands: int,
    concurrency: int,
    tag: str,
    token: str = "",
    lifecycle: Lifecycle = order_lifecycle,
) -> tuple[list[float], float]:
    """Lifecycles (``lifecycle``, each a new entity) from ``concurrency`` clients, each on
    its own keep-alive connection (:mod:`benchmarks.httpdrive`); returns (latencies, seconds)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    per = len(lifecycle("x"))
    next_order = 0
    sent = 0
    done_marks = max(1, commands // 10)
    clock = time.perf_counter

    async def client() -> None:
        nonlocal next_order, sent
        conn = await Connection(host, int(port), token).open()
        try:
            while sent + per <= commands and next_order * per < commands:
                oid = f"{tag}-{next_order}"
                next_order += 1
                for path, body in lifecycle(oid):
                    started = clock()
                    status, answer = await conn.post(path, body)
                    if status != 201:
                        raise SystemExit(f"{path}: {status} {answer[:500]!r}")
                    latencies.append(clock() - started)
                    sent += 1
                    if sent % done_marks == 0:
                        print(f"  {sent}/{commands} commands", file=sys.stderr, flush=True)
        finally:
            await conn.close()

    started = clock()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, clock() - started


async def _relay_lags(
    settings: Settings, expected: int, prefix: str, timeout: float = 120
) -> list[float]:
    """Seconds from each event's timestamp to its broker append time, for the
    events of orders whose id starts with ``prefix`` (the measured run, not the
    warm-up, whose first events wait for the relay to connect)."""
    topics = [settings.topic(ORDER_EVENTS.name)]
    consumer = AIOKafkaConsumer(**aiokafka_options(settings))
    await consumer.start()
    lags: dict[str, float] = {}
    codec = EventCodec(limits=settings.limits)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while len(lags) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:
                    event = codec.decode_json(r.value)
                    if not event.data["orderId"].startswith(prefix):
                        continue
                    ts = datetime.fromisoformat(event.timestamp).timestamp()
                    lags.setdefault(event.id, r.timestamp / 1000 - ts)
    finally:
        await consumer.stop()
    return list(lags.values())


async def run_backend(
    base: Settings,
    backend: str,
    admin_url: str | None,
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
    reader_env: dict[str, str] | None = None,
    lifecycle: Lifecycle = order_lifecycle,
    tag: str | None = None,
) -> dict[str, Any]:
    """One measured run of the API (and its relay) on a fresh database and fresh topics.

    ``env``: EVENTIDE_* of the API and relay on top of the run's own (Kafka security,
    EVENTIDE_PII_ENCRYPTION); ``reader_env``: on top of those, of this process's
    read-back of the events (a principal allowed to read them); ``lifecycle``: the
    commands each client sends per entity; ``tag``: names the topics, app id and groups
    (``bench-<tag>``; default random).
    """
    tag = tag or uuid.uuid4().hex[:8]
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
            # the tokens of the environment (EVENTIDE_HTTP_TOKEN is sent); no rate limit
            **http_env(base),
            "EVENTIDE_HTTP_RATE_LIMIT": "0",
            **(env or {}),
        }
    )
    reader = Settings.from_env({**settings.to_env(), **(reader_env or {})})
    await _create_topics(settings)
    log = workdir / "api.log"
    proc = _start("api", settings, log)
    relay = _start("relay", settings, workdir / "relay.log") if args.relay == "separate" else None
    url = f"http://127.0.0.1:{settings.api_port}"
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        await _wait_ready(url, proc, log, settings.http_token.reveal())
        print(f"{backend}: warm-up", file=sys.stderr)
        await _drive(
            url,
            min(600, args.commands),
            args.concurrency,
            f"warm-{tag}",
            settings.http_token.reveal(),
            lifecycle,
        )
        print(f"{backend}: {args.commands} commands, {args.concurrency} clients", file=sys.stderr)
        groups = {"api": (proc.pid, True), "driver": (os.getpid(), False)}
        if relay is not None:
            groups["relay"] = (relay.pid, False)
        broker_pid = devbroker.running_pid(devbroker.paths_for(base))
        if broker_pid is not None:
            groups["broker"] = (broker_pid, False)
        if backend == "postgresql":
            assert admin_url is not None
            groups["postgresql"] = (await _postmaster_pid(admin_url), True)
        if args.profile is not None:
            targets = {"api": proc.pid, "driver": os.getpid()}
            if relay is not None:
                targets["relay"] = relay.pid
            profilers = [_profile(pid, args.profile / f"{backend}-{name}.txt") for name, pid
                         in targets.items()]  # fmt: skip
        meter = CpuMeter(groups)
        meter.start()
        latencies, seconds = await _drive(
            url,
            args.commands,
            args.concurrency,
            f"run-{tag}",
            settings.http_token.reveal(),
            lifecycle,
        )
        cores = meter.stop()
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        orders = len(latencies) * len(order_lifecycle("x")) // len(lifecycle("x"))
        lags = await _relay_lags(reader, expected=orders, prefix=f"run-{tag}")
    finally:
        for child in (proc, relay, *profilers):
            if child is not None and child.poll() is None:
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
        "cores": cores,
        # CPU time per command of the API process(es), relay included when inside:
        # stable under contention, unlike the rates.
        "api_cpu_us_per_command": round(cores["api"] * seconds / len(latencies) * 1e6),
    }


async def _postmaster_pid(admin_url: str) -> int:
    """The pid of the PostgreSQL server (its backends are its children)."""
    conn = await asyncpg.connect(admin_url)
    try:
        data_dir = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])


def _profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (and its children) into collapsed stacks at ``out``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
         "--subprocesses", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _postgres(args: argparse.Namespace) -> tuple[str, Any]:
    """The maintenance database to create bench databases in, and the cluster
    started here (to stop at the end), if any."""
    url = os.environ.get("EVENTIDE_BENCH_DATABASE_URL")
    if url:
        return url, None
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.postgres import Cluster, _answers

    cluster = Cluster(args.pg_port)
    if asyncio.run(_answers(cluster.url)):
        return cluster.url, None
    cluster.start()
    return cluster.url, cluster


MEDIAN_OF = ("commands_per_s", "latency_p50_ms", "latency_p99_ms", "relay_lag_p50_ms",
             "relay_lag_p99_ms", "api_cpu_us_per_command")  # fmt: skip


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of a backend's repeated runs (every run is kept beside them)."""
    out = {k: runs[0][k] for k in ("backend", "commands", "concurrency", "relay")}
    out.update({k: round(statistics.median(r[k] for r in runs), 2) for k in MEDIAN_OF})
    out["cores"] = {
        name: round(statistics.median(r["cores"].get(name, 0.0) for r in runs), 2)
        for name in runs[0]["cores"]
    }
    out["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="EVENTIDE_BROKER_URL: the broker; EVENTIDE_BENCH_DATABASE_URL: a PostgreSQL "
        "maintenance database (else a throwaway cluster on --pg-port).",
    )
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
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per backend (interleaved); medians reported"
    )
    parser.add_argument(
        "--pg-port",
        type=int,
        default=int(os.environ.get("EVENTIDE_TEST_PG_PORT", "25432")),
        help="port of the throwaway PostgreSQL cluster used without "
        "EVENTIDE_BENCH_DATABASE_URL (default: EVENTIDE_TEST_PG_PORT or 25432)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample the API, the relay and the load driver with py-spy during the measured "
        "run; collapsed stacks go to DIR/<backend>-<process>.txt",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON results to this file")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="write the report to docs/benchmarks/commands/ (kept in git)",
    )
    args = parser.parse_args(argv)
    command = report.command_line("benchmarks.commands", argv, env=["EVENTIDE_BROKER_URL"])
    machine = report.machine()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    base = Settings.from_env()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    admin_url, cluster = _postgres(args) if "postgresql" in backends else (None, None)
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    try:
        for _ in range(args.repeat):
            for backend in backends:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runs[backend].append(runner.run(run_backend(base, backend, admin_url, args)))
    finally:
        if cluster is not None:
            cluster.stop()
    results = [_summary(runs[b]) for b in backends]
    groups = list(results[0]["cores"])
    print(
        f"\n{'backend':<11} {'commands/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'lag p50 ms':>10} {'lag p99 ms':>10} {'API µs/cmd':>10}   cores: " + " ".join(groups)
    )
    for r in results:
        print(
            f"{r['backend']:<11} {r['commands_per_s']:>10} {r['latency_p50_ms']:>8} "
            f"{r['latency_p99_ms']:>8} {r['relay_lag_p50_ms']:>10} {r['relay_lag_p99_ms']:>10}"
            f" {r['api_cpu_us_per_command']:>10}   "
            + " ".join(f"{k}={v}" for k, v in r["cores"].items())
        )
    if args.repeat > 1:
        print(f"(medians of {args.repeat} runs per backend)")
    doc = {
        "benchmark": "commands",
        "scenario": "commands",
        "command": command,
        "when": when,
        "machine": machine,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "broker": base.broker_url,
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nresults: {args.out}")
    out = report.run_dir("commands", args.reference)
    report.write(out, doc, commands_report(doc, out), args.reference)


def commands_report(doc: dict[str, Any], out: Path) -> str:
    """The commands scenario's page; writes ``throughput.png`` and ``latency.png`` beside it."""
    results = doc["results"]
    lines = report.header("Commands: the command API and the outbox relay", doc)
    lines += [
        "| backend | commands | clients | relay | commands/s | p50 ms | p99 ms | relay lag "
        "p50 ms | relay lag p99 ms | API CPU µs/command | cores used |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())
        lines.append(
            f"| {r['backend']} | {r['commands']:,} | {r['concurrency']} | {r['relay']} | "
            f"{r['commands_per_s']:,.0f} | {r['latency_p50_ms']:.1f} | "
            f"{r['latency_p99_ms']:.1f} | {r['relay_lag_p50_ms']:.1f} | "
            f"{r['relay_lag_p99_ms']:.1f} | {r['api_cpu_us_per_command']:,.0f} | {cores} |"
        )
    repeat = doc["args"]["repeat"]
    lines += [
        "",
        "Order lifecycles (place, pay, ship) driven over HTTP by concurrent keep-alive "
        "clients; latency per command at the client; relay lag from each event's timestamp "
        "to its broker append time (`benchmarks/commands.py`)"
        + (f"; medians of {repeat} runs per backend." if repeat > 1 else ".")
        + " *Cores used* is CPU seconds / wall seconds per process during the run "
        "(`other`: every other program on the machine).",
        "",
        "![Commands/s and API CPU per command](throughput.png)",
        "",
        "![Command latency and relay lag](latency.png)",
        "",
    ]
    names = [r["backend"] for r in results]
    base = results[0]["commands_per_s"] if results else None
    colors = {
        f"{n}{q}": "tab:blue" if n == "sqlite" else "tab:purple"
        for n in names
        for q in ("", " p50", " p99")
    }
    report.hbars(
        out / "throughput.png",
        "Command API: order lifecycles over HTTP, outbox relay to Kafka",
        [
            (
                f"commands/s (higher is better; ratio to {names[0]})",
                [
                    (n, r["commands_per_s"], f"{r['commands_per_s']:,.0f}/s  "
                     f"{report.ratio(r['commands_per_s'], base)}")
                    for n, r in zip(names, results, strict=True)
                ],
            ),
            (
                "API process CPU µs per command (lower is better)",
                [
                    (n, r["api_cpu_us_per_command"], f"{r['api_cpu_us_per_command']:,.0f} µs")
                    for n, r in zip(names, results, strict=True)
                ],
            ),
        ],
        colors,
    )  # fmt: skip
    report.hbars(
        out / "latency.png",
        "Command API latency and outbox relay lag",
        [
            (
                "command latency at the client, ms (p50 | p99)",
                [
                    (f"{n} {q}", r[f"latency_{q}_ms"], f"{r[f'latency_{q}_ms']:.1f} ms")
                    for n, r in zip(names, results, strict=True)
                    for q in ("p50", "p99")
                ],
            ),
            (
                "relay lag, event timestamp → broker append, ms (p50 | p99)",
                [
                    (f"{n} {q}", r[f"relay_lag_{q}_ms"], f"{r[f'relay_lag_{q}_ms']:.1f} ms")
                    for n, r in zip(names, results, strict=True)
                    for q in ("p50", "p99")
                ],
            ),
        ],
        colors,
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
