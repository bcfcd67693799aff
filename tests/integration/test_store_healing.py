"""A damaged RocksDB store is moved aside and restored from its changelog."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from streams.outputs import KeyPartitioner
from streams.topics import ensure_topics
from tables.store import PartitionStore
from tests.integration.test_failures import order, placed, send

pytestmark = pytest.mark.integration


def _one_sst(store: Path) -> Path:
    """Flush the store (a stopped worker may hold its last writes in the WAL only)
    and return one of its table files."""
    PartitionStore(store).close()  # reopening flushes the recovered WAL to an .sst
    files = sorted(store.glob("*.sst"))
    assert files, f"no .sst in {store}: {sorted(p.name for p in store.iterdir())}"
    return files[0]


def test_truncated_and_deleted_sst_files_are_restored_from_the_changelog(
    make_settings, worker_factory
):
    settings = make_settings()
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings).start()
    partition_of = KeyPartitioner(settings.partitions)
    ids = [f"o-heal-{i}" for i in range(40)]
    send(settings, [placed(i) for i in ids])
    deadline = time.monotonic() + 60
    while any(order(settings, i)[0] != 200 for i in ids) and time.monotonic() < deadline:
        time.sleep(0.3)
    worker.stop()

    tables = settings.data_dir / "tables" / "orders"
    used = sorted({partition_of(i.encode()) for i in ids})
    truncated, deleted = _one_sst(tables / str(used[0])), _one_sst(tables / str(used[1]))
    with truncated.open("r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    deleted.unlink()

    started = time.monotonic()
    worker = worker_factory(settings).start(ready_timeout=30)
    assert time.monotonic() - started < 30
    assert all(order(settings, i)[0] == 200 for i in ids)
    assert all(order(settings, i)[1]["status"] == "pending" for i in ids)
    log = worker.output()
    for p in used[:2]:
        aside = sorted(tables.glob(f"{p}.damaged-*"))
        assert len(aside) == 1, sorted(tables.iterdir())  # kept for inspection
        assert "WARNING" in log and str(aside[0]) in log
    assert "Sst file size mismatch" in log
