"""What every fault case shares: a steady stream of events, worker processes,
the recovery clock and the verifier.

A case gets a :class:`Case` (fresh uuid-named topics, its own data folder),
starts workers, starts the :class:`Stream` (users, then orders with duplicates
at a fixed rate), injects its fault while the stream runs, marks each fault
with :meth:`Case.recovery`, and finally :meth:`Case.verify` stops the stream,
waits until everything published is processed and audits every read model
over HTTP against the state computed offline from exactly the events
published.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from benchmarks.crash import audit, classify, wait_drained
from benchmarks.procs import env_of, http_settings, log
from benchmarks.workload import Workload, expected_state, make_workload
from eventide.tools.demo import fetch_json
from schemas.codecs import EventCodec
from schemas.envelope import CONTENT_TYPE_JSON, Envelope
from streams.catalogue import ORDER_EVENTS, USER_EVENTS, key_of
from streams.kafka_clients import aiokafka_options
from streams.outputs import KeyPartitioner
from streams.settings import Settings
from streams.topics import ensure_topics


@dataclass
class Options:
    """The matrix's knobs, from the command line (or a test)."""

    broker: str
    """EVENTIDE_BROKER_URL of the broker the cases share."""
    workdir: Path
    """Where the cases keep their data and logs."""
    rate: int = 400
    """Order events published per second while a fault happens."""
    small: bool = False
    """The short form: fewer repetitions, shorter outages."""
    partitions: int = 4
    """Partitions of every topic."""
    port_base: int = 0
    """First port of the range the workers' HTTP servers and proxies take (0: the kernel's)."""
    private_broker_port: int = 0
    """Port of the broker the partition cases start for themselves (0: none given)."""
    cluster_port: int = 0
    """First port of the three-broker cluster of the cluster cases (0: none given)."""
    seed: int = 11


class Ports:
    """Free TCP ports, from ``base`` upwards or the kernel's choice."""

    def __init__(self, base: int) -> None:
        self.next = base

    def take(self) -> int:
        if not self.next:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return int(s.getsockname()[1])
        while True:
            port, self.next = self.next, self.next + 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclass
class Outcome:
    """One row of the matrix."""

    case: str
    events: int = 0
    lost: int = 0
    double_applied: int = 0
    other: int = 0
    recovery_s: float | None = None
    """Worst fault → caught-up time of the case (see :meth:`Case.recovery`)."""
    faults: int = 0
    notes: list[str] = field(default_factory=list)
    error: str = ""
    """Why the case could not run to its end (the row then counts as failed)."""

    @property
    def clean(self) -> bool:
        return not self.error and self.lost == self.double_applied == self.other == 0


class Worker:
    """One worker process (``eventide worker`` or a benchmark's variant of it)."""

    def __init__(
        self, settings: Settings, log_path: Path, module: str = "eventide.cli", **env: str
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.module = module
        self.env = env
        self.prefix: list[str] = []
        """A command the worker runs under (e.g. ``unshare``), or none."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 120.0, wait: bool = True) -> Worker:
        cmd = [sys.executable, "-m", self.module]
        if self.module == "eventide.cli":
            cmd.append("worker")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, *cmd],
                env={**env_of(self.settings), **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(ready_timeout)
        return self

    def ready(self) -> bool:
        try:
            url = f"{self.settings.web_url}/health"
            return fetch_json(url, 2, self.settings.http_token.reveal())[0] == 200
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        try:
            url = f"{self.settings.web_url}/health"
            body = fetch_json(url, 2, self.settings.http_token.reveal())[1]
        except OSError:
            return {}
        return body if isinstance(body, dict) else {}

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.proc.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {timeout:.0f}s; see {self.log_path}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no leaving the group."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stream:
    """Publishes the workload's users, then its orders at a fixed rate, in a thread,
    until :meth:`stop`; :attr:`published` orders events went out (acknowledged)."""

    def __init__(self, settings: Settings, work: Workload, rate: int) -> None:
        self.settings = settings
        self.work = work
        self.rate = rate
        self.published = 0
        self.extra: list[tuple[str, bytes | None, Envelope]] = []
        """Records a case asks to send as they are: (topic, key, event)."""
        self._extra_lock = threading.Lock()
        self._stop = threading.Event()
        self._users_done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-stream")

    def start(self) -> Stream:
        self._thread.start()
        if not self._users_done.wait(120):
            raise RuntimeError(f"users not published after 120s: {self.error!r}")
        return self

    def send_raw(self, topic: str, key: bytes | None, event: Envelope) -> None:
        """Send ``event`` under ``key`` (None: no key) on the stream's producer."""
        with self._extra_lock:
            self.extra.append((topic, key, event))

    def stop(self) -> int:
        """Stop publishing; returns the order events published."""
        self._stop.set()
        self._thread.join(120)
        if self.error is not None:
            raise RuntimeError(f"the stream failed: {self.error!r}") from self.error
        return self.published

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._users_done.set()

    async def _publish(self) -> None:
        codec = EventCodec()
        producer = AIOKafkaProducer(
            **aiokafka_options(self.settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=120_000,
        )
        await producer.start()
        partition = KeyPartitioner(self.settings.partitions)
        users = self.settings.topic(USER_EVENTS.name)
        orders = self.settings.topic(ORDER_EVENTS.name)

        async def send(topic: str, key: bytes | None, e: Envelope) -> asyncio.Future[Any]:
            value = codec.encode(e, CONTENT_TYPE_JSON)
            headers = codec.headers(e, CONTENT_TYPE_JSON)
            part = partition(key) if key is not None else None
            return await producer.send(topic, value, key=key, partition=part, headers=headers)

        try:
            pending = [await send(users, key_of(e).encode(), e) for e in self.work.users]
            await asyncio.gather(*pending)
            self._users_done.set()
            tick, started = 0.1, time.monotonic()
            n = 0
            while not self._stop.is_set() and n < len(self.work.orders):
                due = min(len(self.work.orders), int((time.monotonic() - started) * self.rate))
                batch = self.work.orders[n:due]
                with self._extra_lock:
                    extra, self.extra = self.extra, []
                try:
                    futures = [await send(orders, key_of(e).encode(), e) for e in batch]
                    futures += [await send(t, k, e) for t, k, e in extra]
                    await asyncio.gather(*futures)
                except KafkaError:  # brokers away: send the batch again (same event ids)
                    await asyncio.sleep(1.0)
                    with self._extra_lock:
                        self.extra[:0] = extra
                    continue
                n = due
                self.published = n
                await asyncio.sleep(tick)
        finally:
            await producer.stop()


class Committed:
    """The projections' committed offsets against end offsets, on one connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.topics = [settings.topic(t.name) for t in (USER_EVENTS, ORDER_EVENTS)]
        self.tps = [TopicPartition(t, p) for t in self.topics for p in range(settings.partitions)]
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        self.admin = AIOKafkaAdminClient(**aiokafka_options(self.settings))
        self.consumer = AIOKafkaConsumer(**aiokafka_options(self.settings))
        await self.admin.start()
        await self.consumer.start()

    def ends(self) -> dict[TopicPartition, int]:
        return dict(self.loop.run_until_complete(self.consumer.end_offsets(self.tps)))

    def committed(self) -> dict[TopicPartition, int]:
        got = self.loop.run_until_complete(
            self.admin.list_consumer_group_offsets(self.settings.projection_group)
        )
        return {tp: m.offset for tp, m in got.items()}

    def close(self) -> None:
        self.loop.run_until_complete(self.consumer.stop())
        self.loop.run_until_complete(self.admin.close())
        self.loop.close()


class Case:
    """One case's settings, processes, stream and clocks."""

    def __init__(self, name: str, opts: Options, ports: Ports, **overrides: str) -> None:
        self.name = name
        self.opts = opts
        self.ports = ports
        tag = uuid.uuid4().hex[:8]
        self.dir = opts.workdir / f"{name}-{tag}"
        self.dir.mkdir(parents=True)
        self.env = {
            "EVENTIDE_BROKER_URL": opts.broker,
            "EVENTIDE_APP_ID": f"faults-{name}-{tag}",
            "EVENTIDE_TOPIC_PREFIX": f"faults-{name}-{tag}-",
            "EVENTIDE_PARTITIONS": str(opts.partitions),
            "EVENTIDE_DATA_DIR": str(self.dir / "data"),
            "EVENTIDE_STATE_DIR": str(self.dir / "state"),
            "EVENTIDE_SESSION_TIMEOUT_MS": "6000",
            **http_settings(),
            **overrides,
        }
        self.settings = self.worker_settings()
        self.workers: list[Worker] = []
        self.outcome = Outcome(name)
        self.stream: Stream | None = None
        self.committed: Committed | None = None
        self.bad_orders: set[str] = set()
        self.worker_broker: str | None = None
        """Order ids a case sent under no or a wrong key: never in a read model."""

    def use_broker(self, url: str, worker_broker: str | None = None) -> None:
        """Run the case on the broker at ``url``; workers bootstrap from
        ``worker_broker`` (a proxy in front of it) when given."""
        self.reconfigure(EVENTIDE_BROKER_URL=url)
        self.worker_broker = worker_broker

    def reconfigure(self, **env: str) -> None:
        """Change settings of the case (before its first worker starts)."""
        self.env.update(env)
        port = str(self.settings.web_port)
        self.settings = Settings.from_env({**self.env, "EVENTIDE_WEB_PORT": port})

    def worker_settings(self, n: int = 0, **overrides: str) -> Settings:
        """Settings of the case's ``n``-th worker: its own HTTP port and data folder."""
        data = self.dir / ("data" if n == 0 else f"data-{n}")
        env = {**self.env, "EVENTIDE_DATA_DIR": str(data), **overrides}
        env["EVENTIDE_WEB_PORT"] = str(self.ports.take())
        return Settings.from_env(env)

    def worker(self, n: int = 0, module: str = "eventide.cli", **env: str) -> Worker:
        """A worker (not started yet): ``n`` 0 shares :attr:`settings`."""
        settings = self.settings if n == 0 else self.worker_settings(n)
        if self.worker_broker:
            url = {"EVENTIDE_BROKER_URL": self.worker_broker}
            settings = Settings.from_env({**settings.to_env(), **url})
        w = Worker(settings, self.dir / f"worker-{n}.log", module, **env)
        self.workers.append(w)
        return w

    def begin(self, orders: int | None = None, customers: int = 1500) -> Stream:
        """Create the topics and start the stream (sized for the case's longest run)."""
        asyncio.run(ensure_topics(self.settings))
        size = orders or self.opts.rate * (60 if self.opts.small else 900) // 2
        work = make_workload(size, customers, seed=self.opts.seed, duplicate_rate=0.03)
        self.work = work
        self.stream = Stream(self.settings, work, self.opts.rate).start()
        self.committed = Committed(self.settings)
        return self.stream

    def run_for(self, seconds: float) -> None:
        """Let the stream run (the fault, or the calm before or after it)."""
        time.sleep(seconds)

    def recovery(self, fault_at: float, worker: Worker, timeout: float = 180.0) -> float:
        """Seconds from ``fault_at`` (time.monotonic()) until ``worker`` is ready and the
        group has committed everything published by the moment this is called (the
        fault's end): every read model then holds all events from before the fault."""
        assert self.committed is not None
        deadline = time.monotonic() + timeout
        target = self._retrying(self.committed.ends, deadline)
        while time.monotonic() < deadline:
            if worker.ready():
                done = self._retrying(self.committed.committed, deadline)
                if all(done.get(tp, -1) >= end for tp, end in target.items()):
                    took = time.monotonic() - fault_at
                    self.outcome.faults += 1
                    best = self.outcome.recovery_s
                    self.outcome.recovery_s = took if best is None else max(best, took)
                    return took
            time.sleep(0.2)
        raise RuntimeError(f"not caught up {timeout:.0f}s after the fault; see {self.dir}")

    @staticmethod
    def _retrying(call: Callable[[], dict[TopicPartition, int]], deadline: float) -> Any:
        """``call()``, again while the brokers do not answer (a restarting cluster)."""
        while True:
            try:
                return call()
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def verify(self, via: Worker) -> Outcome:
        """Stop the stream, wait for the drain, audit every read model over ``via``."""
        assert self.stream is not None
        published = self.stream.stop()
        orders = Workload(users=self.work.users, orders=self.work.orders[:published])
        self.outcome.events = len(orders.users) + len(orders.orders) + len(self.bad_orders)
        exp_orders, exp_customers = expected_state(orders)
        log(f"  {self.name}: {self.outcome.events:,} events published; waiting for the drain")
        wait_drained(self.settings, timeout=300)
        token = via.settings.http_token.reveal()
        diffs_o = audit(via.settings.web_url, exp_orders, "orders", token)
        diffs_c = audit(via.settings.web_url, exp_customers, "customers", token)
        for counts in (classify(diffs_o, exp_orders), classify(diffs_c, exp_customers)):
            self.outcome.lost += counts["lost"]
            self.outcome.double_applied += counts["double_applied"]
            self.outcome.other += counts["other"]
        for key, diff in list(diffs_o.items())[:3] + list(diffs_c.items())[:3]:
            self.outcome.notes.append(f"mismatch {key}: {str(diff)[:300]}")
        if self.bad_orders:
            served = audit(via.settings.web_url, {k: {} for k in self.bad_orders}, "orders", token)
            applied = sum(1 for code, _ in served.values() if code != 404)
            self.outcome.other += applied
            if applied:
                self.outcome.notes.append(f"{applied} badly keyed orders were applied")
        return self.outcome

    def close(self) -> None:
        if self.stream is not None and self.stream._thread.is_alive():
            self.stream._stop.set()
            self.stream._thread.join(60)
        for w in self.workers:
            w.stop()
        if self.committed is not None:
            self.committed.close()
            self.committed = None


def run_case(
    name: str, body: Callable[[Case], Outcome], opts: Options, ports: Ports, **overrides: str
) -> Outcome:
    """Run one case; a case that breaks down is a failed row saying why, not a crash."""
    case = Case(name, opts, ports, **overrides)
    started = time.monotonic()
    log(f"case {name}: data and logs in {case.dir}")
    try:
        outcome = body(case)
    except Exception as exc:  # the matrix goes on with the next case
        case.outcome.error = f"{type(exc).__name__}: {exc}"
        outcome = case.outcome
    finally:
        case.close()
    outcome.notes.append(f"case took {time.monotonic() - started:.0f} s")
    status = "ok" if outcome.clean else f"FAILED {outcome.error}"
    log(
        f"case {name}: {outcome.events:,} events, lost {outcome.lost}, double-applied "
        f"{outcome.double_applied}, other {outcome.other}, recovery "
        f"{_secs(outcome.recovery_s)} s — {status}"
    )
    return outcome


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def environ_flag(name: str) -> str:
    """A benchmark-only variable of a worker variant (never an EVENTIDE_* setting)."""
    return os.environ.get(name, "")
