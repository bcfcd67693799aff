"""Publishing envelopes to Kafka: keyed, with the contract's headers, acks=all."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from aiokafka import AIOKafkaProducer

from schemas.envelope import Envelope, encode_envelope

from .catalogue import key_of
from .settings import Settings


class EventPublisher:
    """An idempotent producer of envelopes; use as ``async with EventPublisher(...)``."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
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
        """Send events keyed by entity id, in order per key; wait for all acks."""
        futures = [
            await self._producer.send(
                topic, encode_envelope(e), key=key_of(e).encode(), headers=e.headers()
            )
            for e in events
        ]
        for fut in futures:
            await fut
        return len(futures)
