"""Drain a pre-loaded backlog with N Eventide worker processes (one group)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from streams.catalogue import CUSTOMER_FACTS, ORDER_EVENTS, USER_EVENTS
from streams.settings import Settings

from .drain import Progress, cpu_seconds, log, ready, start, stop, wait_until


def drain_workers(
    workers: list[Settings], total: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Start ``workers`` (same app id, own ports and data dirs); time the drain.

    Timing starts once every worker answers /health; events committed before
    that are left out of the rate. The processes keep running (``procs``).
    """
    first = workers[0]
    group = first.projection_group
    sources = [first.topic(ORDER_EVENTS.name), first.topic(USER_EVENTS.name)]
    facts = [first.topic(CUSTOMER_FACTS.name)]
    procs = [
        start(
            [sys.executable, "-m", "eventide.cli", "worker"],
            s,
            workdir / f"worker-{s.web_port}.log",
        )
        for s in workers
    ]
    for s, p in zip(workers, procs, strict=True):
        wait_until(lambda s=s: ready(s), 120, f"worker :{s.web_port} start", p)
    t0 = time.monotonic()
    done0 = progress(group, sources)[0]
    cpu0 = sum(cpu_seconds(p.pid) for p in procs)
    last = [0.0]

    def drained() -> bool:
        done, end = progress(group, sources)
        if time.monotonic() - last[0] > 5:
            log(f"  {len(workers)} worker(s): {done:,}/{end:,} source events")
            last[0] = time.monotonic()
        if done < end:
            return False
        fdone, fend = progress(group, facts)
        return fdone >= fend

    wait_until(drained, 3600, "eventide drain", procs[0])
    elapsed = time.monotonic() - t0
    counted = total - done0
    cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
    return {
        "procs": procs,
        "workers": len(workers),
        "events": counted,
        "drain_s": elapsed,
        "events_per_s": counted / elapsed,
        "worker_cpu_us_per_event": cpu / max(counted, 1) * 1e6,
    }


def stop_all(procs: list[Any]) -> None:
    for p in procs:
        stop(p)
