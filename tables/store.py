"""RocksDB state: one store per (table, partition), written in transactions.

Store → partition → transaction, as in quix-streams: a batch's changes to a
partition and the source offsets they came from are written in one RocksDB
``WriteBatch``, so after a crash the local files are either before or after
the batch, never in between. Keys are the entity id's UTF-8 bytes; values are
JSON documents (orjson). Metadata lives under keys starting with ``\\x00``,
which no entity id can start with.

A batch's changes are collected in a :class:`~tables.transaction.Transaction`
(``Transaction(store)``); the changelog record format is in
:mod:`tables.changelog`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Options, Rdict, WriteBatch

from .changelog import META_PREFIX, OFFSETS_KEY
from .exceptions import StoreDamagedError, StoreError, StoreLockedError


def store_error(path: Path, exc: BaseException) -> StoreError:
    """The error to raise for RocksDB's ``exc`` on the store at ``path``: locked by
    another process, or damaged (anything else: restore it from the changelog)."""
    reason = str(exc).strip() or type(exc).__name__
    if "lock" in reason.lower() and "corruption" not in reason.lower():
        return StoreLockedError(f"table partition {path} is locked by another process: {reason}")
    return StoreDamagedError(f"table partition {path} cannot be opened: {reason}")


@dataclass(frozen=True)
class RocksDBOptions:
    """RocksDB tuning of every table partition."""

    write_buffer_size: int = 32 * 1024 * 1024
    """Memtable size in bytes before a flush."""
    max_write_buffer_number: int = 3
    """Memtables kept before writes stall."""
    use_fsync: bool = False
    """fsync instead of fdatasync on flush (slower, no safer on Linux ext4/xfs)."""

    def to_options(self) -> Options:
        """The rocksdict ``Options`` (raw bytes keys and values)."""
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_size)
        opts.set_max_write_buffer_number(self.max_write_buffer_number)
        opts.set_use_fsync(self.use_fsync)
        return opts


class PartitionStore:
    """The local RocksDB of one partition of one table."""

    def __init__(self, path: Path, options: RocksDBOptions | None = None) -> None:
        """Open (or create) the store at ``path``.

        Raises :class:`~tables.exceptions.StoreDamagedError` when RocksDB finds
        its files damaged and :class:`~tables.exceptions.StoreLockedError` when
        another process holds them.
        """
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(str(path), (options or RocksDBOptions()).to_options())
        except Exception as exc:  # rocksdict raises a bare Exception("Corruption: ...")
            raise store_error(path, exc) from exc
        try:
            raw = self._db.get(OFFSETS_KEY)
            self._offsets: dict[str, int] = orjson.loads(raw) if raw else {}
        except Exception as exc:
            self._db.close()
            raise store_error(path, exc) from exc
        self._prefixes: dict[bytes, bool] = {}
        """Metadata prefix → whether some stored key starts with it (see :meth:`has_prefix`)."""

    def get(self, key: bytes) -> Any | None:
        """The decoded value stored under ``key``, or None."""
        raw = self._db.get(key)
        return None if raw is None else orjson.loads(raw)

    def has_prefix(self, prefix: bytes) -> bool:
        """Whether some stored key starts with ``prefix`` (a metadata prefix).

        Lets a hot path skip point lookups that would all miss, such as the
        per-key retry state of a partition with nothing in retry. The answer
        is looked up once per prefix and kept true by :meth:`write`; it may
        stay true after the keys are deleted (a lookup then just misses).
        """
        present = self._prefixes.get(prefix)
        if present is None:
            it = self._db.iter()
            it.seek(prefix)
            present = it.valid() and bytes(it.key()).startswith(prefix)
            del it
            self._prefixes[prefix] = present
        return present

    def offset(self, source: str) -> int:
        """Last offset of ``source`` (a topic, or the changelog) applied here; -1 if none."""
        return self._offsets.get(source, -1)

    def offsets(self) -> dict[str, int]:
        """All recorded offsets."""
        return dict(self._offsets)

    def write(self, values: dict[bytes, bytes | None], offsets: dict[str, int]) -> None:
        """Write encoded values (None deletes) and new offsets in one WriteBatch."""
        batch = WriteBatch(raw_mode=True)
        absent = [p for p, present in self._prefixes.items() if not present]
        for key, value in values.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
                if absent and key[:1] == META_PREFIX:
                    for prefix in absent:
                        if key.startswith(prefix):
                            self._prefixes[prefix] = True
        merged = {**self._offsets, **offsets}
        batch.put(OFFSETS_KEY, orjson.dumps(merged))
        self._db.write(batch)
        self._offsets = merged

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every (key, decoded value), metadata excluded."""
        for key, raw in self._db.items():
            if isinstance(key, bytes) and not key.startswith(META_PREFIX):
                yield key, orjson.loads(raw)

    def raw_items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every (key, stored bytes) whose key starts with ``prefix``, in key
        order; metadata included, except the offsets record."""
        for key, raw in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            if key != OFFSETS_KEY:
                yield key, raw

    def __contains__(self, key: bytes) -> bool:
        return key in self._db

    def close(self) -> None:
        """Flush and close the database files."""
        self._db.close()

    def destroy(self) -> None:
        """Close and delete the partition's files."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
