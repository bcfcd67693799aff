"""Broker faults on the three-broker dev cluster (eventide/tools/devcluster.py).

The cases run on a cluster of their own (``--cluster-port``: nodes on that port
and the next two, controllers 10 above), replication factor 3 and
``min.insync.replicas=2``; it is started when it does not run and stopped at
the end of the case if the case started it.
"""

from __future__ import annotations

import time
from collections import Counter

from benchmarks.procs import log
from eventide.tools.devcluster import DevCluster
from streams.catalogue import ORDER_EVENTS

from .harness import Case, Outcome


def _cluster(case: Case) -> tuple[DevCluster, bool]:
    if not case.opts.cluster_port:
        raise RuntimeError("no port for the cluster (--cluster-port)")
    cluster = DevCluster(
        case.opts.cluster_port,
        case.opts.workdir / "cluster",
        partitions=case.opts.partitions,
        heap="384m",
    )
    started = not all(s.up for s in cluster.status())
    if started:
        cluster.start(lambda m: log(f"  {m}"))
    settings = cluster.client_settings(case.settings)
    case.reconfigure(
        EVENTIDE_BROKER_URL=settings.broker_url,
        EVENTIDE_REPLICATION_FACTOR=str(settings.replication_factor),
    )
    return cluster, started


def leader_kill(case: Case) -> Outcome:
    """kill -9 of the node leading the most order-events partitions; restarted after
    15 s (6 s short)."""
    cluster, started = _cluster(case)
    try:
        w = case.worker().start()
        case.begin()
        case.run_for(4)
        topic = case.settings.topic(ORDER_EVENTS.name)
        leaders = Counter(cluster.leader_of(topic, p) for p in range(case.opts.partitions))
        node, led = leaders.most_common(1)[0]
        assert node is not None
        at = time.monotonic()
        cluster.kill(node)
        log(f"  killed node {node}, leader of {led} of {case.opts.partitions} partitions")
        case.run_for(6 if case.opts.small else 15)
        cluster.start_node(node, lambda m: log(f"  {m}"))
        took = case.recovery(at, w)
        log(f"  node {node} back; the worker caught up {took:.1f} s after the kill")
        case.outcome.notes.append(f"node {node} led {led} of {case.opts.partitions} partitions")
        case.run_for(2)
        return case.verify(w)
    finally:
        case.close()
        if started:
            cluster.stop(lambda m: log(f"  {m}"), grace=10.0)


def cluster_restart(case: Case) -> Outcome:
    """Every node stopped (SIGTERM) and started again while the worker runs."""
    cluster, started = _cluster(case)
    try:
        w = case.worker().start()
        case.begin()
        case.run_for(4)
        at = time.monotonic()
        cluster.stop(lambda m: log(f"  {m}"), grace=30.0)
        cluster.start(lambda m: log(f"  {m}"))
        log(f"  cluster restarted in {time.monotonic() - at:.1f} s")
        took = case.recovery(at, w)
        log(f"  the worker caught up {took:.1f} s after the stop")
        case.run_for(2)
        return case.verify(w)
    finally:
        case.close()
        if started:
            cluster.stop(lambda m: log(f"  {m}"), grace=10.0)
