"""Publishing envelopes to Kafka: keyed, encoded by the codec, with the contract's headers,
acks=all."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ClusterAuthorizationFailedError, TopicAuthorizationFailedError

from schemas.codecs import EventCodec
from schemas.envelope import CONTENT_TYPE_JSON, Envelope

from .catalogue import key_of
from .exceptions import KafkaAuthorizationError
from .kafka_clients import aiokafka_options, explain
from .settings import Settings


class EventPublisher:
    """An idempotent producer of envelopes; use as ``async with EventPublisher(...)``.

    Events are encoded by ``codec`` (by default one under the settings' limits)
    in the form ``content_type`` names, JSON unless Avro is asked for: an
    event whose name and version have no schema raises
    :class:`~schemas.exceptions.EncodeError` before anything is sent.
    """

    def __init__(
        self,
        settings: Settings,
        codec: EventCodec | None = None,
        content_type: str = CONTENT_TYPE_JSON,
    ) -> None:
        self.settings = settings
        self.codec = codec if codec is not None else EventCodec(limits=settings.limits)
        self.content_type = content_type
        self._producer = AIOKafkaProducer(
            **aiokafka_options(settings),
            client_id=f"{settings.app_id}-publisher",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )

    async def __aenter__(self) -> EventPublisher:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def publish(self, topic: str, events: Iterable[Envelope]) -> int:
        """Send events keyed by entity id, in order per key; wait for all acks.

        Raises :class:`~streams.exceptions.KafkaAuthorizationError` when the
        broker's ACLs do not let this principal write ``topic``.
        """
        try:
            return await self._publish(topic, events)
        except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
            raise KafkaAuthorizationError(explain(exc, self.settings) or str(exc)) from exc

    async def _publish(self, topic: str, events: Iterable[Envelope]) -> int:
        codec, content_type = self.codec, self.content_type
        futures = [
            await self._producer.send(
                topic,
                codec.encode(e, content_type),
                key=key_of(e).encode(),
                headers=codec.headers(e, content_type),
            )
            for e in events
        ]
        for fut in futures:
            await fut
        return len(futures)
