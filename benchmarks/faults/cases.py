"""The fault cases on one broker: each starts its workers and the stream, injects
its fault while events keep coming, times the recovery and hands back the audit.

Every function takes a :class:`~benchmarks.faults.harness.Case` and returns its
:class:`~benchmarks.faults.harness.Outcome` (``case.verify(...)``).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from benchmarks.procs import log
from eventide.tools.dlq import read_dead_letters
from schemas.envelope import new_event
from streams.catalogue import ORDER_EVENTS
from tables.store import PartitionStore

from .harness import Case, Outcome

SLOW_ORDER_VAR = "FAULTS_SLOW_ORDER"
"""The order id whose events the slow worker takes :data:`SLOW_SECONDS` to apply."""
SLOW_MARK_VAR = "FAULTS_SLOW_MARK"
"""A file the slow worker creates when it starts the slow event."""


def kills(case: Case, count: int | None = None) -> Outcome:
    """kill -9 of the worker ``count`` times (10; 2 in the short form), each at a
    random moment under the stream, restarted at once."""
    n = count or (2 if case.opts.small else 10)
    w = case.worker().start()
    case.begin()
    rng = random.Random(case.opts.seed)
    for i in range(1, n + 1):
        case.run_for(rng.uniform(1.0, 3.0))
        at = time.monotonic()
        w.kill()
        w.start(wait=False)
        took = case.recovery(at, w)
        log(f"  kill -9 #{i}/{n}: caught up after {took:.1f} s")
    case.run_for(2)
    return case.verify(w)


def slow_kill(case: Case) -> Outcome:
    """One event takes seconds to apply (a handler blocked on a slow call); the
    worker is killed in the middle of it and restarted (slow again)."""
    slow = case.begin()
    target = next(
        e.data["orderId"]
        for e in slow.work.orders[slow.published + case.opts.rate * 4 :]
        if e.name == "order.placed"
    )
    mark = case.dir / "slow-started"
    env = {SLOW_ORDER_VAR: target, SLOW_MARK_VAR: str(mark)}
    w = case.worker(module="benchmarks.faults.slow_worker", **env).start()
    deadline = time.monotonic() + 120
    while not mark.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the slow event of {target} never started")
        time.sleep(0.05)
    time.sleep(1.0)  # inside the slow event
    at = time.monotonic()
    w.kill()
    mark.unlink()
    w.start(wait=False)
    took = case.recovery(at, w)
    log(f"  killed inside the slow event of {target}: caught up after {took:.1f} s")
    if not mark.exists():
        case.outcome.notes.append("the slow event was not replayed after the kill")
    case.run_for(2)
    return case.verify(w)


def churn(case: Case) -> Outcome:
    """A second worker joins (started, ready) and leaves (SIGTERM) 20 times (3 in
    the short form) while the first keeps serving; the recovery is timed from
    the last leave. With EVENTIDE_STANDBY_REPLICAS=1 (the matrix's
    ``churn-standby``) each keeps a warm copy of the other's partitions."""
    n = 3 if case.opts.small else 20
    steady = case.worker().start()
    case.begin()
    other = case.worker(1)
    for i in range(1, n + 1):
        other.start()
        case.run_for(1.0)
        at = time.monotonic()
        other.stop()
        log(f"  join/leave {i}/{n}")
    took = case.recovery(at, steady)
    log(f"  the steady worker caught up {took:.1f} s after the last leave")
    case.run_for(2)
    return case.verify(steady)


def _busiest_store(case: Case) -> Path:
    """The orders store partition with the most data."""
    tables = case.settings.data_dir / "tables" / "orders"
    parts = [p for p in tables.iterdir() if p.name.isdigit()]
    return max(parts, key=lambda p: sum(f.stat().st_size for f in p.glob("*")))


def damaged_sst(case: Case, how: str) -> Outcome:
    """The worker is killed, one ``.sst`` file of the busiest orders store is
    truncated (``corrupt``) or deleted (``delete``), and the worker restarted."""
    w = case.worker().start()
    case.begin()
    case.run_for(4)
    at = time.monotonic()
    w.kill()
    store = _busiest_store(case)
    PartitionStore(store).close()  # reopening flushes the WAL into an .sst
    files = sorted(store.glob("*.sst"), key=lambda f: f.stat().st_size)
    if not files:
        raise RuntimeError(f"no .sst file in {store}")
    victim = files[-1]
    if how == "delete":
        victim.unlink()
        log(f"  deleted {victim}")
    else:
        with victim.open("r+b") as f:
            f.truncate(victim.stat().st_size // 2)
        log(f"  truncated {victim} to half")
    w.start(wait=False)
    took = case.recovery(at, w)
    log(f"  the worker served again, caught up after {took:.1f} s")
    if not list(store.parent.glob(f"{store.name}.damaged-*")):
        case.outcome.notes.append("no damaged store was kept aside")
    case.run_for(2)
    return case.verify(w)


def offset_reset(case: Case) -> Outcome:
    """The worker stops, the group's committed offsets are reset to the earliest
    offsets (a stale or lost commit), the worker restarts and replays everything."""
    w = case.worker().start()
    case.begin()
    case.run_for(5)
    at = time.monotonic()
    w.stop()
    _reset_offsets(case)
    w.start(wait=False)
    took = case.recovery(at, w)
    log(f"  replayed from the earliest offsets, caught up after {took:.1f} s")
    case.run_for(2)
    return case.verify(w)


def _reset_offsets(case: Case) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    settings = case.settings
    admin = AdminClient({"bootstrap.servers": ",".join(settings.bootstrap_servers)})
    tps = [
        TopicPartition(settings.topic(t), p, 0)
        for t in ("user-events", "order-events", "customer-facts")
        for p in range(settings.partitions)
    ]
    request = ConsumerGroupTopicPartitions(settings.projection_group, tps)
    deadline = time.monotonic() + 60
    while True:  # the group must be empty: the stopped worker has left it
        try:
            admin.alter_consumer_group_offsets([request])[settings.projection_group].result(30)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"resetting the offsets failed: {exc}") from exc
            time.sleep(1)


def bad_keys(case: Case) -> Outcome:
    """Orders placed with no key and under another order's key, for real
    customers, between the stream's events: never applied, all dead-lettered."""
    w = case.worker().start()
    stream = case.begin()
    topic = case.settings.topic(ORDER_EVENTS.name)
    rng = random.Random(case.opts.seed)
    customers = [e.data["userId"] for e in stream.work.users]
    count = 10 if case.opts.small else 40
    at = time.monotonic()
    for i in range(count):
        order_id = f"o-badkey-{i}"
        data = {
            "orderId": order_id,
            "customerId": rng.choice(customers),
            "items": [{"sku": "sku-mug", "quantity": 1, "unitPrice": 8.0}],
            "totalAmount": 8.0,
        }
        event = new_event("order.placed", data, source="order-service")
        key = None if i % 2 == 0 else f"o-someone-else-{i}".encode()
        stream.send_raw(topic, key, event)
        case.bad_orders.add(order_id)
        case.run_for(0.1)
    case.run_for(1)
    case.recovery(at, w)
    case.run_for(2)
    outcome = case.verify(w)
    letters = asyncio.run(read_dead_letters(case.settings))
    keyed = {d.header("event-id") for d in letters if d.error_class == "RecordKeyError"}
    if len(keyed) != count:
        outcome.other += abs(count - len(keyed))
        outcome.notes.append(f"{len(keyed)} of {count} badly keyed records dead-lettered")
    return outcome


def compaction(case: Case) -> Outcome:
    """The changelogs compact as fast as the broker can (tiny segments, any dirt
    ratio) while the worker, its data folder wiped, restores from them."""
    w = case.worker().start()
    case.begin()
    _compact_hard(case)
    case.run_for(6)
    at = time.monotonic()
    w.kill()
    _wipe(case.settings.data_dir / "tables")
    w.start(wait=False)
    took = case.recovery(at, w)
    log(f"  restored from compacting changelogs, caught up after {took:.1f} s")
    case.run_for(4)
    return case.verify(w)


def _compact_hard(case: Case) -> None:
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": ",".join(case.settings.bootstrap_servers)})
    changelogs = [
        t
        for t in admin.list_topics(timeout=30).topics
        if case.settings.app_id in t and (t.endswith("-changelog") or t.endswith("order-views"))
    ]
    configs = {
        "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "0",
    }
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            t,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in configs.items()
            ],
        )
        for t in changelogs
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(30)
    case.outcome.notes.append(f"compacting {', '.join(sorted(changelogs))}")


def _wipe(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
