"""The benchmark suite: Eventide and its peers in one run, on the same data.

    python -m benchmarks --orders 20000 --customers 5000
    python -m benchmarks --orders 20000 --customers 5000 --reference   # kept in docs/benchmarks/

Against the real broker (``--broker``; started when it does not answer),
three scenarios (``--only`` / ``--skip`` pick among them), each reported in
a folder of its own (:mod:`benchmarks.report`):

throughput
    a pre-loaded Avro backlog (users, order lifecycles with 2 % duplicates)
    drained, one after the other, by: one Eventide worker with
    ``--projections`` (orders + customers), one Eventide worker with the
    orders projection only, a Quix Streams application, a plain aiokafka
    consumer (the ceiling: decode into a dict) and the naive Faust agent
    (``--naive-events`` of them; it is slow), the last three with the same
    orders projection function; then the recovery of the first worker's
    tables from their changelogs. Ratios are to Quix Streams and to the
    naive agent measured in the same run.
scaling
    1, 2 and 4 (``--workers``) Eventide worker processes of one group on
    ``--partitions`` partitions (:mod:`benchmarks.scaling`). With
    ``--cluster 3`` (and ``--only scaling``) on a three-broker dev cluster
    (eventide/tools/devcluster.py; base port: ``--broker``'s), topics with
    three replicas, each row with every ``--standby`` count; reported as
    ``scaling-cluster``.
latency
    p50/p95/p99 end-to-end at fixed offered loads (``--rates``), read from
    the worker's /metrics histogram (:mod:`benchmarks.latency`).

How each drain is timed: :mod:`benchmarks.timing`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from eventide.tools import devbroker
from eventide.tools.demo import fetch_json
from eventide.tools.devcluster import DevCluster
from streams.catalogue import ORDER_EVENTS
from streams.settings import Settings
from streams.topics import ensure_topics

from . import report
from .latency import floor_at_loads, latency_at_loads
from .procs import (
    Progress,
    auth,
    free_port,
    http_settings,
    log,
    ready,
    start,
    stop,
    stop_started,
    wait_until,
)
from .scaling import scaling
from .suite_report import latency_report, scaling_report, throughput_report
from .timing import READY_POLL_S, drain_peer, drain_worker, topics_of
from .workload import Workload, expected_state, make_workload, publish

SCENARIOS = ("throughput", "scaling", "latency")


def verify(settings: Settings, expected: dict[str, dict[str, Any]], n: int) -> dict[str, int]:
    """Compare ``n`` keys per table (the first ``n`` in key order) over HTTP."""
    checked = bad = 0
    for table, docs in expected.items():
        for key in sorted(docs)[:n]:
            code, body = fetch_json(
                f"{settings.web_url}/{table}/{key}", token=settings.http_token.reveal()
            )
            checked += 1
            if code != 200 or body != docs[key]:
                bad += 1
                if bad <= 3:
                    log(f"  MISMATCH {table}/{key}: {code} {body} != {docs[key]}")
    return {"checked": checked, "mismatches": bad}


def _sample(settings: Settings, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"{settings.web_url}/metrics", headers=auth(settings))
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return None


class Suite:
    """One run of the suite: arguments, the work folder, the broker, the workload."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="eventide-bench-"))
        state = str(report.ROOT / ".eventide")
        self.base = Settings.from_env(
            {"EVENTIDE_BROKER_URL": args.broker, "EVENTIDE_STATE_DIR": state}
        )
        self.broker_pid: int | list[int] | None = None
        self.broker_url: str = args.broker
        """Every process's EVENTIDE_BROKER_URL (all the nodes of a cluster)."""
        self.cluster_env: dict[str, str] = {}
        """Settings of every process on a cluster (its replication factor)."""
        self.work: Workload | None = None

    def settings(
        self, app: str, tag: str, projections: str, data: str = "", **extra: str
    ) -> Settings:
        """Settings of one process on the topics ``bench-<tag>-*``, group ``<app>-<tag>``;
        its RocksDB and state under ``<workdir>/<data or app>/<tag>``."""
        return Settings.from_env(
            {
                "EVENTIDE_BROKER_URL": self.broker_url,
                "EVENTIDE_APP_ID": f"{app}-{tag}",
                "EVENTIDE_TOPIC_PREFIX": f"bench-{tag}-",
                "EVENTIDE_PARTITIONS": str(self.args.partitions),
                "EVENTIDE_DATA_DIR": str(self.workdir / (data or app) / tag),
                # its own notifications file (the file sink indexes it at start-up)
                "EVENTIDE_STATE_DIR": str(self.workdir / "state" / (data or app) / tag),
                "EVENTIDE_WEB_PORT": str(free_port()),
                "EVENTIDE_METRICS_INTERVAL": "1",
                "EVENTIDE_PROJECTIONS": projections,
                **http_settings(),
                **self.cluster_env,
                # the engine's client and pipeline as the caller set them (else the defaults)
                **{
                    k: v
                    for k, v in os.environ.items()
                    if k
                    in (
                        "EVENTIDE_KAFKA_CLIENT",
                        "EVENTIDE_PIPELINE_DEPTH",
                        "EVENTIDE_BATCH_MAX_WAIT_MS",
                    )
                },
                **extra,
            }
        )

    def preload(self, settings: Settings) -> int:
        """Publish the workload into fresh topics; returns the events published."""
        assert self.work is not None
        asyncio.run(ensure_topics(settings))
        t = time.monotonic()
        sent = asyncio.run(publish(settings, self.work, "avro"))
        elapsed = time.monotonic() - t
        log(f"pre-loaded {sent:,} Avro events into {settings.topic_prefix}* in {elapsed:.1f}s")
        return sent

    # -- scenarios -------------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        args, work = self.args, self.work
        assert work is not None
        tag = uuid.uuid4().hex[:8]
        full = self.settings("eventide", tag, args.projections)
        self.preload(full)
        exp_orders, exp_customers = expected_state(work)
        progress = Progress(full)
        rows: dict[str, Any] = {}
        try:
            sources, _ = topics_of(full, args.projections)
            events = sum(progress.ends(sources).values())
            log(f"eventide ({args.projections}): draining {events:,} events")
            d = drain_worker(full, events, self.workdir, progress, self.broker_pid)
            proc = d.pop("proc")
            names = args.projections.split(",")
            expected = {"orders": exp_orders, "customers": exp_customers}
            expected = {table: docs for table, docs in expected.items() if table in names}
            d["verified"] = verify(full, expected, args.verify)
            stop(proc)
            rows["eventide"] = d
            self._log_row("eventide", d)

            log("recovery: deleting local RocksDB, restarting from the changelogs")
            shutil.rmtree(full.data_dir)
            t = time.monotonic()
            cmd = [sys.executable, "-m", "eventide.cli", "worker"]
            proc = start(cmd, full, self.workdir / "recovery.log")
            ready_at = wait_until(lambda: ready(full), 1800, "recovery", proc, READY_POLL_S)
            recovery = {
                "restart_to_ready_s": ready_at - t,
                "eventide_recovery_seconds": _sample(full, "eventide_recovery_seconds"),
                "restored_records": _sample(full, "eventide_changelog_restored_records_total"),
                "verified": verify(full, expected, args.verify),
            }
            stop(proc)
            log(f"recovery: ready {recovery['restart_to_ready_s']:.1f}s after start")

            orders_topic = [full.topic(ORDER_EVENTS.name)]
            order_events = sum(progress.ends(orders_topic).values())
            if args.projections != "orders":
                # The same events in topics of their own: order-views, the orders
                # table's changelog, is named by the topic prefix, and this worker
                # must not restore the first one's table from it.
                only = self.settings("eventide-orders", uuid.uuid4().hex[:8], "orders")
                self.preload(only)
                log(f"eventide (orders only): draining {order_events:,} order events")
                d = drain_worker(only, order_events, self.workdir, progress, self.broker_pid)
                proc = d.pop("proc")
                d["verified"] = verify(only, {"orders": exp_orders}, args.verify)
                stop(proc)
                rows["eventide_orders"] = d
                self._log_row("eventide (orders only)", d)

            if "peers" not in args.skip:
                for name, module, count in (
                    ("quix_streams", "benchmarks.peers.quix_app", order_events),
                    ("plain_aiokafka", "benchmarks.peers.plain_aiokafka", order_events),
                    (
                        "naive_faust",
                        "benchmarks.peers.naive_faust",
                        min(args.naive_events, order_events),
                    ),
                ):
                    if count <= 0:
                        continue
                    log(f"peer {name}: draining {count:,} order events")
                    peer = self.settings(name.replace("_", "-"), tag, "orders")
                    rows[name] = drain_peer(
                        name,
                        module,
                        peer,
                        count,
                        self.workdir,
                        progress,
                        self.broker_pid,
                        orders_topic,
                    )
        finally:
            progress.close()
        return {"rows": rows, "recovery": recovery, "events": events}

    def scaling(self) -> list[dict[str, Any]]:
        assert self.work is not None

        def make(tag: str, i: int, standby: int) -> Settings:
            standbys = {"EVENTIDE_STANDBY_REPLICAS": str(standby)} if standby >= 0 else {}
            return self.settings(
                "eventide-scale",
                tag,
                self.args.projections,
                data=f"eventide-scale-{i + 1}",
                EVENTIDE_ADMIN_ENDPOINTS="true",
                **standbys,
            )

        counts = [int(n) for n in self.args.workers.split(",") if n]
        return scaling(
            counts,
            make,
            self.work,
            self.workdir,
            self.broker_pid,
            lambda: uuid.uuid4().hex[:8],
            [int(n) for n in self.args.standby.split(",") if n] or None,
        )

    def latency(self) -> list[dict[str, Any]]:
        args = self.args
        rates = [int(r) for r in args.rates.split(",") if r]
        # The floor first, on topics of its own, with no worker running (benchmarks/latency.py).
        bare = self.settings("latency-floor", uuid.uuid4().hex[:8], args.projections)
        asyncio.run(ensure_topics(bare))
        log(f"latency floor: a bare consumer at {rates} events/s for {args.rate_seconds:.0f}s each")
        floors = floor_at_loads(bare, rates, args.rate_seconds, log)
        lat = self.settings("eventide-latency", uuid.uuid4().hex[:8], args.projections)
        asyncio.run(ensure_topics(lat))
        cmd = [sys.executable, "-m", "eventide.cli", "worker"]
        proc = start(cmd, lat, self.workdir / "latency.log")
        try:
            wait_until(lambda: ready(lat), 120, "latency worker start", proc)
            log(f"latency: offered loads {rates} for {args.rate_seconds:.0f}s each")
            rows = latency_at_loads(lat, rates, args.rate_seconds, log)
        finally:
            stop(proc)
        for row, rate in zip(rows, rates, strict=False):
            row["floor"] = floors.get(rate)
        return rows

    @staticmethod
    def _log_row(name: str, d: dict[str, Any]) -> None:
        log(
            f"{name}: {d['events']:,} events in {d['drain_s']:.1f}s = {d['events_per_s']:,.0f}/s "
            f"({d['cpu_us_per_event']:.1f} µs CPU/event); read models checked: {d['verified']}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=50_000, help="order lifecycles")
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--naive-events", type=int, default=5_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument(
        "--projections",
        default="orders,customers",
        help="EVENTIDE_PROJECTIONS of the full Eventide runs (throughput, scaling, latency)",
    )
    ap.add_argument("--workers", default="1,2,4", help="worker processes per scaling row")
    ap.add_argument(
        "--standby",
        default="",
        help="EVENTIDE_STANDBY_REPLICAS of the scaling rows, comma-separated: each worker "
        "count runs with each (default: the setting's default)",
    )
    ap.add_argument(
        "--cluster",
        type=int,
        default=0,
        help="scaling on a dev cluster of this many brokers (3), on --broker's port and the "
        "next; started and stopped here when it does not run (needs --only scaling)",
    )
    ap.add_argument("--note", default="", help="a sentence for the reports (e.g. the machine)")
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument("--rates", default="1000,2000,4000,8000,16000,20000", help="offered events/s")
    ap.add_argument("--rate-seconds", type=float, default=10.0)
    ap.add_argument("--verify", type=int, default=200, help="read models checked per table")
    ap.add_argument("--only", default="", help=f"comma-separated among {', '.join(SCENARIOS)}")
    ap.add_argument(
        "--skip", default="", help="comma-separated: throughput, peers, scaling, latency"
    )
    ap.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the work folder (every process's log) instead of deleting it",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="write each scenario's report to docs/benchmarks/<scenario>/ (kept in git)",
    )
    args = ap.parse_args(argv)
    args.skip = set(filter(None, args.skip.split(",")))
    chosen = [s for s in SCENARIOS if s not in args.skip]
    if args.only:
        chosen = [s for s in chosen if s in args.only.split(",")]
    if args.cluster and chosen != ["scaling"]:
        ap.error("--cluster runs the scaling scenario only: add --only scaling")
    command = report.command_line("benchmarks", argv)

    suite = Suite(args)
    cluster = DevCluster.from_settings(suite.base, nodes=args.cluster) if args.cluster else None
    if cluster is not None:
        started_broker = not all(node.up for node in cluster.status())
        if started_broker:
            cluster.start(log)
        suite.broker_url = cluster.layout.broker_url
        suite.cluster_env = {"EVENTIDE_REPLICATION_FACTOR": "3"}
        suite.broker_pid = [p for n in cluster.layout.node_ids if (p := cluster.pid(n))]
    else:
        started_broker = not devbroker.is_answering(suite.base)
        if started_broker:
            devbroker.start(suite.base, log)
        suite.broker_pid = devbroker.running_pid(devbroker.paths_for(suite.base))
    common = {
        "command": command,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": report.machine(cluster_nodes=args.cluster),
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
        "broker_url": suite.broker_url,
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        log(f"generating {args.orders:,} orders for {args.customers:,} customers")
        suite.work = make_workload(args.orders, args.customers, seed=1)
        for scenario in chosen:
            log(f"== {scenario}")
            results[scenario] = {"scenario": scenario, **common, **_run(suite, scenario)}
        common["load_average_after"] = report.load_average()
        for result in results.values():
            result["load_average_after"] = common["load_average_after"]
    finally:
        stop_started()
        if started_broker and cluster is not None:
            cluster.stop(log)
        elif started_broker:
            devbroker.stop(suite.base, log)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    writers = {
        "throughput": throughput_report,
        "scaling": scaling_report,
        "latency": latency_report,
    }
    for scenario, result in results.items():
        folder = "scaling-cluster" if cluster is not None else scenario
        out = report.run_dir(folder, args.reference, stamp)
        markdown = writers[scenario](result, out)
        report.write(out, result, markdown, args.reference)
        print(markdown)
    if args.keep_logs:
        print(f"logs: {suite.workdir}")
    else:
        shutil.rmtree(suite.workdir, ignore_errors=True)
    return 0


def _run(suite: Suite, scenario: str) -> dict[str, Any]:
    if scenario == "throughput":
        return suite.throughput()
    if scenario == "scaling":
        return {"rows": suite.scaling()}
    return {"rows": suite.latency()}


if __name__ == "__main__":
    sys.exit(main())
