"""What ``GET /health`` answers, and the broker probe behind it.

A worker is

- ``starting`` (503) while partitions are being assigned and their stores
  restored;
- ``degraded`` (503, with ``causes``) while the broker cannot be reached (the
  last successful probe is older than :attr:`WorkerHealth.stale_after`), while
  the engine has not polled its consumer for as long (a batch stuck waiting for
  the broker's acks), or while a table partition it owns cannot be restored
  (streams/healing.py);
- ``ready`` (200) otherwise, and again as soon as the causes are gone.

The probe is the consumer-lag refresh (:class:`LagRefresher`): a ListOffsets
request to the broker every ``EVENTIDE_METRICS_INTERVAL`` seconds, bounded by
a timeout, never overlapping itself: a tick that comes while the previous
refresh still runs is skipped (and counted), so a stalled broker cannot pile
up requests or leave the lag metric silently stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import ProjectionEngine

logger = logging.getLogger(__name__)


class WorkerHealth:
    """The worker's health, from the engine's state and the broker probe."""

    def __init__(
        self,
        engine: ProjectionEngine,
        stale_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.stale_after = stale_after
        """Seconds without a broker answer (or an engine poll) before the worker is degraded."""
        self.clock = clock
        self.last_answer = clock()
        """``clock()`` of the broker's last answer to a probe (start-up counts as one)."""
        self.last_error = ""
        """Why the last probe failed ("" once one succeeds)."""

    def broker_answered(self) -> None:
        """A probe succeeded."""
        if self.last_error:
            logger.info("the broker answers again; health: %s", self.status()[1]["status"])
        self.last_answer = self.clock()
        self.last_error = ""

    def broker_failed(self, cause: str) -> None:
        """A probe failed or timed out with ``cause``."""
        self.last_error = cause

    def causes(self) -> list[str]:
        """Why the worker is degraded; empty when it is not."""
        now = self.clock()
        causes = []
        silent = now - self.last_answer
        if silent > self.stale_after:
            why = f": {self.last_error}" if self.last_error else ""
            causes.append(f"broker unreachable: no answer for {silent:.0f}s{why}")
        idle = now - self.engine.polled
        if idle > self.stale_after and self.engine.ready:
            causes.append(
                f"consumer not fetching: the engine has not polled for {idle:.0f}s "
                "(a batch waits for the broker)"
            )
        for partition, reason in self.engine.healer.report().items():
            causes.append(f"table partition {partition} cannot be served: {reason}")
        return causes

    def status(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and body of ``GET /health``."""
        engine = self.engine
        causes = self.causes()
        state = "starting" if not engine.ready else "degraded" if causes else "ready"
        body: dict[str, Any] = {
            "status": state,
            "partitions": sorted(f"{t}[{p}]" for t, p in engine.stores),
            "standbys": sorted(f"{t}[{p}]" for t, p in engine.standby_stores),
            "eventsProcessed": engine.events_processed,
        }
        if causes:
            body["causes"] = causes
        failed = engine.healer.report()
        if failed:
            body["failedPartitions"] = failed
        return (200 if state == "ready" else 503), body


class LagRefresher:
    """Refreshes the consumer lag every ``interval`` seconds, one refresh at a time."""

    def __init__(self, engine: ProjectionEngine, health: WorkerHealth, interval: float) -> None:
        self.engine = engine
        self.health = health
        self.interval = interval
        self.timeout = max(2 * interval, 5.0)
        """Longest a refresh may take before it counts as a failed probe."""
        self.skipped = 0
        """Ticks skipped because the previous refresh was still running."""
        self._running: asyncio.Future[None] | None = None

    def tick(self) -> None:
        """Start a refresh unless one still runs (then skip this tick)."""
        if self._running is not None and not self._running.done():
            self.skipped += 1
            return
        self._running = asyncio.ensure_future(self.refresh())

    async def refresh(self) -> None:
        """One refresh: the broker's log end offsets → the lag gauge; a probe of the broker."""
        try:
            await asyncio.wait_for(
                self.engine.metrics.refresh_lag(self.engine.consumer), self.timeout
            )
        except TimeoutError:
            self.health.broker_failed(f"the lag refresh timed out after {self.timeout:.0f}s")
        except Exception as exc:
            self.health.broker_failed(f"{type(exc).__name__}: {exc}"[:300])
        else:
            self.health.broker_answered()

    async def run(self) -> None:
        """Tick every ``interval`` seconds until cancelled."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.tick()
        finally:
            if self._running is not None:
                self._running.cancel()
