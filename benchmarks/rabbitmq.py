"""RabbitMQ in: bridge throughput from a RabbitMQ queue to records acknowledged by Kafka.

    python -m benchmarks.rabbitmq --messages 50000
    python -m benchmarks.rabbitmq --messages 50000 --reference   # kept in docs/benchmarks/

Against the real RabbitMQ (``--rabbitmq``; the dev node is started when it does
not answer, and stopped after) and the real Kafka (``--broker``; started the
same way). One publisher puts ``--messages`` order and user events (JSON,
routing key = event name, persistent, publisher confirms) on a topic exchange
bound to two queues, so both hold the same backlog. Then, one after the other:

baseline
    a bare aio-pika consumer with the same prefetch that acks each batch with
    one ``multiple`` ack, nothing else: the rate RabbitMQ and the client give
    on this machine.
bridge
    Eventide's bridge (:class:`streams.rabbitmq.RabbitBridge`, the code of
    ``eventide bridge rabbitmq``) in this process: decode and validate, route
    by entity id, produce to Kafka (idempotent, acks=all), ack on RabbitMQ once
    Kafka acknowledged the batch.

Each drain is timed from its first acked batch to its last (so connection
set-up is left out); the messages of the first batch are left out of the
count too. Beside them the report gives the figure RabbitMQ users quote for
one queue, about 10,000 messages/s, which is quoted, not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiormq.abc import DeliveredMessage
from prometheus_client import CollectorRegistry

from eventide.tools import devbroker, devrabbit
from schemas.codecs import EventCodec
from streams.catalogue import ORDER_EVENTS, USER_EVENTS
from streams.kafka_clients import aiokafka_options
from streams.metrics import BridgeMetrics
from streams.rabbitmq import RabbitBridge, declare_bridge_queue, declare_exchange
from streams.settings import Settings
from streams.topics import ensure_topics

from . import report as report_
from .workload import make_workload

QUOTED_SINGLE_QUEUE = 10_000
"""Messages/s RabbitMQ users commonly quote for one classic queue (not measured here)."""


def settings_for(args: argparse.Namespace) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": args.broker,
            "EVENTIDE_RABBITMQ_URL": args.rabbitmq,
            "EVENTIDE_APP_ID": f"bench-rabbit-{tag}",
            "EVENTIDE_TOPIC_PREFIX": f"bench-rabbit-{tag}-",
            "EVENTIDE_PARTITIONS": str(args.partitions),
            "EVENTIDE_RABBITMQ_EXCHANGE": f"bench-events-{tag}",
            "EVENTIDE_RABBITMQ_QUEUE": f"bench-bridge-{tag}",
            "EVENTIDE_RABBITMQ_DEAD_LETTER_EXCHANGE": f"bench-events-{tag}.dlx",
            "EVENTIDE_RABBITMQ_DEAD_LETTER_QUEUE": f"bench-events-{tag}.dlq",
            "EVENTIDE_RABBITMQ_PREFETCH": str(args.prefetch),
            "EVENTIDE_STATE_DIR": str(report_.ROOT / ".eventide"),
        }
    )


def messages(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` events as (routing key, JSON body): users, then order lifecycles."""
    orders = count // 3 + 1
    while True:
        work = make_workload(orders=orders, customers=max(1, count // 20), seed=seed)
        events = work.users + work.orders
        if len(events) >= count:
            break
        orders *= 2
    codec = EventCodec()
    return [(e.name, codec.encode(e)) for e in events[:count]]


async def declare(settings: Settings) -> str:
    """The exchange, the bridge's queue and a baseline queue with the same bindings."""
    baseline = f"{settings.rabbitmq_queue}-baseline"
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    async with connection:
        channel = await connection.channel()
        await declare_bridge_queue(settings, channel)
        exchange = await declare_exchange(settings, channel)
        queue = await channel.declare_queue(baseline, durable=True)
        for pattern in settings.rabbitmq_binding_keys:
            await queue.bind(exchange, routing_key=pattern)
    return baseline


async def publish(settings: Settings, bodies: list[tuple[str, bytes]]) -> float:
    """Publish persistent messages with publisher confirms; returns messages/s."""
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(settings.rabbitmq_exchange)
        started = time.perf_counter()
        for n in range(0, len(bodies), 1000):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=key,
                    )
                    for key, body in bodies[n : n + 1000]
                )
            )
            print(f"\rpublished {min(n + 1000, len(bodies)):,}", end="", file=sys.stderr)
        print(file=sys.stderr)
        return len(bodies) / (time.perf_counter() - started)


class Clock:
    """Times a drain from its first acked batch to its last (see the module's doc)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.first: tuple[float, float, int] | None = None
        self.last = (0.0, 0.0)

    def acked(self, done: int) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.first is None:
            self.first = (*now, done)
        self.last = now

    def figures(self) -> dict[str, float]:
        """messages/s, and this process's CPU µs per message, over the timed window."""
        assert self.first is not None
        start, cpu, first_batch = self.first
        counted = max(self.total - first_batch, 1)
        return {
            "per_s": counted / max(self.last[0] - start, 1e-9),
            "cpu_us": (self.last[1] - cpu) / counted * 1e6,
        }


async def drain_baseline(settings: Settings, queue_name: str, total: int) -> dict[str, float]:
    """A bare consumer on the same aiormq channel the bridge consumes with: batches of
    up to the prefetch, each acked with one multiple ack."""
    connection = await aio_pika.connect(settings.rabbitmq_url.reveal())
    clock = Clock(total)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.rabbitmq_prefetch)
        raw = await channel.get_underlay_channel()
        inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

        async def received(message: DeliveredMessage) -> None:
            inbox.put_nowait(message)

        await raw.basic_consume(queue_name, received, no_ack=False)
        done = 0
        while done < total:
            batch = [await inbox.get()]
            while not inbox.empty() and len(batch) < settings.rabbitmq_prefetch:
                batch.append(inbox.get_nowait())
            await raw.basic_ack(batch[-1].delivery_tag or 0, multiple=True)
            done += len(batch)
            clock.acked(done)
    return clock.figures()


async def drain_bridge(settings: Settings, total: int) -> dict[str, float]:
    """Eventide's bridge until every message is acked."""
    bridge = RabbitBridge(settings, BridgeMetrics(CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    clock = Clock(total)
    seen = 0
    while bridge.bridged < total:
        if task.done():
            task.result()  # raises what stopped the bridge
            raise RuntimeError(f"the bridge stopped after {bridge.bridged} messages")
        if bridge.bridged != seen:
            seen = bridge.bridged
            clock.acked(seen)
        await asyncio.sleep(0.002)
    clock.acked(bridge.bridged)
    stop.set()
    await task
    return clock.figures()


async def kafka_records(settings: Settings) -> int:
    """Records on the run's user and order topics."""
    consumer = AIOKafkaConsumer(**aiokafka_options(settings))
    await consumer.start()
    try:
        tps = [
            TopicPartition(settings.topic(spec.name), p)
            for spec in (USER_EVENTS, ORDER_EVENTS)
            for p in range(settings.partitions)
        ]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def rabbitmq_version() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True, text=True
    )
    return f"rabbitmq-server {out.stdout.strip() or '?'} (Debian), one node on the same machine"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_for(args)
    await ensure_topics(settings)
    baseline_queue = await declare(settings)
    bodies = messages(args.messages, args.seed)
    print(f"publishing {len(bodies):,} messages to both queues ...", file=sys.stderr)
    publish_rate = await publish(settings, bodies)
    print("draining with a bare consumer ...", file=sys.stderr)
    baseline = await drain_baseline(settings, baseline_queue, len(bodies))
    print(f"  {baseline['per_s']:,.0f} messages/s; draining with the bridge ...", file=sys.stderr)
    bridge = await drain_bridge(settings, len(bodies))
    print(f"  {bridge['per_s']:,.0f} messages/s", file=sys.stderr)
    return {
        "messages": len(bodies),
        "publish_per_s": publish_rate,
        "baseline_per_s": baseline["per_s"],
        "baseline_cpu_us": baseline["cpu_us"],
        "bridge_per_s": bridge["per_s"],
        "bridge_cpu_us": bridge["cpu_us"],
        "quoted_single_queue_per_s": QUOTED_SINGLE_QUEUE,
        "kafka_records": await kafka_records(settings),
    }


def page(result: dict[str, Any], out: Path) -> str:
    r = result["results"]
    lines = report_.header("RabbitMQ in: bridge throughput", result)
    quoted = r["quoted_single_queue_per_s"]
    lines += [f"RabbitMQ: {result['machine']['rabbitmq']}.", ""]
    load = float(result["machine"].get("load_average", ["0"])[0])
    if load > (result["machine"].get("cores") or 1):
        lines += [
            f"**The machine was shared**: load average {load:.2f} (1 min) before the run on "
            f"{result['machine'].get('cores')} cores. Compare the rows' ratios, not their "
            "rates with other runs.",
            "",
        ]
    lines += [
        "| row | messages/s | client CPU µs/message | / quoted single queue |",
        "|---|---:|---:|---:|",
        f"| publisher (persistent, confirms, 1,000 in flight) | {r['publish_per_s']:,.0f} | | "
        f"{report_.ratio(r['publish_per_s'], quoted)} |",
        "| bare consumer (aio-pika's aiormq channel), acks only (baseline) | "
        f"{r['baseline_per_s']:,.0f} | {r['baseline_cpu_us']:,.0f} | "
        f"{report_.ratio(r['baseline_per_s'], quoted)} |",
        f"| Eventide bridge: validate, produce (acks=all), ack | {r['bridge_per_s']:,.0f} | "
        f"{r['bridge_cpu_us']:,.0f} | {report_.ratio(r['bridge_per_s'], quoted)} |",
        f"| quoted for one RabbitMQ queue (not measured) | {quoted:,} | | |",
        "",
        f"{r['messages']:,} JSON events (users, then order lifecycles), prefetch "
        f"{result['parameters']['prefetch']}, {result['parameters']['partitions']} partitions. "
        f"Bridge / baseline: {report_.ratio(r['bridge_per_s'], r['baseline_per_s'])}. "
        f"Records on Kafka after the bridge: {r['kafka_records']:,} "
        f"(expected {r['messages']:,}). Each drain is timed from its first acked batch to "
        "its last (`benchmarks/rabbitmq.py`); client CPU is this process's CPU time over "
        "the same window per message: the AMQP client's frame parsing (Python) bounds both "
        "rows, RabbitMQ, Kafka and the benchmark sharing the machine's cores.",
        "",
    ]
    if _plot(out / "throughput.png", r):
        lines += ["![Messages per second](throughput.png)", ""]
    return "\n".join(lines)


def _plot(path: Path, r: dict[str, Any]) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib not installed: no plot (the bench extra has it)", file=sys.stderr)
        return False
    bars = [
        ("bare consumer", r["baseline_per_s"]),
        ("eventide bridge", r["bridge_per_s"]),
        ("quoted single queue", float(r["quoted_single_queue_per_s"])),
    ]
    report_.hbars(
        path,
        "RabbitMQ → Kafka, messages/s",
        [("messages/s", [(label, v, f"{v:,.0f}") for label, v in bars])],
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.rabbitmq", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--messages", type=int, default=50_000, help="messages published (50000)")
    ap.add_argument("--prefetch", type=int, default=500, help="consumers' prefetch (500)")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092", help="Kafka")
    ap.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:35672/", help="RabbitMQ")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--reference", action="store_true", help="write to docs/benchmarks/rabbitmq/")
    args = ap.parse_args(argv)
    if args.messages < 1000:
        ap.error("--messages must be at least 1000")
    settings = settings_for(args)
    started_kafka = not devbroker.is_answering(settings)
    if started_kafka:
        devbroker.start(settings)
    started_rabbit = not devrabbit.is_answering(settings)
    if started_rabbit:
        devrabbit.start(settings)
    begun = time.perf_counter()
    try:
        machine = {**report_.machine(), "rabbitmq": rabbitmq_version()}
        results = asyncio.run(run(args))
    finally:
        if started_rabbit:
            devrabbit.stop(settings)
        if started_kafka:
            devbroker.stop(settings)
    result = {
        "benchmark": "rabbitmq",
        "scenario": "rabbitmq",
        "command": report_.command_line("benchmarks.rabbitmq", argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.perf_counter() - begun, 1),
        "parameters": {k: v for k, v in vars(args).items() if k != "reference"},
        "machine": machine,
        "load_average_after": report_.load_average(),
        "units": "messages per second",
        "results": results,
    }
    out = report_.run_dir("rabbitmq", args.reference)
    report_.write(out, result, page(result, out), args.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
