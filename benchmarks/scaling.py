"""Scaling by partitions: N Eventide worker processes of one group drain the same backlog.

Workers started one after the other do not start consuming together: the
first one drains alone until the others have joined, and every join is a
rebalance. So each row is measured on fresh, empty topics:

1. the N workers start (``EVENTIDE_ADMIN_ENDPOINTS=true``) and the suite
   waits until every one is ready and their partitions (``/health``) cover
   every table partition exactly once, twice in a row a second apart;
2. every worker's consumer is paused (``POST /admin/pause``), then the
   workload is published; nothing may be committed meanwhile;
3. every worker is resumed (``POST /admin/resume``): that moment is the
   start; the end is the first poll at which the group has committed every
   source event and every customer fact (:func:`benchmarks.timing.drained`).

Each row gives the total events/s (every event of the workload over that
window) and, per worker, its CPU time (``/proc/<pid>/stat``) divided by the
events of the source partitions it owned. A row whose assignment changed
during the run says so (``rebalanced``): its per-worker shares are then wrong.

On a cluster (``python -m benchmarks --cluster 3``) the topics have three
replicas and every row is run with each ``--standby`` count
(EVENTIDE_STANDBY_REPLICAS): a standby follows the changelogs of partitions it
does not own, which costs the workers CPU and the brokers fetches.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.settings import Settings
from streams.topics import ensure_topics

from .procs import Progress, auth, cpu_seconds, log, start, stop, wait_until
from .timing import POLL_S, brokers_total, drained, noise_meter, table_sources, topics_of
from .workload import Workload, publish


def _health(settings: Settings) -> dict[str, Any] | None:
    try:
        request = urllib.request.Request(f"{settings.web_url}/health", headers=auth(settings))
        with urllib.request.urlopen(request, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except OSError:
        return None


def _post(settings: Settings, path: str) -> None:
    request = urllib.request.Request(
        f"{settings.web_url}{path}", data=b"", method="POST", headers=auth(settings)
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise SystemExit(f"{settings.web_url}{path}: HTTP {response.status}")


def _rebalances(settings: Settings) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"{settings.web_url}/metrics", headers=auth(settings))
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "eventide_rebalances_total"
    )


def assignment(workers: list[Settings], expected: set[str]) -> list[list[str]] | None:
    """Each worker's table partitions once all are ready and cover ``expected`` exactly once."""
    owned: list[list[str]] = []
    for s in workers:
        body = _health(s)
        if body is None or body.get("status") != "ready" or not body.get("partitions"):
            return None
        owned.append(list(body["partitions"]))
    flat = [p for parts in owned for p in parts]
    if len(flat) != len(expected) or set(flat) != expected:
        return None
    return owned


def drain_group(
    workers: list[Settings],
    work: Workload,
    workdir: Path,
    broker_pid: int | list[int] | None,
) -> dict[str, Any]:
    """One row: ``workers`` (same app id, own ports and data dirs) drain ``work``;
    ``broker_pid``: the broker, or the nodes of a cluster."""
    first = workers[0]
    group = first.projection_group
    sources, tail = topics_of(first, first.projections)
    by_table = table_sources(first, first.projections)
    expected = {f"{table}[{p}]" for table in by_table for p in range(first.partitions)}
    asyncio.run(ensure_topics(first))
    procs = [
        start(
            [sys.executable, "-m", "eventide.cli", "worker"],
            s,
            workdir / f"scaling-{len(workers)}-{s.web_port}.log",
        )
        for s in workers
    ]
    progress = Progress(first)
    try:
        seen: list[list[list[str]] | None] = [None]

        def settled() -> bool:
            now = assignment(workers, expected)
            stable = now is not None and now == seen[0]
            seen[0] = now
            return stable

        wait_until(settled, 180, f"{len(workers)} workers: assignment", procs[0], 1.0)
        owned = seen[0]
        assert owned is not None
        rebalances0 = [_rebalances(s) for s in workers]
        for s in workers:
            _post(s, "/admin/pause")
        t = time.monotonic()
        asyncio.run(publish(first, work, "avro"))
        ends = progress.ends(sources)
        total = sum(ends.values())
        log(f"  published {total:,} source events in {time.monotonic() - t:.1f}s, paused")
        early = progress(group, sources + tail)[0]
        early += sum(int((_health(s) or {}).get("eventsProcessed", 0)) for s in workers)
        shares = [
            sum(
                ends.get((topic, int(part.rsplit("[", 1)[1].rstrip("]"))), 0)
                for part in parts
                for topic in by_table[part.rsplit("[", 1)[0]]
            )
            for parts in owned
        ]
        meter = noise_meter({f"worker-{i + 1}": p.pid for i, p in enumerate(procs)}, broker_pid)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        meter.start()
        t0 = time.monotonic()
        for s in workers:
            _post(s, "/admin/resume")
        shown = [t0]
        first_commit: list[float] = []

        def done() -> bool:
            now = time.monotonic()
            if not first_commit or now - shown[0] > 5:
                committed = progress(group, sources)[0]
                if committed and not first_commit:
                    first_commit.append(now - t0)
                if now - shown[0] > 5:
                    log(f"  {len(workers)} worker(s): {committed:,}/{total:,}")
                    shown[0] = now
            return drained(progress, group, sources, tail)

        t1 = wait_until(done, 3600, f"{len(workers)} workers: drain", procs[0], POLL_S)
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        cores = brokers_total(meter.stop())
        rebalanced = [_rebalances(s) for s in workers] != rebalances0 or assignment(
            workers, expected
        ) != owned
    finally:
        progress.close()
        for p in procs:
            stop(p)
    elapsed = t1 - t0
    per_worker = [
        {
            "partitions": parts,
            "events": share,
            "cpu_s": c,
            "cpu_us_per_event": c / share * 1e6 if share else None,
        }
        for parts, share, c in zip(owned, shares, cpu, strict=True)
    ]
    row = {
        "workers": len(workers),
        "standby_replicas": first.standby_replicas,
        "replication_factor": first.replication_factor,
        "events": total,
        "drain_s": elapsed,
        "events_per_s": total / elapsed,
        "cpu_us_per_event": sum(cpu) / total * 1e6,
        "per_worker": per_worker,
        "cores": cores,
        "other_cores": cores["other"],
        "processed_while_paused": early,
        "rebalanced": rebalanced,
        # how long the first batches took before anything was committed (a diagnosis)
        "first_commit_s": first_commit[0] if first_commit else elapsed,
    }
    log(
        f"{len(workers)} worker(s), {first.standby_replicas} standby: {total:,} events in "
        f"{elapsed:.1f}s = "
        f"{row['events_per_s']:,.0f}/s; CPU µs/event per worker "
        + ", ".join(f"{w['cpu_us_per_event']:.1f}" for w in per_worker if w["cpu_us_per_event"])
        + (" (REBALANCED during the run)" if rebalanced else "")
    )
    return row


def scaling(
    counts: list[int],
    make: Callable[[str, int, int], Settings],
    work: Workload,
    workdir: Path,
    broker_pid: int | list[int] | None,
    fresh_tag: Callable[[], str],
    standbys: list[int] | None = None,
) -> list[dict[str, Any]]:
    """A row per worker count and standby count (EVENTIDE_STANDBY_REPLICAS;
    None: the setting's default); ``make(tag, i, standby)`` is worker i's settings
    on topics ``tag``."""
    rows = []
    for standby in standbys or [-1]:
        for n in counts:
            tag = fresh_tag()
            shown = "" if standby < 0 else f", {standby} standby replica(s)"
            log(f"scaling: {n} worker process(es){shown} on fresh topics bench-{tag}-*")
            group = [make(tag, i, standby) for i in range(n)]
            rows.append(drain_group(group, work, workdir, broker_pid))
    return rows
