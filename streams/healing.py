"""Self-healing table partitions: damaged stores are moved aside and restored.

A table partition's RocksDB folder can be damaged while the worker is stopped
(a truncated or deleted ``.sst``, a disk that filled up). RocksDB then refuses
to open it, and a worker that let that error escape its assignment listener
would stay "starting" forever. Instead, :class:`StoreHealer`:

1. opens the store; if RocksDB reports it damaged
   (:class:`~tables.exceptions.StoreDamagedError`), renames the folder to
   ``<partition>.damaged-<UTC time>`` beside it (kept for inspection, named in a
   WARNING line) and opens a fresh, empty store in its place;
2. restores it from the table's changelog (``ProjectionEngine.recover``, the
   path every assignment takes);
3. if that fails too (the changelog cannot be read, the folder cannot be
   created, another process holds the lock), records the partition as failed
   with the reason, which ``GET /health`` reports, and tries again with
   exponential back-off (:data:`FIRST_RETRY_S` doubling up to
   :data:`MAX_RETRY_S`). The engine pauses the partition's source topics
   meanwhile, so no record is read past without being applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tables.exceptions import StoreDamagedError
from tables.store import PartitionStore, RocksDBOptions

if TYPE_CHECKING:
    from .engine import ProjectionEngine

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0
"""Seconds before the first new attempt at a partition that could not be restored."""
MAX_RETRY_S = 60.0
"""Longest wait between two attempts."""


@dataclass
class FailedPartition:
    """A table partition this worker owns but cannot serve yet."""

    reason: str
    """Why the last attempt failed (the error's class and message)."""
    attempts: int
    """Attempts so far."""
    next_attempt: float
    """``time.monotonic()`` of the next attempt."""

    def describe(self, now: float) -> str:
        """The reason and when the next attempt is, for ``/health``."""
        wait = max(0.0, self.next_attempt - now)
        return f"{self.reason} (attempt {self.attempts}; next in {wait:.0f}s)"


def move_aside(path: Path, clock: Callable[[], float] = time.time) -> Path:
    """Rename a damaged store folder to ``<name>.damaged-<UTC time>`` beside it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    path.rename(target)
    return target


def open_store(path: Path, options: RocksDBOptions) -> PartitionStore:
    """Open the store at ``path``; a damaged one is moved aside (logged with its new
    name) and an empty store opened in its place, to be restored from the changelog.

    Raises :class:`~tables.exceptions.StoreError` when even that fails, or when
    another process holds the store (a locked store is never moved).
    """
    try:
        return PartitionStore(path, options)
    except StoreDamagedError as exc:
        aside = move_aside(path)
        logger.warning(
            "%s; moved it aside to %s (kept for inspection) and restoring it from its changelog",
            exc,
            aside,
        )
    return PartitionStore(path, options)


class StoreHealer:
    """Opens and restores the engine's table partitions; remembers those that failed."""

    def __init__(self, engine: ProjectionEngine, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.clock = clock
        self.failed: dict[tuple[str, int], FailedPartition] = {}
        """(table, partition) → why it cannot be served yet, and when to try again."""

    async def open(self, table: str, partition: int) -> tuple[PartitionStore | None, int]:
        """The partition's store, restored from its changelog, and the number of
        changelog records replayed; (None, 0) if that failed (recorded in
        :attr:`failed`, tried again by :meth:`heal_due`)."""
        engine = self.engine
        key = (table, partition)
        store = engine.standbys.take(table, partition)
        try:
            if store is None:
                store = open_store(engine.store_path(table, partition), engine.rocksdb)
            restored = await engine.recover(table, partition, store)
        except Exception as exc:
            if store is not None:
                store.close()
            self._failed(key, exc)
            return None, 0
        if self.failed.pop(key, None) is not None:
            logger.info("table partition %s[%d] restored and served again", table, partition)
        return store, restored

    async def run(self) -> None:
        """Every half second, try the failed partitions whose time has come; resume
        the source partitions of those restored. Runs until cancelled."""
        engine = self.engine
        while True:
            await asyncio.sleep(0.5)
            consumer = engine.consumer
            if not self.failed or consumer is None:
                continue
            async with engine.locked():
                healed = await self.heal_due()
                tps = [
                    tp
                    for tp in sorted(consumer.assignment())
                    if any(
                        (p.table, tp.partition) in healed for p in engine.by_topic.get(tp.topic, ())
                    )
                ]
                try:
                    for tp in tps:
                        if await engine.seek_applied(consumer, tp):
                            consumer.resume(tp)
                except Exception as exc:  # not served after all: try again later
                    consumer.pause(*tps)
                    for key in healed:
                        store = engine.stores.pop(key, None)
                        if store is not None:
                            store.close()
                        self._failed(key, exc)

    async def heal_due(self) -> set[tuple[str, int]]:
        """Try the failed partitions whose time has come; serve those restored
        (in the engine's stores) and return them. Call under the engine's lock."""
        healed = set()
        for key in self.due():
            store, _ = await self.open(*key)
            if store is not None:
                self.engine.stores[key] = store
                healed.add(key)
        return healed

    def _failed(self, key: tuple[str, int], exc: BaseException) -> None:
        before = self.failed.get(key)
        attempts = 1 if before is None else before.attempts + 1
        delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (attempts - 1))
        reason = f"{type(exc).__name__}: {exc}"[:500]
        self.failed[key] = FailedPartition(reason, attempts, self.clock() + delay)
        logger.error(
            "table partition %s[%d] cannot be restored (attempt %d, next in %.0fs): %s",
            *key,
            attempts,
            delay,
            reason,
        )

    def due(self) -> list[tuple[str, int]]:
        """Failed partitions whose next attempt is now."""
        now = self.clock()
        return sorted(k for k, f in self.failed.items() if f.next_attempt <= now)

    def report(self) -> dict[str, str]:
        """``table[partition]`` → reason and next attempt, for ``/health``."""
        now = self.clock()
        return {f"{t}[{p}]": f.describe(now) for (t, p), f in sorted(self.failed.items())}
