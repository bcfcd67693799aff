"""The PostgreSQL outbox store (``EVENTIDE_DATABASE_URL=postgresql://...``).

A command is optimistic: it reads the entity's events (unless this process
has them cached, or the command creates its entity), decides, and appends the
new event with its outbox row in ONE statement (a CTE), which PostgreSQL
commits atomically on its own. The appends of the commands decided while a
statement is in flight go together in the next one (group commit: one round
trip and one commit for the group; each command is answered after it). Two
commands racing on one entity both try to insert the same ``(stream, seq)``;
the loser's event and outbox row are skipped (``ON CONFLICT DO NOTHING``) and
it gets a :class:`ConcurrencyError`, which the service retries against the
new state. Commands with an ``Idempotency-Key`` or with several events run in
an explicit READ COMMITTED transaction instead.

Relays claim shards of the outbox with transaction-scoped advisory locks
(``pg_try_advisory_xact_lock``): the relay holding a shard's lock is the only
one reading its rows until it commits the rows it published. A relay that
dies loses its connection, so its transaction rolls back and its locks go
with it; the rows stay pending for the next relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from schemas.codecs import EventCodec, default_codec
from schemas.envelope import Envelope
from streams.catalogue import key_of
from streams.settings import SecretUrl

from ..exceptions import ConcurrencyError, IdempotencyKeyReusedError, StoreError
from .base import (
    SHARDS,
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

LOCK_CLASS = 0x0E7E
"""First key of Eventide's advisory locks (the second is the shard)."""

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        body BYTEA NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (stream, seq))""",
    """CREATE TABLE IF NOT EXISTS outbox (
        id BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        shard INTEGER NOT NULL,
        value BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        published_at DOUBLE PRECISION)""",
    """CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (shard, id)
        WHERE published_at IS NULL""",
    """CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at)
        WHERE published_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        body BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
]

APPEND = """
WITH e AS (
    INSERT INTO events (stream, seq, event_id, name, body, recorded_at)
    VALUES ($1, $2, $3, $4, $5, $6)
)
INSERT INTO outbox (event_id, topic, key, shard, value, created_at)
VALUES ($3, $7, $8, $9, $5, $6)
"""

EVENTS_OF = "SELECT body FROM events WHERE stream = $1 ORDER BY seq"

GROUP_APPEND = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bytea[],
                         $6::text[], $7::text[], $8::int[])
        WITH ORDINALITY AS i(stream, seq, event_id, name, body, topic, key, shard, n)
), e AS (
    INSERT INTO events (stream, seq, event_id, name, body, recorded_at)
    SELECT stream, seq, event_id, name, body, $9 FROM input ORDER BY n
    ON CONFLICT (stream, seq) DO NOTHING
    RETURNING event_id
)
INSERT INTO outbox (event_id, topic, key, shard, value, created_at)
SELECT i.event_id, i.topic, i.key, i.shard, i.body, $9 FROM input i JOIN e USING (event_id)
ORDER BY i.n
RETURNING event_id
"""
"""Appends a group of commands' events with their outbox rows in one statement
(committed atomically); an event whose ``(stream, seq)`` exists is skipped with
its outbox row, and only the appended event ids are returned."""
GROUP_APPEND_NOTIFY = GROUP_APPEND.replace(
    "), e AS (", "), n AS (SELECT pg_notify('eventide_outbox', '')), e AS (", 1
).replace("JOIN e USING (event_id)", "JOIN e USING (event_id) CROSS JOIN n", 1)
"""The same, announcing the commit to relays in other processes (LISTEN
``eventide_outbox``); PostgreSQL sends one notification per group."""
CHANNEL = "eventide_outbox"
"""The LISTEN/NOTIFY channel on which commits are announced."""
MAX_GROUP = 256
"""Most appends in one group statement."""

LOCK_SHARDS = """
SELECT c.shard FROM (
    SELECT s.shard FROM generate_series(0, $1 - 1) AS s(shard)
    WHERE s.shard <> ALL($4::int[])
      AND EXISTS (SELECT 1 FROM outbox o WHERE o.shard = s.shard AND o.published_at IS NULL)
    ORDER BY random() LIMIT $3
) AS c
WHERE pg_try_advisory_xact_lock($2, c.shard)
"""
SHARDS_PER_CLAIM = SHARDS // 2
"""A claim tries this many of the shards with pending rows, picked at random, so
that relays running side by side share the work instead of queueing."""

PENDING = """
SELECT id, event_id, topic, key, value, created_at FROM outbox
WHERE published_at IS NULL AND shard = ANY($1::int[])
ORDER BY id LIMIT $2
"""


class PostgresStore(OutboxStore):
    """Outbox store in a PostgreSQL database."""

    kind = "postgresql"
    parallel_claims = 2

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        cache_size: int = 10_000,
        notify: bool = False,
        codec: EventCodec | None = None,
    ) -> None:
        self._url = url
        self.codec = codec if codec is not None else default_codec()
        self._append_sql = GROUP_APPEND_NOTIFY if notify else GROUP_APPEND
        self._listener: asyncpg.Connection | None = None
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._cache_size = cache_size
        self._histories: OrderedDict[str, tuple[Envelope, ...]] = OrderedDict()
        """Events of the entities this process appended to most recently (LRU)."""
        self._appends: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        """Appends waiting for the next group statement, in arrival order."""
        self._appending = False

    def __repr__(self) -> str:
        return f"PostgresStore({str(SecretUrl(self._url))!r})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self!r} is not open")
        return self._pool

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=60,
                reset=_keep_session,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self!r} (EVENTIDE_DATABASE_URL): {exc}"
            ) from exc
        async with self.pool.acquire() as conn, conn.transaction():
            # Several processes may start at once: create the schema one at a time.
            await conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, -1)")
            for statement in SCHEMA:
                await conn.execute(statement)

    async def listen(self, on_commit: Callable[[], None]) -> None:
        """Call ``on_commit`` when an API that notifies (its relay runs
        elsewhere) commits commands; on a connection of its own. Lost with
        that connection: the relay's polling still finds every row."""
        if self._listener is not None:
            return
        try:
            conn = await asyncpg.connect(self._url)
            await conn.add_listener(CHANNEL, lambda *_: on_commit())
        except (OSError, asyncpg.PostgresError) as exc:
            logger.warning("cannot LISTEN %s on %r (%s); polling only", CHANNEL, self, exc)
            return
        conn.add_termination_listener(
            lambda _: logger.warning("LISTEN %s connection lost; polling only", CHANNEL)
        )
        self._listener = conn

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=5)
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def execute(
        self,
        stream: str,
        topic: str,
        decide: Decider,
        idempotency: IdempotencyKey | None,
        expect_new: bool = False,
    ) -> CommandOutcome:
        try:
            if idempotency is None:
                outcome = await self._execute_grouped(stream, topic, decide, expect_new)
                if outcome is not None:
                    return outcome
            self._histories.pop(stream, None)
            async with self.pool.acquire() as conn, conn.transaction():
                return await self._execute(conn, stream, topic, decide, idempotency)
        except asyncpg.UniqueViolationError as exc:
            self._histories.pop(stream, None)  # the cached history was stale
            raise ConcurrencyError(f"{stream}: another command committed first ({exc})") from exc
        except (OSError, asyncpg.PostgresConnectionError) as exc:
            self._histories.pop(stream, None)  # did the append commit? Read it next time.
            raise StoreError(f"PostgreSQL {self!r}: {exc}") from exc
        except BaseException:
            self._histories.pop(stream, None)
            raise

    async def _execute_grouped(
        self, stream: str, topic: str, decide: Decider, expect_new: bool
    ) -> CommandOutcome | None:
        """The fast path: read the history (unless cached), decide, and append
        the event with the commands decided meanwhile (:meth:`_append`).
        None when the decision has several events (they need a transaction).

        The history of an entity this process appended to last is taken from
        a cache: events are immutable and numbered, so if the database holds
        more of them than the cache, appending number ``len(cached) + 1``
        fails on the ``(stream, seq)`` key, the entry is dropped and the
        command is retried against the events read from the database."""
        history: tuple[Envelope, ...] | None = () if expect_new else self._histories.get(stream)
        if history is None:
            rows = await self.pool.fetch(EVENTS_OF, stream)
            decode = self.codec.decode_json
            history = tuple(decode(r[0]) for r in rows)
        decision = decide(list(history))
        if len(decision.events) != 1:
            return None
        event = decision.events[0]
        await self._append(stream, len(history) + 1, event, topic)
        cache = self._histories
        cache[stream] = (*history, event)
        cache.move_to_end(stream)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return CommandOutcome(201, answer(decision))

    async def _append(self, stream: str, seq: int, event: Envelope, topic: str) -> None:
        """Append one event and its outbox row; returns once committed.

        Group commit: appends queued while a group's statement is in flight
        go together in the next one (one statement, one commit, one round
        trip). Raises :class:`ConcurrencyError` when event ``seq`` of the
        stream exists already: that command alone wrote nothing."""
        key = key_of(event)
        value = self.codec.encode_json(event)
        row = (stream, seq, event.id, event.name, value, topic, key, shard_of(key))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._appends.append((row, future))
        if not self._appending:
            self._appending = True
            asyncio.get_running_loop().create_task(self._append_groups())
        await future

    async def _append_groups(self) -> None:
        try:
            while self._appends:
                group = self._appends[:MAX_GROUP]
                del self._appends[:MAX_GROUP]
                columns = [list(column) for column in zip(*(row for row, _ in group), strict=True)]
                try:
                    rows = await self.pool.fetch(self._append_sql, *columns, time.time())
                    appended = {r[0] for r in rows}
                except BaseException as exc:
                    for _, future in group:
                        if not future.done():
                            error = StoreError(f"PostgreSQL {self!r}: {type(exc).__name__}: {exc}")
                            error.__cause__ = exc
                            future.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for row, future in group:
                    if future.done():
                        continue
                    if row[2] in appended:
                        future.set_result(None)
                    else:
                        future.set_exception(
                            ConcurrencyError(
                                f"{row[0]}: event {row[1]} was appended first by another command"
                            )
                        )
        finally:
            self._appending = False

    async def _execute(
        self,
        conn: Any,
        stream: str,
        topic: str,
        decide: Decider,
        idem: IdempotencyKey | None,
    ) -> CommandOutcome:
        now = time.time()
        if idem is not None:
            # Claim the key first: a concurrent request with the same key waits
            # here until this transaction ends, then finds its stored answer.
            inserted = await conn.execute(
                "INSERT INTO idempotency (key, fingerprint, status, body, created_at)"
                " VALUES ($1, $2, 0, ''::bytea, $3) ON CONFLICT (key) DO NOTHING",
                idem.key,
                idem.fingerprint,
                now,
            )
            if inserted == "INSERT 0 0":
                row = await conn.fetchrow(
                    "SELECT fingerprint, status, body FROM idempotency WHERE key = $1", idem.key
                )
                if row["fingerprint"] != idem.fingerprint:
                    raise IdempotencyKeyReusedError(
                        f"Idempotency-Key {idem.key!r} was first used with another request; "
                        "send a new key for a new request"
                    )
                return CommandOutcome(row["status"], orjson.loads(row["body"]), replayed=True)
        rows = await conn.fetch(EVENTS_OF, stream)
        history = [self.codec.decode_json(r["body"]) for r in rows]
        decision = decide(history)
        for seq, event in enumerate(decision.events, start=len(history) + 1):
            key = key_of(event)
            await conn.execute(
                APPEND,
                stream,
                seq,
                event.id,
                event.name,
                self.codec.encode_json(event),
                now,
                topic,
                key,
                shard_of(key),
            )
        body = answer(decision)
        if idem is not None:
            await conn.execute(
                "UPDATE idempotency SET status = $2, body = $3 WHERE key = $1",
                idem.key,
                201,
                orjson.dumps(body),
            )
        return CommandOutcome(201, body)

    async def load_stream(self, stream: str) -> list[Envelope]:
        rows = await self.pool.fetch(
            "SELECT body FROM events WHERE stream = $1 ORDER BY seq", stream
        )
        return [self.codec.decode_json(r["body"]) for r in rows]

    @asynccontextmanager
    async def claim(
        self, relay_id: str, limit: int, exclude: frozenset[int] = frozenset()
    ) -> AsyncIterator[Claim]:
        async with self.pool.acquire() as conn:
            await conn.execute("BEGIN")
            try:
                locked = await conn.fetch(
                    LOCK_SHARDS, SHARDS, LOCK_CLASS, SHARDS_PER_CLAIM, list(exclude)
                )
                shards = [r["shard"] for r in locked]
                # A new statement, so a new snapshot: it sees every row that the
                # previous holder of these locks marked before it let them go.
                rows = await conn.fetch(PENDING, shards, limit) if shards else []
                claim = Claim([OutboxRow(*r) for r in rows], frozenset(shards))
                yield claim
                # The marks and the commit in one round trip (simple query
                # protocol, so literals: the ids are the table's integers).
                mark = ""
                if claim.published:
                    ids = ",".join(str(int(i)) for i in claim.published)
                    mark = (
                        f"UPDATE outbox SET published_at = {time.time()!r}"
                        f" WHERE id = ANY('{{{ids}}}'::bigint[]); "
                    )
                await conn.execute(mark + "COMMIT")
            except BaseException:
                # Keep the original error; a broken connection rolls back anyway.
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                raise

    async def release(self, relay_id: str) -> None:
        """Nothing to do: advisory locks end with each claim's transaction."""

    async def cleanup(self, older_than: float) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1",
                older_than,
            )
            await conn.execute("DELETE FROM idempotency WHERE created_at < $1", older_than)
        return int(status.split()[-1])

    async def pending_count(self) -> int:
        return int(
            await self.pool.fetchval("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        )

    async def outbox_counts(self) -> dict[str, int]:
        row = await self.pool.fetchrow(
            "SELECT COUNT(*) - COUNT(published_at) AS pending, COUNT(published_at) AS published"
            " FROM outbox"
        )
        return {"pending": row["pending"], "published": row["published"]}


async def _keep_session(conn: Any) -> None:
    """Skip asyncpg's reset round trip on every release: this store leaves no
    session state behind (only transaction-scoped locks, no LISTEN, no cursors)."""
