"""The SQLite outbox store: one embedded file, no set-up.

SQLite has a single writer: commands run on this process's one database
thread, and other processes (a separate ``eventide relay``) wait for the
write lock (busy timeout). The file is in WAL mode with ``synchronous=FULL``:
a command answered 201 is on disk.

Group commit: the commands that arrive while the thread is busy run
together in one ``BEGIN IMMEDIATE`` transaction, each inside its own
savepoint (a command that fails is rolled back to its savepoint, alone), and
are answered once that transaction has committed: one fsync and one thread
hop for the group instead of one per command. Commands of a group run in
arrival order and each sees the ones before it, so deciding against an
entity's events stays serial.

Relays take turns through a lease row: the relay holding an unexpired lease
is the only one given rows; it renews the lease while it publishes, and a
relay that dies loses it after ``lease_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from schemas.codecs import EventCodec, default_codec
from schemas.envelope import Envelope
from streams.catalogue import key_of

from ..exceptions import IdempotencyKeyReusedError, StoreError
from .base import (
    Claim,
    CommandOutcome,
    Decider,
    IdempotencyKey,
    OutboxRow,
    OutboxStore,
    answer,
    shard_of,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

Queued = tuple[str, str, Decider, "IdempotencyKey | None", "asyncio.Future[CommandOutcome]"]
"""A command waiting for its group: stream, topic, decider, idempotency key, answer."""
MAX_GROUP = 256
"""Most commands in one transaction."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    shard INTEGER NOT NULL,
    value BLOB NOT NULL,
    created_at REAL NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at)
    WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS relay_lease (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
INSERT OR IGNORE INTO relay_lease (name, owner, expires_at) VALUES ('outbox', '', 0);
"""


class SqliteStore(OutboxStore):
    """Outbox store in one SQLite file (the default)."""

    kind = "sqlite"

    def __init__(self, path: Path, lease_ttl: float = 5.0, codec: EventCodec | None = None) -> None:
        self.path = path
        self.lease_ttl = lease_ttl
        self.codec = codec if codec is not None else default_codec()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lease_renewed: dict[str, float] = {}
        self._group: list[Queued] = []
        """Commands waiting for the next group commit, in arrival order."""
        self._committing = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def _run(self, fun: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError(f"{self!r} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fun, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: {exc}") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self!r} is not open")
        return self._conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-outbox")
        await self._run(self._connect)

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        self._conn = conn
        with self._write():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
        self._executor = None

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _write(self) -> SqliteStore._Tx:
        return SqliteStore._Tx(self.conn)

    # -- commands -----------------------------------------------------------

    async def execute(
        self,
        stream: str,
        topic: str,
        decide: Decider,
        idempotency: IdempotencyKey | None,
        expect_new: bool = False,
    ) -> CommandOutcome:
        # One writer: reading the history costs no round trip here.
        if self._executor is None:
            raise StoreError(f"{self!r} is not open")
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        self._group.append((stream, topic, decide, idempotency, future))
        if not self._committing:
            self._committing = True
            asyncio.get_running_loop().create_task(self._commit_groups())
        return await future

    async def _commit_groups(self) -> None:
        """Run the queued commands in groups until none is left."""
        try:
            while self._group:
                group = self._group[:MAX_GROUP]
                del self._group[:MAX_GROUP]
                try:
                    results = await self._run(self._execute_group, group)
                except BaseException as exc:
                    results = [exc] * len(group)
                for (*_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._committing = False

    def _execute_group(self, group: list[Queued]) -> list[CommandOutcome | BaseException]:
        results: list[CommandOutcome | BaseException] = []
        with self._write() as c:
            for stream, topic, decide, idem, _ in group:
                c.execute("SAVEPOINT command")
                try:
                    results.append(self._execute(c, stream, topic, decide, idem))
                except Exception as exc:
                    c.execute("ROLLBACK TO command")
                    if isinstance(exc, sqlite3.Error):
                        exc = StoreError(f"SQLite {self.path}: {exc}")
                    results.append(exc)
                c.execute("RELEASE command")
        return results

    def _execute(
        self,
        c: sqlite3.Connection,
        stream: str,
        topic: str,
        decide: Decider,
        idem: IdempotencyKey | None,
    ) -> CommandOutcome:
        if idem is not None:
            row = c.execute(
                "SELECT fingerprint, status, body FROM idempotency WHERE key = ?", (idem.key,)
            ).fetchone()
            if row is not None:
                return _replay(idem, row[0], row[1], row[2])
        decode, encode = self.codec.decode_json, self.codec.encode_json
        history = [
            decode(body)
            for (body,) in c.execute(
                "SELECT body FROM events WHERE stream = ? ORDER BY seq", (stream,)
            )
        ]
        decision = decide(history)
        now = time.time()
        for seq, event in enumerate(decision.events, start=len(history) + 1):
            value = encode(event)
            key = key_of(event)
            c.execute(
                "INSERT INTO events (stream, seq, event_id, name, body, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stream, seq, event.id, event.name, value, now),
            )
            c.execute(
                "INSERT INTO outbox (event_id, topic, key, shard, value, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (event.id, topic, key, shard_of(key), value, now),
            )
        body = answer(decision)
        if idem is not None:
            c.execute(
                "INSERT INTO idempotency (key, fingerprint, status, body, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (idem.key, idem.fingerprint, 201, orjson.dumps(body), now),
            )
        return CommandOutcome(201, body)

    async def load_stream(self, stream: str) -> list[Envelope]:
        def load() -> list[Envelope]:
            rows = self.conn.execute(
                "SELECT body FROM events WHERE stream = ? ORDER BY seq", (stream,)
            )
            return [self.codec.decode_json(body) for (body,) in rows]

        return await self._run(load)

    # -- relay --------------------------------------------------------------

    def _take_lease(self, relay_id: str, force: bool = False) -> bool:
        now = time.time()
        # A lease renewed less than a quarter of its life ago is still ours:
        # skip the write (and its fsync) that would compete with commands.
        if not force and now - self._lease_renewed.get(relay_id, 0.0) < self.lease_ttl / 4:
            return True
        with self._write() as c:
            cur = c.execute(
                "UPDATE relay_lease SET owner = ?, expires_at = ?"
                " WHERE name = 'outbox' AND (owner = ? OR expires_at < ?)",
                (relay_id, now + self.lease_ttl, relay_id, now),
            )
            held = cur.rowcount == 1
        if held:
            self._lease_renewed[relay_id] = now
        else:
            self._lease_renewed.pop(relay_id, None)
        return held

    async def _keep_lease(self, relay_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 4)
            if not await self._run(self._take_lease, relay_id, True):
                logger.warning("relay %s lost its outbox lease", relay_id)
                return

    def _pending(self, limit: int) -> list[OutboxRow]:
        rows = self.conn.execute(
            "SELECT id, event_id, topic, key, value, created_at FROM outbox"
            " WHERE published_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [OutboxRow(*row) for row in rows]

    def _mark(self, relay_id: str, ids: list[int]) -> bool:
        with self._write() as c:
            owner = c.execute("SELECT owner FROM relay_lease WHERE name = 'outbox'").fetchone()
            if owner is None or owner[0] != relay_id:
                return False
            now = time.time()
            c.executemany(
                "UPDATE outbox SET published_at = ? WHERE id = ?", [(now, i) for i in ids]
            )
            return True

    @asynccontextmanager
    async def claim(
        self, relay_id: str, limit: int, exclude: frozenset[int] = frozenset()
    ) -> AsyncIterator[Claim]:
        if not await self._run(self._take_lease, relay_id):
            yield Claim([])
            return
        claim = Claim(await self._run(self._pending, limit))
        keeper = asyncio.create_task(self._keep_lease(relay_id))
        try:
            yield claim
        finally:
            keeper.cancel()
            if claim.published and not await self._run(self._mark, relay_id, claim.published):
                logger.warning(
                    "relay %s lost its lease mid-batch; %d rows stay pending and will be "
                    "published again with the same event ids",
                    relay_id,
                    len(claim.published),
                )

    async def release(self, relay_id: str) -> None:
        self._lease_renewed.pop(relay_id, None)

        def release() -> None:
            with self._write() as c:
                c.execute(
                    "UPDATE relay_lease SET expires_at = 0 WHERE name = 'outbox' AND owner = ?",
                    (relay_id,),
                )

        await self._run(release)

    async def cleanup(self, older_than: float) -> int:
        def cleanup() -> int:
            with self._write() as c:
                n = c.execute(
                    "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?",
                    (older_than,),
                ).rowcount
                c.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,))
                return n

        return await self._run(cleanup)

    async def pending_count(self) -> int:
        def count() -> int:
            (n,) = self.conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"
            ).fetchone()
            return int(n)

        return await self._run(count)

    async def outbox_counts(self) -> dict[str, int]:
        def counts() -> dict[str, int]:
            pending, published = self.conn.execute(
                "SELECT COUNT(*) - COUNT(published_at), COUNT(published_at) FROM outbox"
            ).fetchone()
            return {"pending": pending, "published": published}

        return await self._run(counts)


def _replay(idem: IdempotencyKey, stored: str, status: int, body: bytes) -> CommandOutcome:
    if stored != idem.fingerprint:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {idem.key!r} was first used with another request; "
            "send a new key for a new request"
        )
    return CommandOutcome(status, orjson.loads(body), replayed=True)
