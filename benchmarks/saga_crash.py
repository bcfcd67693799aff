"""Order sagas under ``kill -9`` of the orchestrator worker.

Places N orders in chunks while the participants (``eventide participant all``,
EVENTIDE_PARTICIPANT_FAILURE_RATE) answer, kills the worker with SIGKILL at
random moments and restarts it, then checks over HTTP and in the participants'
logs of applied commands that:

- every saga is completed, or failed with every step done compensated
  (``compensationsRun`` is the steps done, newest first; nothing pending);
- no participant applied a command twice (a command id once per log);
- no compensation ran for a step that never ran (every logged compensation
  has ``known: true``), and a failed saga's compensations are exactly the
  forward steps the participants applied;
- a completed saga had nothing compensated.

    python -m benchmarks.saga_crash --sagas 2000 --kills 4 --broker kafka://127.0.0.1:19400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from eventide.tools.participant import COMPENSATIONS, FORWARD, SERVICES, read_log
from eventide.tools.saga_demo import fetch_saga, placed_orders, publish_orders
from streams.settings import Settings
from streams.topics import ensure_topics

from .procs import env_of, free_port, ready

STEP_OF = {
    name: service
    for service in SERVICES
    for name in (*FORWARD, *COMPENSATIONS)
    if name.startswith(service)
}


def saga_settings(broker: str, workdir: Path, failure_rate: float) -> Settings:
    """Settings of one run: its own topics, data and participant logs."""
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": broker,
            "EVENTIDE_APP_ID": f"sagacrash-{tag}",
            "EVENTIDE_TOPIC_PREFIX": f"sagacrash-{tag}-",
            "EVENTIDE_PARTITIONS": "4",
            "EVENTIDE_DATA_DIR": str(workdir / "data"),
            "EVENTIDE_STATE_DIR": str(workdir / "state"),
            "EVENTIDE_WEB_PORT": str(free_port()),
            "EVENTIDE_HTTP_RATE_LIMIT": "0",
            "EVENTIDE_SESSION_TIMEOUT_MS": "6000",
            "EVENTIDE_PROJECTIONS": "orders,sagas",
            "EVENTIDE_SAGA_STEP_TIMEOUT_MS": "15000",
            "EVENTIDE_SAGA_RETRY_MS": "3000",
            "EVENTIDE_SAGA_TICK_MS": "250",
            "EVENTIDE_PARTICIPANT_FAILURE_RATE": str(failure_rate),
            "EVENTIDE_PARTICIPANT_LOG_DIR": str(workdir / "participants"),
        }
    )


class Process:
    """A child process (worker or participants) with its log file."""

    def __init__(self, args: list[str], settings: Settings, logfile: Path) -> None:
        self.args, self.settings, self.logfile = args, settings, logfile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventide.cli", *self.args],
                env=env_of(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 180
        while wait_ready and not ready(self.settings):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.args[0]} did not start; see {self.logfile}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_finished(
    settings: Settings, order_ids: list[str], timeout: float, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Every saga as served once all are finished (or when ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    sagas: dict[str, dict[str, Any]] = {}
    while True:
        for oid in order_ids:
            if sagas.get(oid, {}).get("status") not in ("completed", "failed"):
                try:
                    code, body = fetch_saga(settings, oid)
                except OSError:
                    code, body = 0, None
                if code == 200:
                    sagas[oid] = body
        done = sum(s["status"] in ("completed", "failed") for s in sagas.values())
        log(f"  {done}/{len(order_ids)} sagas finished")
        if done == len(order_ids) or time.monotonic() > deadline:
            return sagas
        time.sleep(1.0)


def timings(sagas: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Finished sagas per second (first start to last finish, saga record times) and
    the p50/p99 duration of a saga in ms."""
    finished = [s for s in sagas.values() if s.get("finishedAt")]
    if not finished:
        return {}
    starts = [_ms(s["startedAt"]) for s in finished]
    ends = [_ms(s["finishedAt"]) for s in finished]
    durations = sorted(e - s for s, e in zip(starts, ends, strict=True))
    span = max(ends) - min(starts)
    return {
        "sagas_per_s": round(len(finished) / (span / 1000), 1) if span > 0 else 0.0,
        "duration_p50_ms": durations[len(durations) // 2],
        "duration_p99_ms": durations[min(len(durations) - 1, int(len(durations) * 0.99))],
    }


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def check(order_ids: list[str], sagas: dict[str, dict[str, Any]], log_dir: Path) -> dict[str, Any]:
    """The run's findings (see the module docstring); ``problems`` lists each breach."""
    problems: list[str] = []
    applied: dict[str, set[str]] = {}
    compensated: dict[str, set[str]] = {}
    duplicates = unknown = 0
    for service in SERVICES:
        seen: set[str] = set()
        for entry in read_log(log_dir / f"{service}.jsonl"):
            if entry["commandId"] in seen:
                duplicates += 1
                problems.append(f"{service} applied {entry['name']} {entry['commandId']} twice")
            seen.add(entry["commandId"])
            oid = entry["orderId"]
            if entry["name"] in FORWARD and entry["outcome"] == "applied":
                applied.setdefault(oid, set()).add(service)
            elif entry["name"] in COMPENSATIONS:
                compensated.setdefault(oid, set()).add(service)
                if not entry.get("known"):
                    unknown += 1
                    problems.append(f"{oid}: {entry['name']} for a step that never ran")
    by_status: dict[str, int] = {}
    for oid in order_ids:
        saga = sagas.get(oid)
        status = saga["status"] if saga else "missing"
        by_status[status] = by_status.get(status, 0) + 1
        if saga is None or status not in ("completed", "failed"):
            problems.append(f"{oid}: saga {status}")
            continue
        comp = compensated.get(oid, set())
        if status == "completed" and comp:
            problems.append(f"{oid}: completed, yet compensated {sorted(comp)}")
        if status == "failed":
            # newest first; a step that succeeded after its timeout joins the queue late
            late = any("late" in h for h in saga["history"])
            run_ = saga["compensationsRun"]
            order_ok = sorted(run_) == sorted(saga["done"]) if late else run_ == saga["done"][::-1]
            if saga["compensationsPending"] or not order_ok or len(set(run_)) != len(run_):
                problems.append(f"{oid}: not fully compensated: {saga}")
            if comp != applied.get(oid, set()):
                problems.append(f"{oid}: applied {applied.get(oid)}, compensated {comp}")
    return {
        "sagas": by_status,
        "duplicate_applications": duplicates,
        "compensations_without_step": unknown,
        "problems": problems,
    }


def run(
    broker: str,
    sagas: int,
    kills: int,
    failure_rate: float,
    chunks: int,
    pause: float,
    workdir: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One crash run; returns its findings (``problems`` empty when all held)."""
    settings = saga_settings(broker, workdir, failure_rate)
    asyncio.run(ensure_topics(settings))
    worker = Process(["worker"], settings, workdir / "worker.log")
    participants = Process(["participant", "all"], settings, workdir / "participants.log")
    events = placed_orders(sagas, seed=7)
    order_ids = [e.data["orderId"] for e in events]
    try:
        participants.start(wait_ready=False)
        worker.start()
        t0 = time.monotonic()
        step = -(-len(events) // chunks)
        # a kill after a random chunk, at a random moment of the pause that follows
        kill_after = sorted(random.choices(range(chunks), k=kills))
        for i in range(chunks):
            asyncio.run(publish_orders(settings, events[i * step : (i + 1) * step]))
            pause_left = pause
            while kill_after and kill_after[0] == i:
                kill_after.pop(0)
                wait = random.uniform(0, pause_left)
                time.sleep(wait)
                pause_left -= wait
                worker.kill()
                log(
                    f"kill -9 of the worker at {time.monotonic() - t0:.1f}s "
                    f"({min((i + 1) * step, sagas)} sagas placed)"
                )
                worker.start()
            time.sleep(pause_left)
        log(f"placed {sagas} orders; waiting for every saga to finish")
        served = wait_finished(settings, order_ids, 300 + sagas / 10, log)
        seconds = time.monotonic() - t0
        found = check(order_ids, served, settings.participant_logs)
        found.update(timings(served))
    finally:
        worker.stop()
        participants.stop()
    return {
        "sagas_placed": sagas,
        "kills": kills,
        "failure_rate": failure_rate,
        "seconds": round(seconds, 1),
        **found,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sagas", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--failure-rate", type=float, default=0.1)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between chunks")
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="eventide-saga-crash-"))
    result = run(
        args.broker, args.sagas, args.kills, args.failure_rate, args.chunks, args.pause, workdir
    )
    shown = {**result, "problems": result["problems"][:20]}
    print(json.dumps(shown, indent=2))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
