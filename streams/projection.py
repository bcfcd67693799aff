"""Projections: how a read model is declared, and what it may touch per record.

A projection is declared in one place, the way a Faust user declares an agent:
one decorated class naming its source topics, its table and its outputs::

    @projection("orders", sources=(ORDER_EVENTS,), outputs=(ORDER_VIEWS, CUSTOMER_FACTS),
                query=Query("orders", "orderId"))
    class OrdersProjection(Projection):
        def apply(self, ctx: BatchContext, record) -> None: ...

The app factory builds the projections listed in ``agents.PROJECTIONS`` that
``EVENTIDE_PROJECTIONS`` selects; the engine creates their changelog topics,
``eventide rebuild`` and the HTTP views find them by their declared name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from schemas.codecs import EventCodec
from schemas.personal import KeyRing
from tables.transaction import Transaction

from .catalogue import TopicSpec, changelog_spec

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord
from .settings import Settings


@dataclass(frozen=True)
class Query:
    """How a projection's table is queried over HTTP: ``GET /<path>/{id}``."""

    path: str
    """First path segment, e.g. ``orders`` for ``GET /orders/{orderId}``."""
    id_field: str
    """Name of the id in answers and errors, e.g. ``orderId``."""


@dataclass(frozen=True)
class ProjectionSpec:
    """The declaration of a projection (see :func:`projection`)."""

    name: str
    """The projection's and its table's name (EVENTIDE_PROJECTIONS, ``eventide rebuild``)."""
    sources: tuple[TopicSpec, ...]
    """Co-partitioned source topics, all keyed by the table's key."""
    outputs: tuple[TopicSpec, ...] = ()
    """Topics the projection emits to (``ctx.emit``)."""
    query: Query | None = None
    """Its HTTP query route, if its table is served."""
    query_topic: TopicSpec | None = None
    """The source whose partitioning decides who owns a key (default: the first)."""
    ordered_retries: bool = True
    """While a record waits in retry, later records of its key wait behind it."""
    rebuildable: bool = True
    """Whether ``eventide rebuild`` may replay the sources into a fresh table."""
    changelog: TopicSpec | None = None
    """A compacted topic of the catalogue that doubles as the table's changelog
    (its data records are the published change stream); None: a changelog topic
    of the table's own."""

    @property
    def owner(self) -> TopicSpec:
        """The source topic whose partitioning decides who owns a key."""
        return self.query_topic or self.sources[0]


P = TypeVar("P", bound="type[Projection]")


def projection(
    name: str,
    *,
    sources: tuple[TopicSpec, ...],
    outputs: tuple[TopicSpec, ...] = (),
    query: Query | None = None,
    query_topic: TopicSpec | None = None,
    ordered_retries: bool = True,
    rebuildable: bool = True,
    changelog: TopicSpec | None = None,
) -> Callable[[P], P]:
    """Declare a :class:`Projection` subclass: its name, sources, outputs and query."""
    spec = ProjectionSpec(
        name, sources, outputs, query, query_topic, ordered_retries, rebuildable, changelog
    )

    def declare(cls: P) -> P:
        cls.spec = spec
        return cls

    return declare


@dataclass
class BatchContext:
    """What a projection may touch while it applies one record."""

    tx: Transaction
    """The partition's transaction for this batch."""
    outputs: dict[tuple[str, bytes], tuple[bytes, Any]] = field(default_factory=dict)
    """(topic, dedupe id) → (key, value) to emit after the batch; last write wins."""

    def emit(self, topic: str, key: bytes, value: Any, dedupe: bytes | None = None) -> None:
        """Emit ``value`` under ``key`` on ``topic`` with the batch's other records.

        Within one batch only the last value per ``(topic, dedupe)`` is sent
        (``dedupe`` defaults to the key): a read model emits its net change.
        ``value`` is bytes, or a JSON-serialisable document encoded once, when
        the batch is sent (a value overwritten within the batch is never encoded).
        """
        self.outputs[(topic, key if dedupe is None else dedupe)] = (key, value)

    sends: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], int]] = field(
        default_factory=list
    )
    """Records for retry and dead-letter topics: (topic, key, value, headers, partition)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int,
    ) -> None:
        """Send a record with the batch (every one is sent, in order)."""
        self.sends.append((topic, key, value, headers, partition))


class Projection(ABC):
    """A read model fed by co-partitioned source topics.

    Declare a subclass with :func:`projection`, which names its sources, table
    and outputs; the engine builds it with ``(settings, codec)``.

    Ordering guarantee: :meth:`apply` is called for the records of one source
    partition in offset order, never concurrently; records of different
    partitions may interleave between batches.
    """

    spec: ClassVar[ProjectionSpec]
    """The declaration (set by :func:`projection`)."""

    keys: KeyRing | None = None
    """Customers' data keys (schemas/personal.py), set by the app factory: what
    :meth:`view` and side effects decrypt personal fields with, never :meth:`apply`
    (stores and changelogs keep the ciphertext). None: values are shown as stored."""

    def __init__(self, settings: Settings, codec: EventCodec) -> None:
        spec = type(self).spec
        self.codec = codec
        """Decodes the source records (registry-checked, limits applied)."""
        self.table = spec.name
        """Name of the table (its store folder and changelog topic derive from it)."""
        self.sources = tuple(settings.topic(t.name) for t in spec.sources)
        """Full names of the source topics; all have the same partition count."""
        self.query_topic = settings.topic(spec.owner.name)
        """The source topic whose key partitioning decides which worker owns a key."""
        self.outputs = {t.name: settings.topic(t.name) for t in spec.outputs}
        """Catalogue name → full name of each topic the projection emits to."""
        self.changelog_spec = changelog_spec(settings, spec.name, spec.changelog)
        """The table's changelog topic (name without the prefix)."""
        self.changelog = settings.topic(self.changelog_spec.name)
        """Full name of the table's changelog topic."""
        self.ordered_retries = spec.ordered_retries
        """While a record waits in retry, later records of its key wait behind it
        (streams/failures.py); False retries records independently."""
        self.rebuildable = spec.rebuildable
        """``eventide rebuild`` may replay the sources into a fresh copy of the table
        (streams/rebuild.py): the table is a pure function of the source records,
        kept by :meth:`apply` alone. False for a projection with side effects."""

    @abstractmethod
    def apply(self, ctx: BatchContext, record: ConsumerRecord[bytes, bytes]) -> None:
        """Apply one record.

        Raise :class:`~schemas.exceptions.EventError` for bad input (the record
        goes to the dead-letter topic at once); any other exception is a
        handler failure (the record goes to the retry topic with backoff, then
        to the dead-letter topic after the last attempt).
        """

    async def after_batch(
        self, ctx: BatchContext
    ) -> list[tuple[ConsumerRecord[bytes, bytes], BaseException]]:
        """Perform the batch's side effects, after every record is applied and
        before anything is made durable; return the records whose side effect
        failed (they are retried like records whose :meth:`apply` raised).

        Default: no side effects.
        """
        return []

    def view(self, stored: Any) -> Any:
        """The document served over HTTP for a stored value (default: as stored)."""
        return stored

    async def close(self) -> None:
        """Release what the projection holds (sinks, connections) once the engine
        has completed its last batch. Default: nothing."""
        return None
