"""``eventide participant``: demo inventory, payment and shipment services.

Each consumes its command topic (``<service>-commands``, keyed by orderId) and
answers on ``saga-replies`` under the same key. A participant is idempotent by
command id: every command it applies is appended (and flushed) to its log of
applied commands, ``<EVENTIDE_PARTICIPANT_LOG_DIR>/<service>.jsonl``, before
its reply is sent; on start it reads that log back, so a redelivered command
(a resend by the saga, or a redelivery after a crash) is answered again with
the same reply (same reply id) and never applied twice.

Settings: EVENTIDE_PARTICIPANT_FAILURE_RATE (forward commands rejected, chosen
per command id), EVENTIDE_PARTICIPANT_LATENCY_MS, EVENTIDE_PARTICIPANT_NEVER_ANSWER
(forward commands are neither applied nor answered). Compensations always
succeed; one for a step the participant never applied is answered and logged
with ``"known": false`` (the saga should never send one).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.codecs import EventCodec
from schemas.envelope import Envelope
from schemas.exceptions import EventError
from streams.catalogue import SAGA_COMMAND_TOPICS, SAGA_REPLIES
from streams.kafka_clients import aiokafka_options
from streams.settings import Settings
from streams.topics import ensure_topics

logger = logging.getLogger(__name__)

SERVICES = tuple(SAGA_COMMAND_TOPICS)
"""inventory, payment, shipment."""
FORWARD = {
    "inventory.reserve": ("inventory.reserved", "inventory.rejected"),
    "payment.process": ("payment.processed", "payment.failed"),
    "shipment.create": ("shipment.created", "shipment.failed"),
}
"""forward command → (success reply, failure reply)."""
COMPENSATIONS = {
    "inventory.release": ("inventory.released", "reservationId"),
    "payment.refund": ("payment.refunded", "paymentId"),
    "shipment.cancel": ("shipment.cancelled", "shipmentId"),
}
"""compensation → (its acknowledgement, the id of what it undoes)."""
NAMESPACE = uuid.UUID("0b5e1a4c-9d57-4a53-8a46-6c0b7f3d2e19")


def fails(command_id: str, rate: float) -> bool:
    """Whether the command with this id is rejected at failure ``rate`` (stable per id)."""
    digest = hashlib.sha256(command_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < rate


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a participant's log of applied commands (a torn last line is skipped)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().splitlines():
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return entries


class Participant:
    """One service's command handling: decide, log, answer."""

    def __init__(self, settings: Settings, service: str, codec: EventCodec) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown participant {service!r}: one of {', '.join(SERVICES)}")
        self.settings = settings
        self.service = service
        self.codec = codec
        self.log_path = settings.participant_logs / f"{service}.jsonl"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.replies: dict[str, bytes | None] = {}
        """command id → the reply sent for it (None: applied, never answered)."""
        self.applied: dict[str, dict[str, Any]] = {}
        """What this participant did: forward command id → its result fields."""
        self.duplicates = 0
        """Commands received again and answered from the log."""
        for entry in read_log(self.log_path):
            self._remember(entry)

    def _remember(self, entry: dict[str, Any]) -> None:
        reply = entry.get("reply")
        self.replies[entry["commandId"]] = None if reply is None else orjson.dumps(reply)
        if entry.get("outcome") == "applied" and entry["name"] in FORWARD:
            self.applied[entry["orderId"]] = entry.get("result") or {}

    def handle(self, command: Envelope) -> tuple[bytes | None, bool]:
        """(reply to send or None, whether it was applied now) for one command."""
        if command.id in self.replies:
            self.duplicates += 1
            return self.replies[command.id], False
        name, data = command.name, command.data
        if name in FORWARD:
            if self.settings.participant_never_answer:
                return None, False  # down: neither applied nor answered
            ok, bad = FORWARD[name]
            if fails(command.id, self.settings.participant_failure_rate):
                outcome, reply_name, result = "rejected", bad, {}
                reply_data: dict[str, Any] = {"reason": f"{self.service} refused (injected)"}
                if bad == "inventory.rejected":
                    reply_data["unavailableSkus"] = [i["sku"] for i in data.get("items", [])[:1]]
            else:
                outcome, reply_name = "applied", ok
                result = self._result(command)
                reply_data = dict(result)
        elif name in COMPENSATIONS:
            reply_name, field = COMPENSATIONS[name]
            outcome, result = "applied", {}
            reply_data = {field: data[field]}
            if name == "payment.refund":
                reply_data["amount"] = data.get("amount") or 0.0
        else:
            raise ValueError(f"{self.service} does not handle {name}")
        reply = Envelope(
            id=str(uuid.uuid5(NAMESPACE, f"{command.id}/reply")),
            name=reply_name,
            timestamp=command.timestamp,
            version="1.0.0",
            source=f"{self.service}-service",
            correlation_id=command.correlation_id,
            causation_id=command.id,
            data={"orderId": data["orderId"], "sagaId": data["sagaId"], **reply_data},
        )
        encoded = self.codec.encode_json(reply)
        entry = {
            "commandId": command.id,
            "name": name,
            "orderId": data["orderId"],
            "outcome": outcome,
            "result": result,
            "reply": orjson.loads(encoded),
        }
        if name in COMPENSATIONS:
            entry["known"] = data["orderId"] in self.applied
        with self.log_path.open("ab") as log:
            log.write(orjson.dumps(entry) + b"\n")
            log.flush()
        self._remember(entry)
        return encoded, True

    def _result(self, command: Envelope) -> dict[str, Any]:
        cid = command.id
        if self.service == "inventory":
            return {"reservationId": f"res-{cid[:8]}"}
        if self.service == "payment":
            return {"paymentId": f"pay-{cid[:8]}", "amount": command.data.get("amount") or 0.0}
        return {
            "shipmentId": f"shp-{cid[:8]}",
            "trackingNumber": f"TRK{int(cid[:8], 16):010d}",
            "carrier": "demo-post",
        }


async def run_participants(
    settings: Settings,
    services: Iterable[str],
    stop: asyncio.Event | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the given participants until ``stop`` is set (or forever)."""
    await ensure_topics(settings)
    codec = EventCodec(limits=settings.limits)
    stop = stop or asyncio.Event()
    participants = [Participant(settings, s, codec) for s in services]
    await asyncio.gather(*(_run(settings, p, stop, echo) for p in participants))


async def _run(
    settings: Settings, participant: Participant, stop: asyncio.Event, echo: Callable[[str], None]
) -> None:
    options = aiokafka_options(settings)
    service = participant.service
    consumer = AIOKafkaConsumer(
        settings.topic(SAGA_COMMAND_TOPICS[service].name),
        group_id=f"{settings.app_id}-participant-{service}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
    replies = settings.topic(SAGA_REPLIES.name)
    latency = settings.participant_latency_ms / 1000
    await consumer.start()
    await producer.start()
    echo(f"{service} participant: log {participant.log_path}")
    applied = 0
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                continue
            if latency:
                await asyncio.sleep(latency)
            sent = []
            for records in batch.values():
                for record in records:
                    try:
                        command = codec_decode(participant, record)
                    except (EventError, ValueError) as exc:
                        logger.warning("%s: skipped a bad command: %s", service, exc)
                        continue
                    reply, fresh = participant.handle(command)
                    applied += fresh
                    if reply is not None:
                        sent.append(await producer.send(replies, reply, key=record.key))
            if sent:
                await asyncio.gather(*sent)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        echo(f"{service} participant: {applied} applied, {participant.duplicates} duplicates")


def codec_decode(participant: Participant, record: Any) -> Envelope:
    """The command in ``record`` (registry-checked)."""
    return participant.codec.decode(record.value, record.headers)
