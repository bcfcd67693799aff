"""Security benchmark: what TLS + SCRAM and personal-data encryption cost, in one run.

    python -m benchmarks.security                           # the three rows below
    python -m benchmarks.security --orders 10000 --commands 1200   # a quick run

The same workload (user.created per customer, order lifecycles with
duplicates, Avro) is measured in each *row*, one after the other:

plain
    the plaintext dev broker (``--broker``), EVENTIDE_PII_ENCRYPTION off;
plain+pii
    the same broker, personal fields encrypted (the customers' e-mail and name
    pre-loaded as ``pii:v1:`` ciphertext under a data key each; the command API
    encrypts them);
secured+pii
    the SASL_SSL dev broker (``--secure-broker``, default the plaintext port + 8,
    started as by ``eventide broker start --secure``): TLS, SCRAM-SHA-512, the
    deny-by-default ACLs; each process connects as its own principal (the worker
    as ``worker``, the command API and its relay as ``relay``, the pre-loader and
    the progress polls as ``admin``); encryption on;
secured
    (``--rows`` only) the SASL_SSL broker with encryption off.

Each row measures:

1. the drain: the workload is pre-loaded into fresh topics and one ``eventide
   worker`` (orders + customers) drains it, timed as in :mod:`benchmarks.drain`
   (:func:`benchmarks.timing.drain_worker`); a sample of read models is then
   compared over HTTP with the state computed offline (customers decrypted);
2. the commands: ``eventide api`` with its relay inside (SQLite outbox), driven
   by :func:`benchmarks.commands.run_backend` with customer lifecycles: create a
   customer (personal fields), place, pay and ship an order of theirs.

``--kafka-client`` picks the worker's client: with aiokafka the worker on the
SASL_SSL broker loops through rebalances (its changelog recovery, one new TLS +
SCRAM connection per partition, runs in the rebalance callback, when aiokafka
sends no heartbeat), so the reference run uses confluent (benchmarks/README.md).

Ratios are to the ``plain`` row of the same run: ``plain+pii / plain`` is
what encryption costs, ``secured+pii / plain+pii`` what TLS + SCRAM cost, and
``secured+pii / plain`` both. Brokers not answering are started here and
stopped at the end, the plaintext one before the secured one starts. Results
(README.md, result.json, throughput.png) go to benchmarks/results/security-<time>/,
or with ``--reference`` to docs/benchmarks/security/ (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from eventide.tools import devbroker, devsecurity
from schemas.envelope import Envelope
from schemas.personal import DataKey, key_record
from schemas.registry import Registry
from streams.exceptions import BrokerError
from streams.keys import KafkaKeyStore, PersonalFields
from streams.settings import Settings, parse_broker_url
from streams.topics import ensure_topics

from . import commands, report
from .drain import verify
from .procs import ROOT, Progress, free_port, http_settings, log, stop, stop_started
from .security_report import ROWS, security_report
from .timing import drain_worker, topics_of
from .workload import Workload, expected_state, make_workload, publish


@dataclass(frozen=True)
class Broker:
    """One dev broker of the run and the settings of its principals."""

    settings: Settings
    """The broker's own: URL, state dir (``.eventide``)."""
    secrets: devsecurity.SecretsDir | None
    """CA and passwords of the secured broker; None for the plaintext one."""

    def env(self, role: str) -> dict[str, str]:
        """EVENTIDE_* of a client connecting as ``role`` (nothing extra in plaintext)."""
        if self.secrets is None:
            return {"EVENTIDE_BROKER_URL": self.settings.broker_url}
        return devsecurity.client_env(self.settings, self.secrets, role)

    def allow(self, prefix: str, app_id: str) -> None:
        """The roles' ACLs on topics ``prefix*`` and groups ``app_id*`` (secured only)."""
        if self.secrets is not None:
            scope = replace(self.settings, topic_prefix=prefix, app_id=app_id)
            devsecurity.create_acls(scope, self.secrets)


def secure_url(plain: str) -> str:
    """The secured broker's default URL: the plaintext broker's port + 8."""
    host, _, port = parse_broker_url(plain)[0].rpartition(":")
    return f"kafka://{host}:{int(port) + 8}"


async def encrypt_users(settings: Settings, users: list[Envelope]) -> list[Envelope]:
    """``users`` with their personal fields encrypted, each customer under a new data
    key published to the keys topic first (all in one batch, as the command API
    would have one by one)."""
    keys = KafkaKeyStore(settings)
    try:
        await keys.wait_ready(timeout=30)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        made = {e.data["userId"]: DataKey.generate(e.data["userId"]) for e in users}
        kek = keys.ring.keks.current
        await keys.publish([(c, *key_record(kek, k, now)) for c, k in made.items()])
        personal = PersonalFields(Registry.load())
        return [
            replace(e, data=personal.encrypt(made[e.data["userId"]], e.name, e.data)) for e in users
        ]
    finally:
        await keys.stop()


def drain_row(
    broker: Broker,
    encryption: bool,
    work: Workload,
    expected: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """Pre-load ``work`` into fresh topics, drain them with one worker, check a sample."""
    tag = uuid.uuid4().hex[:8]
    app, prefix = f"secdrain-{tag}", f"secdrain-{tag}-"
    common = {
        "EVENTIDE_APP_ID": app,
        "EVENTIDE_TOPIC_PREFIX": prefix,
        "EVENTIDE_PARTITIONS": str(args.partitions),
        "EVENTIDE_DATA_DIR": str(workdir / f"data-{tag}"),
        # the notifications file and the development KEK, shared with the pre-loader
        "EVENTIDE_STATE_DIR": str(workdir / f"state-{tag}"),
        "EVENTIDE_WEB_PORT": str(free_port()),
        "EVENTIDE_LOG_LEVEL": "info",
        "EVENTIDE_PROJECTIONS": "orders,customers",
        "EVENTIDE_PII_ENCRYPTION": str(encryption).lower(),
        "EVENTIDE_KAFKA_CLIENT": args.kafka_client,
        **http_settings(),
    }
    broker.allow(prefix, app)
    admin = Settings.from_env({**common, **broker.env("admin")})
    worker = Settings.from_env({**common, **broker.env("worker")})
    asyncio.run(ensure_topics(admin))
    users = asyncio.run(encrypt_users(admin, work.users)) if encryption else work.users
    t = time.monotonic()
    sent = asyncio.run(publish(admin, Workload(users=users, orders=work.orders), "avro"))
    log(f"  pre-loaded {sent:,} Avro events in {time.monotonic() - t:.1f}s")
    progress = Progress(admin)
    try:
        sources, _ = topics_of(worker, worker.projections)
        events = sum(progress.ends(sources).values())
        broker_pid = devbroker.running_pid(devbroker.paths_for(broker.settings))
        row = drain_worker(worker, events, workdir, progress, broker_pid)
        row["mismatches"] = verify(worker, expected, args.verify)
        row["read_models_checked"] = len(expected) * args.verify
        stop(row.pop("proc"))
    finally:
        progress.close()
    log(
        f"  drain: {events:,} events in {row['drain_s']:.1f}s = {row['events_per_s']:,.0f}/s "
        f"(worker CPU {row['cpu_us_per_event']:.1f} µs/event), "
        f"{row['mismatches']} mismatches in {row['read_models_checked']:,} read models"
    )
    return row


def commands_row(broker: Broker, encryption: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The command API (relay inside, SQLite) driven with customer lifecycles."""
    tag = f"sec{uuid.uuid4().hex[:8]}"
    broker.allow(f"bench-{tag}-", f"bench-{tag}")
    options = argparse.Namespace(
        partitions=args.partitions,
        relay="inside",
        commands=args.commands,
        concurrency=args.concurrency,
        profile=None,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        row = runner.run(
            commands.run_backend(
                broker.settings,
                "sqlite",
                None,
                options,
                env={**broker.env("relay"), "EVENTIDE_PII_ENCRYPTION": str(encryption).lower()},
                reader_env=broker.env("admin"),
                lifecycle=commands.customer_lifecycle,
                tag=tag,
            )
        )
    log(
        f"  commands: {row['commands']:,} in {row['seconds']:.1f}s = "
        f"{row['commands_per_s']:,.0f}/s, p99 {row['latency_p99_ms']:.1f} ms, relay lag p99 "
        f"{row['relay_lag_p99_ms']:.1f} ms (API CPU {row['api_cpu_us_per_command']} µs/command)"
    )
    return row


BROKER_VARIABLES = ("EVENTIDE_BROKER_HEAP", "EVENTIDE_BROKER_START_TIMEOUT")
"""Settings of the environment the brokers started here take."""


def start_broker(url: str, secure: bool) -> tuple[Broker, bool]:
    """The broker at ``url`` (started, secured or not, when nothing answers);
    returns it and whether it was started here."""
    settings = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": url,
            "EVENTIDE_STATE_DIR": str(ROOT / ".eventide"),
            **{k: os.environ[k] for k in BROKER_VARIABLES if k in os.environ},
        }
    )
    started = False
    for attempt in (1, 2, 3):
        if devbroker.is_answering(settings):
            break
        try:
            devbroker.start(settings, log, secure=secure)
            started = True
        except BrokerError as exc:
            # the port is in the kernel's ephemeral range: a client socket may hold it
            if "Address already in use" not in str(exc) or attempt == 3:
                raise
            log(f"port of {url} held by another socket; trying again in 5 s")
            time.sleep(5)
    if secure and not devbroker.paths_for(settings).secure_mark.exists():
        raise SystemExit(f"--secure-broker {url}: a plaintext broker answers there")
    secrets = devsecurity.secrets_for(settings) if secure else None
    return Broker(settings, secrets), started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=25_000, help="order lifecycles pre-loaded")
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--commands", type=int, default=3000, help="commands per row (4 per customer)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092", help="the plaintext broker")
    ap.add_argument(
        "--secure-broker", default=None, help="the SASL_SSL broker (default: --broker's port + 8)"
    )
    ap.add_argument(
        "--rows",
        default="plain,plain+pii,secured+pii",
        help=f"rows to measure, in this order, among {','.join(ROWS)}",
    )
    ap.add_argument("--verify", type=int, default=500, help="read models checked per table")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--kafka-client",
        choices=["confluent", "aiokafka"],
        default=os.environ.get("EVENTIDE_KAFKA_CLIENT", "aiokafka"),
        help="EVENTIDE_KAFKA_CLIENT of the worker (default: from the environment)",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="write the report to docs/benchmarks/security/ (kept in git)",
    )
    args = ap.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        ap.error(f"--rows: unknown {','.join(unknown)}; choose among {','.join(ROWS)}")
    secure_broker = args.secure_broker or secure_url(args.broker)
    command = report.command_line("benchmarks.security", argv, env=BROKER_VARIABLES)
    machine = report.machine()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    workdir = Path(tempfile.mkdtemp(prefix="eventide-security-"))

    log(f"generating {args.orders:,} orders for {args.customers:,} customers")
    work = make_workload(args.orders, args.customers, seed=args.seed)
    orders, customers = expected_state(work)
    expected = {"orders": orders, "customers": customers}
    measured: dict[str, dict[str, Any]] = {}
    try:
        for secure, url in ((False, args.broker), (True, secure_broker)):
            mine = [r for r in rows if ROWS[r]["secured"] == secure]
            if not mine:
                continue
            broker, started = start_broker(url, secure)
            try:
                for name in mine:
                    encryption = bool(ROWS[name]["encryption"])
                    log(f"{name}: {ROWS[name]['label']} ({url})")
                    drain = drain_row(broker, encryption, work, expected, args, workdir)
                    measured[name] = {
                        "drain": drain,
                        "commands": commands_row(broker, encryption, args),
                    }
            finally:
                stop_started()
                if started:
                    devbroker.stop(broker.settings, log)
    finally:
        stop_started()
    result = {
        "scenario": "security",
        "command": command,
        "when": when,
        "machine": machine,
        "args": vars(args),
        "brokers": {"plaintext": args.broker, "secured": secure_broker},
        "rows": {name: measured[name] for name in rows},
    }
    out = report.run_dir("security", args.reference)
    markdown = security_report(result, out)
    report.write(out, result, markdown, args.reference)
    print(markdown)
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r["drain"]["mismatches"] for r in measured.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
