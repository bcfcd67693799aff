"""Commands → one outbox transaction each, retried when another command on the
same entity committed first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from schemas.envelope import Envelope
from schemas.exceptions import PersonalDataError
from schemas.registry import Registry
from streams.catalogue import ORDER_EVENTS, USER_EVENTS, TopicSpec
from streams.keys import KeyStore, PersonalFields
from streams.settings import Settings

from .aggregate import CommandMeta, Decision, create_user, place_order, stream_of
from .exceptions import ConcurrencyError, ConflictError, StoreError
from .store import CommandOutcome, IdempotencyKey, OutboxStore

logger = logging.getLogger(__name__)

TOPIC_OF_KIND: dict[str, TopicSpec] = {"order": ORDER_EVENTS, "user": USER_EVENTS}
ATTEMPTS = 10
CREATES = frozenset({place_order, create_user})
"""Deciders of commands that create their entity: tried without reading a history."""

Decider = Callable[[list[Envelope], dict[str, Any], CommandMeta], Decision]

ENCRYPTED: dict[Decider, str] = {create_user: "user.created"}
"""Deciders whose command data carries the personal fields of this event, keyed
by a customer id (the entity's): encrypted before the decider sees them."""


class CommandService:
    """Runs deciders in the outbox store; tells the relay after every commit."""

    def __init__(
        self,
        settings: Settings,
        store: OutboxStore,
        on_commit: Callable[[], None] | None = None,
        keys: KeyStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_commit = on_commit
        self.keys = keys
        """Customers' data keys; None: personal fields are written in clear."""
        self.personal = PersonalFields(Registry.load()) if keys is not None else None

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
        event_name = ENCRYPTED.get(decider)
        if event_name is not None:
            data = await self._encrypt(event_name, entity_id, data)
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

    async def _encrypt(
        self, event_name: str, customer_id: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        """``data`` with its personal fields encrypted with the customer's data key
        (created and published to the keys topic first when the customer has none)."""
        if self.keys is None or self.personal is None:
            return data
        try:
            await self.keys.wait_ready()
            if self.keys.ring.is_forgotten(customer_id):
                raise ConflictError(
                    f"customer {customer_id!r} was forgotten (eventide forget): use a new id"
                )
            key = await self.keys.key_for(customer_id)
        except PersonalDataError as exc:
            raise StoreError(
                f"cannot encrypt the personal data of customer {customer_id!r}: {exc}"
            ) from exc
        return self.personal.encrypt(key, event_name, data)
