"""Standby replicas: warm copies of table partitions that other workers own.

With ``EVENTIDE_STANDBY_REPLICAS=n`` a worker follows the changelogs of the
partitions owned by the *n* workers before it (in URL order) into local stores.
When such a partition is assigned to it, the engine takes the warm store and
replays only the changelog's tail.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition

from tables.changelog import CHANGELOG, SEQ, ChangelogReplay
from tables.store import PartitionStore

from .healing import open_store
from .transport import KafkaReaders

if TYPE_CHECKING:
    from .engine import ProjectionEngine

logger = logging.getLogger(__name__)


class StandbyReplicas:
    """Follows the changelogs of the partitions this worker keeps warm."""

    def __init__(self, engine: ProjectionEngine) -> None:
        self.engine = engine
        self.stores: dict[tuple[str, int], PartitionStore] = {}
        """(table, partition) → warm store of a partition another worker owns."""
        self._replays: dict[tuple[str, int], ChangelogReplay] = {}
        """(table, partition) → the complete batches read so far of its changelog."""

    def targets(self) -> set[tuple[str, int]]:
        """Table partitions this worker keeps warm: those owned by the next
        ``standby_replicas`` workers before it in URL order."""
        engine = self.engine
        replicas = engine.settings.standby_replicas
        urls = sorted(engine.assignor.hosts)
        me = engine.settings.web_url
        if replicas == 0 or me not in urls or len(urls) < 2:
            return set()
        targets = set()
        i = urls.index(me)
        owners = {urls[(i - k) % len(urls)] for k in range(1, min(replicas, len(urls) - 1) + 1)}
        for projection in engine.projections:
            for url in owners:
                for partition in engine.assignor.hosts[url].get(projection.query_topic, ()):
                    targets.add((projection.table, partition))
        return targets - set(engine.stores)

    def take(self, table: str, partition: int) -> PartitionStore | None:
        """Hand a warm store over to the engine (its partition was assigned here)."""
        self._replays.pop((table, partition), None)
        return self.stores.pop((table, partition), None)

    def close(self) -> None:
        """Close every warm store."""
        for store in self.stores.values():
            store.close()
        self.stores.clear()
        self._replays.clear()

    async def run(self) -> None:
        """Follow the wanted changelog partitions until the engine stops."""
        engine = self.engine
        transport = engine.transport
        if engine.settings.standby_replicas == 0 or not isinstance(transport, KafkaReaders):
            return
        table_of = {engine.changelog_topic(p.table): p.table for p in engine.projections}
        reader = transport.reader("standby")
        await reader.start()
        current: set[tuple[str, int]] = set()
        try:
            while not engine.should_stop:
                wanted = self.targets() if engine.ready else current
                if wanted != current:
                    async with engine.locked():
                        self._follow(reader, current - wanted, wanted - current)
                    current = wanted
                    logger.info("standby for %s", sorted(f"{t}[{p}]" for t, p in current))
                if not current:
                    await asyncio.sleep(1.0)
                    continue
                got = await reader.getmany(timeout_ms=500, max_records=20_000)
                async with engine.locked():
                    for tp, records in got.items():
                        key = (table_of[tp.topic], tp.partition)
                        store, replay = self.stores.get(key), self._replays.get(key)
                        if store is not None and replay is not None and records:
                            replay.restore(store, records)  # complete batches only
        finally:
            await reader.stop()

    def _follow(
        self,
        reader: AIOKafkaConsumer,
        dropped: set[tuple[str, int]],
        added: set[tuple[str, int]],
    ) -> None:
        """Close the dropped stores, open the added ones, reassign the reader."""
        engine = self.engine
        for key in dropped:
            self._replays.pop(key, None)
            store = self.stores.pop(key, None)
            if store is not None:
                store.close()
        for key in added:
            if key not in engine.stores and key not in self.stores:
                self.stores[key] = open_store(engine.store_path(*key), engine.rocksdb)
        tps = {TopicPartition(engine.changelog_topic(t), p): (t, p) for t, p in self.stores}
        reader.assign(list(tps))
        for tp, key in tps.items():
            store = self.stores[key]
            reader.seek(tp, store.offset(CHANGELOG) + 1)
            self._replays[key] = ChangelogReplay(store.offset(SEQ))
