"""The outbox store contract: commands in one transaction, rows claimed by one relay.

Ordering and exclusivity guarantees every implementation gives:

- :meth:`OutboxStore.execute` runs the decider against the entity's events and
  writes the new events (the domain rows of an event-sourced entity), their
  outbox rows and the idempotency answer in ONE transaction. A decider that
  raises, or a transaction that does not commit, leaves no outbox row, so
  nothing is published for it.
- Outbox row ids grow in commit order per entity: an entity's events are
  claimed in the order they were appended.
- :meth:`OutboxStore.claim` hands rows to one relay at a time: while a claim is
  open, no other relay (in this or another process) is given rows of the same
  entity. Rows marked with :meth:`Claim.mark_published` are recorded when the
  claim closes; rows not marked are claimed again later (published again, with
  the same event id, if they had reached Kafka).
"""

from __future__ import annotations

import hashlib
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from schemas.codecs import EventCodec
from schemas.envelope import Envelope

from ..aggregate import Decision

SHARDS = 16
"""Outbox rows are spread over this many shards by key; a relay claims whole shards."""

Decider = Callable[[list[Envelope]], Decision]
"""Given an entity's events (oldest first), the decision of a command, or an ApiError."""


def shard_of(key: str) -> int:
    """The shard of an outbox row: every event of one entity lands in the same shard."""
    return zlib.crc32(key.encode()) % SHARDS


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What identifies a request for idempotency: method, path and body."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class IdempotencyKey:
    """An ``Idempotency-Key`` header and the request it came with."""

    key: str
    """The header's value, chosen by the client."""
    fingerprint: str
    """:func:`fingerprint` of the request; a reuse with another request is refused."""


@dataclass(frozen=True)
class CommandOutcome:
    """The answer to a command, as first given (and replayed to retries)."""

    status: int
    """HTTP status: 201 for an accepted command."""
    body: dict[str, Any]
    """The JSON answer, with eventId and correlationId."""
    replayed: bool = False
    """True when this is the stored answer to an earlier request with the same key."""


@dataclass(frozen=True)
class OutboxRow:
    """One event waiting to be published."""

    id: int
    """Position in the outbox; increases in append order."""
    event_id: str
    """The envelope's id (duplicates after a crash carry the same one)."""
    topic: str
    """Full topic name, prefix included."""
    key: str
    """Kafka key: the entity id."""
    value: bytes
    """The JSON envelope, as :meth:`~schemas.codecs.EventCodec.encode_json` wrote it."""
    created_at: float
    """Unix time the command's transaction wrote the row."""


@dataclass
class Claim:
    """Rows handed to one relay; what it marks is recorded when the claim closes."""

    rows: list[OutboxRow]
    """Unpublished rows, in outbox order."""
    shards: frozenset[int] = frozenset()
    """Shards this claim holds (PostgreSQL); no other claim gets their rows."""
    published: list[int] = field(default_factory=list)
    """Ids the relay has seen acknowledged by Kafka."""

    def mark_published(self, ids: list[int]) -> None:
        """Record rows as published (applied when the claim closes)."""
        self.published.extend(ids)


def answer(decision: Decision) -> dict[str, Any]:
    """The JSON answer to an accepted command: the decider's body plus event ids."""
    last = decision.events[-1]
    return {**decision.body, "eventId": last.id, "correlationId": last.correlation_id}


class OutboxStore(ABC):
    """A database holding the event store, the outbox and idempotency answers."""

    kind: str = "?"
    codec: EventCodec
    """Encodes the events appended (the JSON form, checked against the schema registry)
    and decodes the events read back; the relay reads the outbox rows with it too."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if missing (safe from several processes)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def execute(
        self,
        stream: str,
        topic: str,
        decide: Decider,
        idempotency: IdempotencyKey | None,
        expect_new: bool = False,
    ) -> CommandOutcome:
        """Run a command in one transaction (see the module docstring).

        ``expect_new``: the command creates the entity, so its history is most
        likely empty; a store may then decide against no events without reading
        them, provided that appending event number 1 fails with
        :class:`~api.exceptions.ConcurrencyError` when the stream already has
        one (the caller then retries with ``expect_new=False``).

        With an idempotency key already stored for the same request, return its
        stored answer (``replayed=True``) and write nothing; for another request
        raise :class:`~api.exceptions.IdempotencyKeyReusedError`. Raises
        :class:`~api.exceptions.ConcurrencyError` when another transaction
        appended to the same stream first (the caller retries).
        """

    parallel_claims: int = 1
    """Claims one relay may hold at once (each on its own shards)."""

    @abstractmethod
    def claim(
        self, relay_id: str, limit: int, exclude: frozenset[int] = frozenset()
    ) -> AbstractAsyncContextManager[Claim]:
        """Up to ``limit`` unpublished rows for this relay alone, oldest first;
        ``exclude``: shards the relay's other open claims hold."""

    async def listen(self, on_commit: Callable[[], None]) -> None:
        """Have ``on_commit`` called when another process commits commands
        (a hint to publish now; by default none comes and relays poll)."""
        del on_commit

    @abstractmethod
    async def release(self, relay_id: str) -> None:
        """Give up anything this relay holds so another can take over at once."""

    @abstractmethod
    async def cleanup(self, older_than: float) -> int:
        """Delete rows published, and idempotency answers stored, before that Unix time."""

    @abstractmethod
    async def load_stream(self, stream: str) -> list[Envelope]:
        """An entity's events from the event store, oldest first."""

    @abstractmethod
    async def pending_count(self) -> int:
        """Unpublished rows (cheap: the pending index only)."""

    @abstractmethod
    async def outbox_counts(self) -> dict[str, int]:
        """``{"pending": n, "published": n}``: rows waiting and rows kept after publishing."""
