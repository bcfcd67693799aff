"""The state and progress of one read-model rebuild (see streams/rebuild.py).

:class:`Rebuild` is what ``GET /admin/rebuild/<table>`` reports: its
:class:`RebuildState`, its :class:`RebuildPhase` while running, and the
progress of every source partition.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aiokafka import TopicPartition


class RebuildState(StrEnum):
    """How a rebuild ended, or that it still runs."""

    IDLE = "idle"
    """No rebuild of the table ran on this worker (status only)."""
    RUNNING = "running"
    SWITCHED = "switched"
    ABORTED = "aborted"
    FAILED = "failed"


class RebuildPhase(StrEnum):
    """Where a running rebuild is."""

    STARTING = "starting"
    REPLAYING = "replaying"
    SWITCHING = "switching"
    DONE = "done"


RUNNING = RebuildState.RUNNING
SWITCHED = RebuildState.SWITCHED
ABORTED = RebuildState.ABORTED
FAILED = RebuildState.FAILED


@dataclass
class PartitionProgress:
    """Where the shadow of one source partition stands."""

    start: int
    """First offset of the partition when the rebuild started."""
    position: int
    """Next offset the shadow reads."""
    target: int
    """One past the offset the live store has applied: the shadow stops there."""


def iso_time(when: float | None) -> str | None:
    """ISO 8601 UTC time of an epoch timestamp (None stays None)."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


@dataclass
class Rebuild:
    """One rebuild of one table on this worker, and its progress."""

    table: str
    """The read model being rebuilt."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Tells this rebuild from a later one of the same table."""
    state: RebuildState = RebuildState.RUNNING
    """running, switched, aborted or failed."""
    phase: RebuildPhase = RebuildPhase.STARTING
    """While running: starting, replaying, switching; then done."""
    reason: str | None = None
    """Why it was aborted or failed."""
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    finished: float | None = None
    partitions: dict[TopicPartition, PartitionProgress] = field(default_factory=dict)
    """Source partition → its progress."""
    applied: int = 0
    """Records the projection applied."""
    invalid: int = 0
    """Records the projection rejected as bad input (live: dead-lettered)."""
    failed: int = 0
    """Records whose handler raised (live: retried)."""
    changelog_records: int = 0
    """Keys written to the changelog at the switch."""
    tombstones: int = 0
    """Live keys the rebuilt model does not have, deleted at the switch."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def done(self) -> int:
        """Source records replayed so far."""
        return sum(p.position - p.start for p in self.partitions.values())

    @property
    def total(self) -> int:
        """Source records to replay (grows while the live model advances)."""
        return sum(max(p.target, p.position) - p.start for p in self.partitions.values())

    @property
    def remaining(self) -> int:
        """Records between the shadow and the live position."""
        return sum(max(0, p.target - p.position) for p in self.partitions.values())

    @property
    def percent(self) -> float:
        """Share of the records replayed (0 before the partitions are known)."""
        if self.total:
            return 100.0 * self.done / self.total
        return 0.0 if self.phase in (RebuildPhase.STARTING, RebuildPhase.REPLAYING) else 100.0

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def progress(self) -> str:
        """One line: records done of total, percentage, rate, rejects."""
        done, total = self.done, self.total
        percent = self.percent
        rate = done / self.elapsed if self.elapsed > 0 else 0.0
        return (
            f"{done:,}/{total:,} records ({percent:.1f}%), {rate:,.0f} records/s, "
            f"{self.invalid:,} invalid, {self.failed:,} failed"
        )

    def status(self) -> dict[str, Any]:
        """The JSON document of ``GET /admin/rebuild/<table>``."""
        done, total, elapsed = self.done, self.total, self.elapsed
        return {
            "id": self.id,
            "table": self.table,
            "state": self.state.value,
            "phase": self.phase.value,
            "reason": self.reason,
            "startedAt": iso_time(self.started_at),
            "finishedAt": iso_time(self.finished_at),
            "elapsedSeconds": round(elapsed, 3),
            "recordsDone": done,
            "recordsTotal": total,
            "percent": round(self.percent, 1),
            "ratePerSecond": round(done / elapsed, 1) if elapsed > 0 else 0.0,
            "recordsApplied": self.applied,
            "recordsInvalid": self.invalid,
            "recordsFailed": self.failed,
            "changelogRecords": self.changelog_records,
            "tombstones": self.tombstones,
            "partitions": [
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "start": p.start,
                    "position": p.position,
                    "target": p.target,
                }
                for tp, p in sorted(self.partitions.items())
            ],
        }
