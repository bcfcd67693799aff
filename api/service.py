"""Commands → one outbox transaction each, retried when another command on the
same entity committed first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from schemas.envelope import Envelope
from streams.catalogue import ORDER_EVENTS, USER_EVENTS, TopicSpec
from streams.settings import Settings

from .aggregate import CommandMeta, Decision, create_user, place_order, stream_of
from .exceptions import ConcurrencyError
from .store import CommandOutcome, IdempotencyKey, OutboxStore

logger = logging.getLogger(__name__)

TOPIC_OF_KIND: dict[str, TopicSpec] = {"order": ORDER_EVENTS, "user": USER_EVENTS}
ATTEMPTS = 10
CREATES = frozenset({place_order, create_user})
"""Deciders of commands that create their entity: tried without reading a history."""

Decider = Callable[[list[Envelope], dict[str, Any], CommandMeta], Decision]


class CommandService:
    """Runs deciders in the outbox store; tells the relay after every commit."""

    def __init__(
        self,
        settings: Settings,
        store: OutboxStore,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_commit = on_commit

    async def handle(
        self,
        kind: str,
        entity_id: str,
        decider: Decider,
        data: dict[str, Any],
        meta: CommandMeta,
        idempotency: IdempotencyKey | None = None,
    ) -> CommandOutcome:
        """Decide and commit one command; the answer to give the client."""
        stream = stream_of(kind, entity_id)
        topic = self.settings.topic(TOPIC_OF_KIND[kind].name)
        expect_new = decider in CREATES
        for attempt in range(1, ATTEMPTS + 1):
            try:
                outcome = await self.store.execute(
                    stream,
                    topic,
                    lambda history: decider(history, data, meta),
                    idempotency,
                    expect_new=expect_new,
                )
            except ConcurrencyError:
                if expect_new:
                    # The entity exists after all: decide against its events
                    # (the decider answers 409), at once.
                    expect_new = False
                    continue
                if attempt == ATTEMPTS:
                    raise
                logger.debug("%s: concurrent command, attempt %d", stream, attempt)
                await asyncio.sleep(0.001 * attempt)
                continue
            if not outcome.replayed and self.on_commit is not None:
                self.on_commit()
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover
