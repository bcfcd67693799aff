"""How the suite times a drain: from the first record fetched to the group's last commit.

Every implementation drains events already in Kafka, and every rate is
*all the events it had to process* divided by the time *from the moment it
fetched its first record to the moment the broker shows its group's last
commit*:

- an Eventide worker is timed from the moment its ``/health`` turns ready
  (partitions assigned, stores recovered, consumer positioned: the next
  thing it does is fetch), polled every 50 ms;
- a peer (Quix Streams, plain aiokafka, naive Faust) writes its own mark
  when it handles its first record (:mod:`benchmarks.peers.mark`);
- the end is the first poll (every :data:`POLL_S`) at which the group's
  committed offsets reach the end offsets of every source partition (and,
  for the customers read model, of the customer-facts topic it feeds
  itself). Start-up, group join and the last poll's 0-100 ms are the
  error margin, so a reference run should drain for 10 s or more.

Worker CPU is read from ``/proc/<pid>/stat`` at both ends: CPU µs per event
does not depend on what else the machine runs as much as events/s does.
``other_cores`` is what every other program on the machine used meanwhile
(cores, from ``/proc/stat``): the noise of the measurement.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents import PROJECTIONS
from streams.failures import retry_topic
from streams.settings import Settings

from .cpu import CpuMeter
from .peers.mark import read_mark
from .procs import Progress, cpu_seconds, log, ready, start, stop, wait_until

POLL_S = 0.1
"""Seconds between two reads of the group's committed offsets."""

READY_POLL_S = 0.05
"""Seconds between two ``/health`` requests while a worker starts."""


def selected(projections: str) -> list[Any]:
    """The projection classes an EVENTIDE_PROJECTIONS value names."""
    names = projections.split(",")
    found = [cls for cls in PROJECTIONS if cls.spec.name in names]
    if len(found) != len(set(names)):
        raise SystemExit(f"unknown projection in {projections!r}")
    return found


def topics_of(settings: Settings, projections: str) -> tuple[list[str], list[str]]:
    """(sources, tail) of a worker running ``projections``.

    Sources are the topics the events come from (counted as events); the tail
    is what the projections feed each other (customer facts) and the retry
    topics: the drain is over when the group has committed those too.
    """
    chosen = selected(projections)
    internal = {spec.name for cls in chosen for spec in cls.spec.outputs}
    sources: list[str] = []
    tail: list[str] = []
    for cls in chosen:
        for spec in cls.spec.sources:
            into = tail if spec.name in internal else sources
            if settings.topic(spec.name) not in into:
                into.append(settings.topic(spec.name))
    tail += [retry_topic(t) for t in sources + tail]
    return sources, tail


def table_sources(settings: Settings, projections: str) -> dict[str, list[str]]:
    """table → the source topics (not fed by another projection) its partitions read."""
    chosen = selected(projections)
    internal = {spec.name for cls in chosen for spec in cls.spec.outputs}
    return {
        cls.spec.name: [settings.topic(s.name) for s in cls.spec.sources if s.name not in internal]
        for cls in chosen
    }


def noise_meter(measured: dict[str, int], broker_pid: int | Sequence[int] | None) -> CpuMeter:
    """A meter of the measured processes, the broker and this process (the rest is noise).

    ``broker_pid``: the broker, or the nodes of a cluster (``broker-1``, ...; see
    :func:`brokers_total`)."""
    groups = {name: (pid, False) for name, pid in measured.items()}
    groups["suite"] = (os.getpid(), False)
    if isinstance(broker_pid, int):
        groups["broker"] = (broker_pid, False)
    elif broker_pid is not None:
        groups.update({f"broker-{i}": (pid, False) for i, pid in enumerate(broker_pid, 1)})
    return CpuMeter(groups)


def brokers_total(cores: dict[str, float]) -> dict[str, float]:
    """``cores`` with ``broker``: the cores of every cluster node (``broker-<i>``) together."""
    nodes = [v for k, v in cores.items() if k.startswith("broker-")]
    return {**cores, "broker": round(sum(nodes), 2)} if nodes else cores


def drained(progress: Progress, group: str, sources: list[str], tail: list[str]) -> bool:
    """Whether ``group`` has committed every record of ``sources``, then of ``tail``."""
    done, end = progress(group, sources)
    if done < end:
        return False
    if not tail:
        return True
    tail_done, tail_end = progress(group, tail)
    return tail_done >= tail_end


def drain_worker(
    settings: Settings,
    events: int,
    workdir: Path,
    progress: Progress,
    broker_pid: int | None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Start one ``eventide worker`` on a pre-loaded backlog; time it from ready to drained.

    ``events``: the events in its source topics. The process keeps running
    (``proc``) so that its read models can be checked.
    """
    sources, tail = topics_of(settings, settings.projections)
    group = settings.projection_group
    launched = time.monotonic()
    command = command or [sys.executable, "-m", "eventide.cli", "worker"]
    proc = start(command, settings, workdir / f"worker-{settings.app_id}.log")
    t0 = wait_until(lambda: ready(settings), 120, "eventide worker start", proc, READY_POLL_S)
    cpu0 = cpu_seconds(proc.pid)
    meter = noise_meter({"worker": proc.pid}, broker_pid)
    meter.start()
    shown = [t0]

    def done() -> bool:
        if time.monotonic() - shown[0] > 5:
            log(f"  eventide: {progress(group, sources)[0]:,}/{events:,} source events")
            shown[0] = time.monotonic()
        return drained(progress, group, sources, tail)

    t1 = wait_until(done, 3600, "eventide drain", proc, POLL_S)
    cpu = cpu_seconds(proc.pid) - cpu0
    cores = meter.stop()
    return {
        "proc": proc,
        "projections": settings.projections,
        "events": events,
        "start_s": t0 - launched,
        "drain_s": t1 - t0,
        "events_per_s": events / (t1 - t0),
        "cpu_s": cpu,
        "cpu_us_per_event": cpu / events * 1e6,
        "cores": cores,
        "other_cores": cores["other"],
    }


def drain_peer(
    name: str,
    module: str,
    settings: Settings,
    events: int,
    workdir: Path,
    progress: Progress,
    broker_pid: int | None,
    topics: list[str],
) -> dict[str, Any]:
    """Run a peer (group EVENTIDE_APP_ID) until it has committed ``events`` records of ``topics``.

    Timed from its own first-record mark to the poll that sees the commit;
    the rate counts every record it committed by then.
    """
    mark = workdir / f"{name}.first-record"
    mark.unlink(missing_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    proc = start(
        [sys.executable, "-m", module],
        settings,
        workdir / f"{name}.log",
        {"BENCH_FIRST_RECORD_FILE": str(mark)},
    )
    try:
        wait_until(lambda: mark.exists(), 180, f"{name}: first record", proc, READY_POLL_S)
        meter = noise_meter({name: proc.pid}, broker_pid)
        meter.start()
        first = read_mark(mark)
        assert first is not None
        t0, cpu0 = first
        shown = [t0]
        committed = [0]

        def enough() -> bool:
            committed[0] = progress(settings.app_id, topics)[0]
            if time.monotonic() - shown[0] > 5:
                log(f"  {name}: {committed[0]:,}/{events:,} events committed")
                shown[0] = time.monotonic()
            return committed[0] >= events

        t1 = wait_until(enough, 3600, f"{name} drain", proc, POLL_S)
        cpu = cpu_seconds(proc.pid) - cpu0
        cores = meter.stop()
    finally:
        stop(proc)
    done = committed[0]
    rate = done / (t1 - t0)
    per = cpu / done * 1e6
    log(f"{name}: {done:,} events in {t1 - t0:.1f}s = {rate:,.0f}/s ({per:.1f} µs CPU/event)")
    return {
        "events": done,
        "drain_s": t1 - t0,
        "events_per_s": rate,
        "cpu_s": cpu,
        "cpu_us_per_event": cpu / done * 1e6,
        "cores": cores,
        "other_cores": cores["other"],
    }
