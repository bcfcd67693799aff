"""The suite's processes and clocks: start and stop workers and peers, wait, read progress.

Shared by every scenario; :func:`start` remembers what it started so that a
failed run stops it all (:func:`stop_started`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventide.tools.demo import fetch_json
from streams.httpaccess import bearer, http_env
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def http_settings() -> dict[str, str]:
    """EVENTIDE_HTTP_* of the environment for the benchmark's processes: they accept
    its tokens and the drivers send its EVENTIDE_HTTP_TOKEN. A load generator is one
    client: the per-client rate limit is off in the processes under test."""
    return {**http_env(Settings.from_env()), "EVENTIDE_HTTP_RATE_LIMIT": "0"}


def auth(settings: Settings) -> dict[str, str]:
    """The Authorization header of the benchmark's HTTP requests (none without a token)."""
    return bearer(settings.http_token.reveal())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env_of(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as EVENTIDE_* variables."""
    return {**os.environ, **settings.to_env()}


class Progress:
    """Committed vs end offsets of a consumer group, on one long-lived connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        self.admin = AIOKafkaAdminClient(**aiokafka_options(self.settings))
        self.consumer = AIOKafkaConsumer(**aiokafka_options(self.settings))
        await self.admin.start()
        await self.consumer.start()

    def __call__(self, group: str, topics: list[str]) -> tuple[int, int]:
        return self.loop.run_until_complete(self._progress(group, topics))

    async def _progress(self, group: str, topics: list[str]) -> tuple[int, int]:
        committed = await self.admin.list_consumer_group_offsets(group)
        parts = range(self.settings.partitions)
        tps = [TopicPartition(t, p) for t in topics for p in parts]
        ends = await self.consumer.end_offsets(tps)
        done = sum(m.offset for tp, m in committed.items() if tp in ends and m.offset > 0)
        return done, sum(ends.values())

    def ends(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """End offset of every partition of ``topics``: (topic, partition) → offset."""
        parts = range(self.settings.partitions)
        tps = [TopicPartition(t, p) for t in topics for p in parts]
        ends = self.loop.run_until_complete(self.consumer.end_offsets(tps))
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    def close(self) -> None:
        self.loop.run_until_complete(self.consumer.stop())
        self.loop.run_until_complete(self.admin.close())
        self.loop.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes],
    interval: float = 0.5,
) -> float:
    """Call ``check`` every ``interval`` s until it holds; returns the time.monotonic() it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with {proc.returncode}")
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise SystemExit(f"{what}: not done after {timeout:.0f}s")


STARTED: list[subprocess.Popen[bytes]] = []
"""Every process :func:`start` started, for :func:`stop_started` to end on the way out."""


def start(
    cmd: list[str], settings: Settings, logfile: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env={**env_of(settings), **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    STARTED.append(proc)
    return proc


def stop_started() -> None:
    """Stop every process :func:`start` started that still runs (a failed run leaves none)."""
    while STARTED:
        stop(STARTED.pop())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ready(settings: Settings) -> bool:
    try:
        return fetch_json(f"{settings.web_url}/health", 2, settings.http_token.reveal())[0] == 200
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice): no clash with other runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
