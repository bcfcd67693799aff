"""Failure routing: retry topics with backoff, dead-letter topics, per-key order.

Every source topic ``T`` has ``T.retry`` and ``T.dlq`` (same partitions, same
keys). Per record:

- a decode or validation error (:class:`~schemas.exceptions.EventError`) sends
  the record to ``T.dlq`` at once: retrying cannot help. So does a record with
  no Kafka key or a key that is not its event's entity id, which every
  projection checks (:class:`~streams.exceptions.RecordKeyError`): applied, it
  would land in a partition that does not own the entity;
- any other exception from a projection (a *handler failure*) sends it to
  ``T.retry`` with attempt 1 and a not-before time (exponential backoff with
  jitter); the engine consumes ``T.retry`` like ``T`` but holds each record
  until its time; after ``retry_attempts`` failed attempts the record goes to
  ``T.dlq``.

**Per-key order (the default).** While a record of key *K* waits in retry,
later records of *K* are *parked*: sent to ``T.retry`` behind it instead of
being applied. Each record of *K* that enters the retry topic gets a sequence
number; the retry path applies *K*'s records strictly in sequence order,
re-parks one that arrives out of turn, and drops a stale copy (a sequence
number already passed, left by a crash between send and commit). The state
``{next, head, count}`` lives in the projection's store under a meta key,
written in the batch's transaction, so it survives crashes and rebalances.
Other keys keep flowing. A projection with ``ordered_retries = False`` retries
records independently and parks nothing.

A dead-letter record keeps the original key, value and headers and adds
``dlq-origin-topic``, ``dlq-origin-partition``, ``dlq-origin-offset``,
``dlq-error-class``, ``dlq-error-message``, ``dlq-attempts``,
``dlq-first-failure`` and ``dlq-last-failure`` (ms since the epoch).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.exceptions import EventError

from .exceptions import RecordKeyError

logger = logging.getLogger(__name__)

RETRY_SUFFIX = ".retry"
DLQ_SUFFIX = ".dlq"
STATE_PREFIX = b"\x00retry:"

# Headers of a record in a retry topic (removed again before dead-lettering).
H_SEQ = "x-eventide-seq"
H_ATTEMPT = "x-eventide-attempt"
H_NOT_BEFORE = "x-eventide-not-before"
H_TOPIC = "x-eventide-origin-topic"
H_PARTITION = "x-eventide-origin-partition"
H_OFFSET = "x-eventide-origin-offset"
H_FIRST = "x-eventide-first-failure"
H_ERROR = "x-eventide-error"
H_PROJECTION = "x-eventide-projection"
RETRY_HEADERS = frozenset(
    {H_SEQ, H_ATTEMPT, H_NOT_BEFORE, H_TOPIC, H_PARTITION, H_OFFSET, H_FIRST, H_ERROR, H_PROJECTION}
)

DLQ_HEADERS = (
    "dlq-origin-topic",
    "dlq-origin-partition",
    "dlq-origin-offset",
    "dlq-error-class",
    "dlq-error-message",
    "dlq-attempts",
    "dlq-first-failure",
    "dlq-last-failure",
    "dlq-projection",
)


def dead_letter_headers(
    record: Any, exc: BaseException, attempts: int, first: int, now: int
) -> list[tuple[str, bytes]]:
    """The headers of ``record`` dead-lettered for ``exc``: its own (retry headers
    removed), where it came from and why (the ``dlq-*`` headers above)."""
    headers = [(k, v) for k, v in record.headers if k not in RETRY_HEADERS]
    headers += [
        ("dlq-origin-topic", record.topic.encode()),
        ("dlq-origin-partition", str(record.partition).encode()),
        ("dlq-origin-offset", str(record.offset).encode()),
        ("dlq-error-class", type(exc).__name__.encode()),
        ("dlq-error-message", str(exc)[:2000].encode(errors="replace")),
        ("dlq-attempts", str(attempts).encode()),
        ("dlq-first-failure", str(first or now).encode()),
        ("dlq-last-failure", str(now).encode()),
    ]
    return headers


def retry_topic(topic: str) -> str:
    """The retry topic of a source topic."""
    return topic + RETRY_SUFFIX


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of a source topic."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed record is tried again."""

    attempts: int = 5
    """Attempts in the retry topic before the record is dead-lettered."""
    backoff_ms: int = 500
    """Delay before the first retry; doubles with each attempt."""
    backoff_max_ms: int = 60_000
    """Upper bound of the delay."""
    jitter: float = 0.2
    """Random spread of each delay, as a fraction of it."""

    def delay_ms(self, attempt: int) -> int:
        """Delay before ``attempt`` (1-based), with jitter."""
        base = min(self.backoff_max_ms, self.backoff_ms * 2 ** (attempt - 1))
        return int(base * (1 + random.uniform(-self.jitter, self.jitter)))


class Origin(NamedTuple):
    """A record as the projection sees it: a retried record shows where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp: int
    retry: RetryMeta | None = None


@dataclass
class RetryMeta:
    """What a record in a retry topic carries about its failures."""

    seq: int
    attempt: int
    not_before: int
    first_failure: int
    error: str

    @classmethod
    def of(cls, headers: Sequence[tuple[str, bytes]]) -> RetryMeta:
        h = dict(headers)
        return cls(
            seq=int(h.get(H_SEQ, b"0")),
            attempt=int(h.get(H_ATTEMPT, b"0")),
            not_before=int(h.get(H_NOT_BEFORE, b"0")),
            first_failure=int(h.get(H_FIRST, b"0")),
            error=h.get(H_ERROR, b"").decode(errors="replace"),
        )


def origin_of(record: Any, meta: RetryMeta | None = None) -> Origin:
    """The original record behind a retry-topic record (its own headers stripped)."""
    h = dict(record.headers)
    return Origin(
        topic=h[H_TOPIC].decode(),
        partition=int(h[H_PARTITION]),
        offset=int(h[H_OFFSET]),
        key=record.key,
        value=record.value,
        headers=tuple((k, v) for k, v in record.headers if k not in RETRY_HEADERS),
        timestamp=record.timestamp,
        retry=meta,
    )


class Outcome(StrEnum):
    """What happened to one record (its value is also the metrics label)."""

    APPLIED = "applied"
    INVALID = "dead_lettered_invalid"
    BAD_KEY = "dead_lettered_key"
    """No Kafka key, or not the entity id of the event (:class:`RecordKeyError`)."""
    DEAD = "dead_lettered"
    RETRIED = "retried"
    PARKED = "parked"
    STALE = "stale_retry_copy"
    WAIT = "wait"


Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], None]


class FailureRouter:
    """Applies records through a projection and routes the ones that fail."""

    def __init__(self, policy: RetryPolicy, now_ms: Callable[[], int] | None = None) -> None:
        self.policy = policy
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._invalid: set[tuple[str, int, int]] = set()
        self._table = ""  # the projection being served (records go to its retry lane)

    def begin_batch(self) -> None:
        """Forget which records this batch dead-lettered as invalid.

        A topic may feed several projections; an undecodable record fails in
        each of them but is dead-lettered once.
        """
        self._invalid.clear()

    # -- entry points ------------------------------------------------------

    def handle(self, projection: Any, ctx: Any, record: Any, from_retry: bool) -> Outcome:
        """Apply ``record`` (from a source or a retry topic); route it if it fails."""
        self._table = projection.table
        if from_retry:
            return self._handle_retry(projection, ctx, record)
        ordered = projection.ordered_retries and record.key is not None
        if ordered and ctx.tx.may_have(STATE_PREFIX):
            state = ctx.tx.get(STATE_PREFIX + record.key)
            if state:  # an earlier record of this key waits in retry: queue behind it
                self._to_retry(ctx, record, seq=state["next"], attempt=0, error="", first=0)
                ctx.tx.set(
                    STATE_PREFIX + record.key,
                    {**state, "next": state["next"] + 1, "count": state["count"] + 1},
                )
                return Outcome.PARKED
        try:
            projection.apply(ctx, record)
            return Outcome.APPLIED
        except EventError as exc:
            self.dead_letter(ctx, record, exc, attempts=0, first=self.now_ms())
            return Outcome.BAD_KEY if isinstance(exc, RecordKeyError) else Outcome.INVALID
        except Exception as exc:
            return self.failed(projection, ctx, record, exc)

    def failed(self, projection: Any, ctx: Any, record: Any, exc: BaseException) -> Outcome:
        """Route a source record whose handler failed: retry topic, attempt 1."""
        self._table = projection.table
        now = self.now_ms()
        seq = 0
        if projection.ordered_retries and record.key is not None:
            key = STATE_PREFIX + record.key
            state = ctx.tx.get(key) or {"next": 0, "head": 0, "count": 0}
            seq = state["next"]
            ctx.tx.set(key, {**state, "next": seq + 1, "count": state["count"] + 1})
        self._log("retry", record, exc, 1)
        self._to_retry(
            ctx,
            record,
            seq=seq,
            attempt=1,
            error=_describe(exc),
            first=now,
            not_before=now + self.policy.delay_ms(1),
        )
        return Outcome.RETRIED

    # -- retry topic -------------------------------------------------------

    def due_in_ms(self, record: Any) -> int:
        """Milliseconds until a retry-topic record may be tried (<= 0: now)."""
        return RetryMeta.of(record.headers).not_before - self.now_ms()

    def _handle_retry(self, projection: Any, ctx: Any, record: Any) -> Outcome:
        for k, v in record.headers:
            if k == H_PROJECTION and v != projection.table.encode():
                return Outcome.STALE  # another projection's retry
        meta = RetryMeta.of(record.headers)
        if meta.not_before > self.now_ms():
            return Outcome.WAIT
        origin = origin_of(record, meta)
        key = origin.key
        state = None
        if projection.ordered_retries and key is not None:
            state = ctx.tx.get(STATE_PREFIX + key)
            if state is None or meta.seq < state["head"]:
                return Outcome.STALE
            if meta.seq > state["head"]:  # out of turn: back of the queue
                self._resend(ctx, origin, meta, attempt=meta.attempt, not_before=0)
                return Outcome.PARKED
        try:
            projection.apply(ctx, origin)
            outcome = Outcome.APPLIED
        except EventError as exc:
            self.dead_letter(ctx, origin, exc, attempts=meta.attempt, first=meta.first_failure)
            outcome = Outcome.BAD_KEY if isinstance(exc, RecordKeyError) else Outcome.INVALID
        except Exception as exc:
            return self.retry_failed(projection, ctx, origin, meta, exc)
        if state is not None and key is not None:
            self._advance(ctx, key, state)
        return outcome

    def retry_failed(
        self, projection: Any, ctx: Any, origin: Origin, meta: RetryMeta, exc: BaseException
    ) -> Outcome:
        """A retried record failed again: next attempt, or the DLQ after the last."""
        self._table = projection.table
        attempt = meta.attempt + 1
        first = meta.first_failure or self.now_ms()
        if attempt > self.policy.attempts:
            self.dead_letter(ctx, origin, exc, attempts=meta.attempt, first=first)
            if projection.ordered_retries and origin.key is not None:
                state = ctx.tx.get(STATE_PREFIX + origin.key)
                if state is not None:
                    self._advance(ctx, origin.key, state)
            return Outcome.DEAD
        self._log("retry", origin, exc, attempt)
        meta = RetryMeta(meta.seq, attempt, 0, first, _describe(exc))
        self._resend(
            ctx,
            origin,
            meta,
            attempt=attempt,
            not_before=self.now_ms() + self.policy.delay_ms(attempt),
        )
        return Outcome.RETRIED

    def _advance(self, ctx: Any, key: bytes, state: dict[str, int]) -> None:
        count = state["count"] - 1
        ctx.tx.set(
            STATE_PREFIX + key,
            None if count <= 0 else {**state, "head": state["head"] + 1, "count": count},
        )

    # -- sending -----------------------------------------------------------

    def dead_letter(
        self, ctx: Any, record: Any, exc: BaseException, attempts: int, first: int
    ) -> None:
        """Send the original record to its topic's DLQ with the failure's headers."""
        if isinstance(exc, EventError):
            where = (record.topic, record.partition, record.offset)
            if where in self._invalid:
                return
            self._invalid.add(where)
            logger.warning(
                "skipped bad record %s[%d]@%d: %s: %s (sent to %s)",
                record.topic,
                record.partition,
                record.offset,
                type(exc).__name__,
                exc,
                dlq_topic(record.topic),
            )
        else:
            self._log("dead-letter", record, exc, attempts)
        headers = dead_letter_headers(record, exc, attempts, first, self.now_ms())
        if not isinstance(exc, EventError):
            headers.append(("dlq-projection", self._table.encode()))
        ctx.send(dlq_topic(record.topic), record.key, record.value, headers, record.partition)

    def _to_retry(
        self,
        ctx: Any,
        record: Any,
        seq: int,
        attempt: int,
        error: str,
        first: int,
        not_before: int = 0,
    ) -> None:
        headers = [(k, v) for k, v in record.headers if k not in RETRY_HEADERS]
        headers += [
            (H_TOPIC, record.topic.encode()),
            (H_PARTITION, str(record.partition).encode()),
            (H_OFFSET, str(record.offset).encode()),
            (H_SEQ, str(seq).encode()),
            (H_ATTEMPT, str(attempt).encode()),
            (H_NOT_BEFORE, str(not_before).encode()),
            (H_FIRST, str(first).encode()),
            (H_ERROR, error.encode(errors="replace")),
            (H_PROJECTION, self._table.encode()),
        ]
        ctx.send(retry_topic(record.topic), record.key, record.value, headers, record.partition)

    def _resend(
        self, ctx: Any, origin: Origin, meta: RetryMeta, attempt: int, not_before: int
    ) -> None:
        self._to_retry(
            ctx,
            origin,
            seq=meta.seq,
            attempt=attempt,
            error=meta.error,
            first=meta.first_failure,
            not_before=not_before,
        )

    def _log(self, what: str, record: Any, exc: BaseException, attempt: int) -> None:
        h = dict(record.headers)
        logger.warning(
            "%s %s[%d]@%d (event %s, correlation %s, attempt %d): %s",
            what,
            record.topic,
            record.partition,
            record.offset,
            h.get("event-id", b"?").decode(errors="replace"),
            h.get("correlation-id", b"?").decode(errors="replace"),
            attempt,
            _describe(exc),
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
