"""End-to-end latency at fixed offered loads, read from the worker's own /metrics.

A producer in this process publishes fresh order lifecycles at a fixed rate
(in 10 ms ticks) for a few seconds per rate; the worker's
``eventide_end_to_end_latency_seconds`` histogram (record timestamp → RocksDB
write) is scraped before and after each rate, and percentiles are
interpolated inside the buckets as Prometheus' ``histogram_quantile`` does.

The baseline of the same run is the latency floor (:func:`floor_at_loads`,
:mod:`benchmarks.latency_floor`): before the worker starts, the same producer
offers the same rates to topics of their own, and a bare consumer in a process
of its own, subscribed to those topics, notes how old each record is when it
gets it. What Eventide adds is the difference. (Measured beside the worker, the
floor's consumer took CPU from it: p50 99 against 69 ms at 1,000/s.)
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas.codecs import EventCodec
from schemas.envelope import CONTENT_TYPE_JSON
from streams.catalogue import ORDER_EVENTS, key_of
from streams.httpaccess import bearer
from streams.kafka_clients import aiokafka_options
from streams.outputs import KeyPartitioner
from streams.settings import Settings

from .procs import env_of
from .workload import make_workload


def scrape(url: str, token: str = "") -> dict[str, Any]:
    """Latency buckets (summed over topics), events read, total lag from ``/metrics``."""
    request = urllib.request.Request(f"{url}/metrics", headers=bearer(token))
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    events = lag = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "eventide_end_to_end_latency_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "eventide_events_total":
                events += s.value
            elif s.name == "eventide_consumer_lag_records":
                lag += s.value
    return {"buckets": buckets, "events": events, "lag": lag, "at": time.monotonic()}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' interpolation: linear inside the bucket holding the quantile."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if math.isinf(le):
                return lower
            inside = buckets[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, buckets[le]
    return None


async def offer(
    settings: Settings, values: list[tuple[bytes, bytes]], rate: int, seconds: float
) -> int:
    """Publish ``rate`` events/s for ``seconds`` from ``values``; returns events sent."""
    producer = AIOKafkaProducer(**aiokafka_options(settings), acks="all", linger_ms=2)
    await producer.start()
    topic = settings.topic(ORDER_EVENTS.name)
    partition = KeyPartitioner(settings.partitions)
    headers = [("content-type", CONTENT_TYPE_JSON.encode())]
    sent = 0
    try:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = min(int(elapsed * rate) + 1, len(values))
            while sent < due:
                key, value = values[sent]
                await producer.send(
                    topic, value, key=key, partition=partition(key), headers=headers
                )
                sent += 1
            if sent >= len(values):
                break
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def latency_at_loads(
    settings: Settings,
    rates: list[int],
    seconds: float,
    log: Callable[[str], None],
    seed: int = 3,
) -> list[dict[str, Any]]:
    """p50/p95/p99 and achieved throughput per offered rate, one worker already running."""
    need = int((sum(rates) + rates[0]) * seconds * 1.1) + 1000
    work = make_workload(need // 2 + 1, max(100, need // 20), seed=seed, duplicate_rate=0.0)
    codec = EventCodec()
    values = [(key_of(e).encode(), codec.encode_json(e)) for e in work.orders][:need]
    del work
    out = []
    log(f"  warm-up: {rates[0]:,}/s for {seconds:.0f}s, not recorded")
    cursor = asyncio.run(offer(settings, values, rates[0], seconds))
    time.sleep(2)
    for rate in rates:
        before = scrape(settings.web_url, settings.http_token.reveal())
        chunk = values[cursor:]
        sent = asyncio.run(offer(settings, chunk, rate, seconds))
        cursor += sent
        offered = sent / seconds
        deadline = time.monotonic() + 120
        lag_max = 0.0
        while time.monotonic() < deadline:  # let the worker finish what was offered
            now = scrape(settings.web_url, settings.http_token.reveal())
            lag_max = max(lag_max, now["lag"])
            if now["events"] - before["events"] >= sent and now["lag"] == 0:
                break
            time.sleep(0.5)
        after = scrape(settings.web_url, settings.http_token.reveal())
        window = {le: c - before["buckets"].get(le, 0.0) for le, c in after["buckets"].items()}
        row = {
            "offered_per_s": round(offered),
            "events": sent,
            "p50_s": histogram_quantile(0.50, window),
            "p95_s": histogram_quantile(0.95, window),
            "p99_s": histogram_quantile(0.99, window),
            "samples": window.get(math.inf, 0.0),
            "lag_max": lag_max,
            "drained_s": after["at"] - before["at"],
        }
        log(
            f"  latency at {rate:,}/s offered ({offered:,.0f}/s sent): p50 {_ms(row['p50_s'])}, "
            f"p95 {_ms(row['p95_s'])}, p99 {_ms(row['p99_s'])}; max lag {lag_max:,.0f}"
        )
        out.append(row)
        if sent < rate * seconds * 0.9:
            log(f"  the producer could not offer {rate:,}/s; stopping the load steps here")
            break
    return out


def floor_at_loads(
    settings: Settings,
    rates: list[int],
    seconds: float,
    log: Callable[[str], None],
    seed: int = 4,
) -> dict[int, dict[str, Any]]:
    """The latency floor per offered rate: the same producer at the same rates, with
    only the bare consumer of :mod:`benchmarks.latency_floor` reading (no worker
    running, topics of their own), so that measuring the floor costs the worker nothing."""
    need = int(sum(rates) * seconds * 1.1) + 1000
    work = make_workload(need // 2 + 1, max(100, need // 20), seed=seed, duplicate_rate=0.0)
    codec = EventCodec()
    values = [(key_of(e).encode(), codec.encode_json(e)) for e in work.orders][:need]
    del work
    floors: dict[int, dict[str, Any]] = {}
    cursor = 0
    for rate in rates:
        floor = LatencyFloor(settings)
        cursor += asyncio.run(offer(settings, values[cursor:], rate, seconds))
        time.sleep(1)
        bare = floor.result()
        floors[rate] = {
            "p50_s": bare["p50_s"],
            "p95_s": bare["p95_s"],
            "p99_s": bare["p99_s"],
            "samples": bare["n"],
            "bucketed_p50_s": histogram_quantile(0.50, bare["buckets"]),
            "bucketed_p99_s": histogram_quantile(0.99, bare["buckets"]),
        }
        log(
            f"  floor at {rate:,}/s: a bare consumer's record age p50 {_ms(bare['p50_s'])}, "
            f"p95 {_ms(bare['p95_s'])}, p99 {_ms(bare['p99_s'])}"
        )
    return floors


class LatencyFloor:
    """The bare consumer of :mod:`benchmarks.latency_floor`, running from
    construction (once it holds its partitions) until :meth:`result`."""

    def __init__(self, settings: Settings) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency_floor"],
            env=env_of(settings),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"the latency-floor consumer did not start (it said {line!r})")

    def result(self) -> dict[str, Any]:
        """Stop recording; the ages' percentiles and bucket counts (le → count)."""
        out, _ = self.proc.communicate("stop\n", timeout=60)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["buckets"] = {float(le): count for le, count in result["buckets"]}
        return result


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.0f} ms"
