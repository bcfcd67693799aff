"""The order saga's state machine: orderId → saga state, as pure functions.

No broker or table in sight: :func:`start`, :func:`on_reply` and
:func:`on_deadline` take the stored state, the event and the time the engine
attributes to it (the Kafka record's timestamp, or a tick's time), and return
the new state plus the commands and events to send. Replaying the same records
gives the same state, the same commands and the same command ids.

Forward: ``inventory.reserve`` → ``payment.process`` → ``shipment.create`` →
``order.saga_completed``. A failure reply (``inventory.rejected``,
``payment.failed``, ``shipment.failed``) or a step whose deadline passes starts
the compensations of the steps done, newest first (``shipment.cancel``,
``payment.refund``, ``inventory.release``); each is re-sent (same id) every
``retry_ms`` until its acknowledgement arrives; then ``order.saga_failed``.

Idempotence: a reply is applied only when the saga waits for exactly that
reply (its step and, when the reply names one, its causing command id);
anything else (a duplicate, a reply for another step, a reply for a finished
saga) is recorded in the history as ignored and changes nothing else. One
exception keeps the books right: the success reply of a step that timed out
arrives late. That step did run, so its compensation is queued too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.envelope import Envelope
from schemas.exceptions import MISSING, ValidationError

TABLE_NAME = "sagas"
SOURCE = "eventide-saga"
NAMESPACE = uuid.UUID("6f1d9c6e-3f53-4bb8-9b40-0c2f4f1f5a31")
"""Namespace of the saga's deterministic ids (uuid5)."""

STEPS = ("inventory", "payment", "shipment")
FORWARD = {
    "inventory": "inventory.reserve",
    "payment": "payment.process",
    "shipment": "shipment.create",
}
SUCCESS = {
    "inventory.reserved": "inventory",
    "payment.processed": "payment",
    "shipment.created": "shipment",
}
FAILURE = {
    "inventory.rejected": "inventory",
    "payment.failed": "payment",
    "shipment.failed": "shipment",
}
COMPENSATION = {
    "inventory": "inventory.release",
    "payment": "payment.refund",
    "shipment": "shipment.cancel",
}
COMPENSATED = {
    "inventory.released": "inventory",
    "payment.refunded": "payment",
    "shipment.cancelled": "shipment",
}
REPLIES = frozenset(SUCCESS) | frozenset(FAILURE) | frozenset(COMPENSATED)
RESULT_FIELDS = {
    "inventory": ("reservationId",),
    "payment": ("paymentId", "amount"),
    "shipment": ("shipmentId", "trackingNumber"),
}
"""The fields of a success reply the saga keeps (what its compensation needs)."""
HISTORY_MAX = 64
"""History entries kept per saga (the oldest are dropped beyond it)."""

RUNNING, COMPENSATING, COMPLETED, FAILED = "running", "compensating", "completed", "failed"


@dataclass(frozen=True)
class Timing:
    """How long the saga waits."""

    step_timeout_ms: int
    """A forward step with no reply within this time has failed (timed out)."""
    retry_ms: int
    """A compensation with no acknowledgement within this time is sent again."""


@dataclass(frozen=True)
class Outcome:
    """What one call of the state machine decided."""

    state: dict[str, Any] | None
    """The new state (None: unchanged, nothing to write)."""
    events: tuple[Envelope, ...] = ()
    """Commands and saga events to send, in order."""
    note: str = ""
    """``started``, ``advanced``, ``completed``, ``compensating``, ``failed``,
    ``timed-out``, ``resent``, ``ignored`` (for metrics and logs)."""
    latency_ms: tuple[str, int] | None = None
    """(step, ms from its command to its reply) of a forward step that just succeeded."""


def deterministic_id(*parts: str) -> str:
    """The uuid5 of ``parts``: the same saga and command always get the same id."""
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def iso(ms: int) -> str:
    """Milliseconds since the epoch as the envelope's ISO-8601 UTC form."""
    ts = datetime.fromtimestamp(ms / 1000, UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key, MISSING)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"data.{key}", "a non-empty string", value)
    return value


def _event(
    state: dict[str, Any], name: str, data: dict[str, Any], now: int, cause: str
) -> Envelope:
    """A saga command or event with a deterministic id (saga, name)."""
    return Envelope(
        id=deterministic_id(state["sagaId"], name),
        name=name,
        timestamp=iso(now),
        version="1.0.0",
        source=SOURCE,
        correlation_id=state["sagaId"],
        causation_id=cause,
        data={"orderId": state["orderId"], "sagaId": state["sagaId"], **data},
    )


def _log(state: dict[str, Any], now: int, event: str, **detail: Any) -> None:
    history = state["history"]
    history.append({"at": iso(now), "event": event, **detail})
    if len(history) > HISTORY_MAX:
        del history[: len(history) - HISTORY_MAX]


def start(placed: Envelope, now: int, timing: Timing) -> Outcome:
    """The saga of a newly placed order: waiting for ``inventory.reserve``."""
    data = placed.data
    order_id = _str(data, "orderId")
    items = data.get("items")
    if not isinstance(items, list):
        raise ValidationError("data.items", "an array", items)
    state: dict[str, Any] = {
        "orderId": order_id,
        "sagaId": deterministic_id("saga", order_id, placed.id),
        "customerId": _str(data, "customerId"),
        "items": [
            {"sku": str(i.get("sku")), "quantity": int(i.get("quantity", 1))}
            for i in items
            if isinstance(i, dict)
        ],
        "amount": data.get("totalAmount"),
        "currency": data.get("currency"),
        "status": RUNNING,
        "step": None,
        "attempts": 0,
        "deadline": None,
        "commandId": None,
        "done": [],
        "results": {},
        "toUndo": [],
        "compensated": [],
        "failedStep": None,
        "reason": None,
        "timedOut": None,
        "outcomePublished": False,
        "startedAt": now,
        "stepStartedAt": now,
        "finishedAt": None,
        "ignored": 0,
        "history": [],
    }
    _log(state, now, "order.placed", id=placed.id)
    return Outcome(state, (_forward(state, "inventory", now, timing, placed.id),), "started")


def _forward(state: dict[str, Any], step: str, now: int, timing: Timing, cause: str) -> Envelope:
    if step == "inventory":
        data: dict[str, Any] = {"items": state["items"]}
    elif step == "payment":
        data = {
            "customerId": state["customerId"],
            "amount": float(state["amount"] or 0.0),
            "currency": state["currency"],
        }
    else:
        data = {"customerId": state["customerId"], "items": state["items"]}
    command = _event(state, FORWARD[step], data, now, cause)
    state.update(
        step=step,
        attempts=1,
        deadline=now + timing.step_timeout_ms,
        commandId=command.id,
        stepStartedAt=now,
    )
    _log(state, now, command.name, id=command.id)
    return command


def _compensation(state: dict[str, Any], step: str, now: int, reason: str, cause: str) -> Envelope:
    result = state["results"][step]
    if step == "inventory":
        data: dict[str, Any] = {"reservationId": result["reservationId"], "reason": reason}
    elif step == "payment":
        data = {
            "paymentId": result["paymentId"],
            "amount": float(result.get("amount") or 0.0),
            "reason": reason,
        }
    else:
        data = {"shipmentId": result["shipmentId"], "reason": reason}
    return _event(state, COMPENSATION[step], data, now, cause)


def _next_compensation(state: dict[str, Any], now: int, timing: Timing, cause: str) -> Outcome:
    """Send the next compensation, or finish the saga as failed when none is left."""
    if state["toUndo"]:
        step = state["toUndo"].pop(0)
        command = _compensation(state, step, now, state["reason"] or "", cause)
        state.update(
            status=COMPENSATING,
            step=step,
            attempts=1,
            deadline=now + timing.retry_ms,
            commandId=command.id,
        )
        _log(state, now, command.name, id=command.id)
        return Outcome(state, (command,), "compensating")
    state.update(status=FAILED, step=None, deadline=None, commandId=None, finishedAt=now)
    if state["outcomePublished"]:
        _log(state, now, "compensated-late")
        return Outcome(state, (), "compensated-late")
    state["outcomePublished"] = True
    failed = _event(
        state,
        "order.saga_failed",
        {"failedStep": state["failedStep"], "reason": state["reason"], "compensated": True},
        now,
        cause,
    )
    _log(state, now, failed.name, id=failed.id, reason=state["reason"])
    return Outcome(state, (failed,), "failed")


def _fail(
    state: dict[str, Any],
    step: str,
    reason: str,
    now: int,
    timing: Timing,
    cause: str,
    timed_out: bool,
) -> Outcome:
    state.update(
        failedStep=step, reason=reason, timedOut=timed_out, toUndo=list(reversed(state["done"]))
    )
    outcome = _next_compensation(state, now, timing, cause)
    return Outcome(outcome.state, outcome.events, "timed-out" if timed_out else outcome.note)


def _ignore(state: dict[str, Any], reply: Envelope, now: int, why: str) -> Outcome:
    state = {**state, "history": list(state["history"]), "ignored": state["ignored"] + 1}
    _log(state, now, reply.name, id=reply.id, ignored=why)
    return Outcome(state, (), "ignored")


def on_reply(state: dict[str, Any] | None, reply: Envelope, now: int, timing: Timing) -> Outcome:
    """Apply a participant's reply; see the module docstring for what is ignored."""
    if reply.name not in REPLIES:
        raise ValidationError("name", f"one of {', '.join(sorted(REPLIES))}", reply.name)
    if state is None:
        return Outcome(None, (), "ignored")  # no saga: nothing to record it in
    data = reply.data
    if data.get("sagaId") != state["sagaId"]:
        return _ignore(state, reply, now, f"for saga {data.get('sagaId')}, not this one")
    if any(e.get("id") == reply.id for e in state["history"]):
        return _ignore(state, reply, now, "duplicate reply")
    name, status = reply.name, state["status"]
    waiting = reply.causation_id is None or reply.causation_id == state["commandId"]
    if name in SUCCESS:
        step = SUCCESS[name]
        if step in state["done"]:
            return _ignore(state, reply, now, f"{step} is done already")
        if status == RUNNING and step == state["step"] and waiting:
            return _succeeded(_copy(state), step, reply, now, timing)
        if status in (COMPENSATING, FAILED) and step == state["failedStep"] and state["timedOut"]:
            return _late_success(_copy(state), step, reply, now, timing)
        return _ignore(state, reply, now, f"not waiting for {name} ({status})")
    if name in FAILURE:
        step = FAILURE[name]
        if status == RUNNING and step == state["step"] and waiting:
            state = _copy(state)
            _log(state, now, name, id=reply.id, reason=data.get("reason"))
            reason = f"{name}: {data.get('reason') or 'no reason given'}"
            return _fail(state, step, reason, now, timing, reply.id, timed_out=False)
        return _ignore(state, reply, now, f"not waiting for {name} ({status})")
    step = COMPENSATED[name]
    if status == COMPENSATING and step == state["step"] and waiting:
        state = _copy(state)
        state["compensated"].append(step)
        _log(state, now, name, id=reply.id)
        return _next_compensation(state, now, timing, reply.id)
    return _ignore(state, reply, now, f"not waiting for {name} ({status})")


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    copy = dict(state)
    for key in ("done", "toUndo", "compensated", "history"):
        copy[key] = list(state[key])
    copy["results"] = dict(state["results"])
    return copy


def _result(step: str, reply: Envelope) -> dict[str, Any]:
    data = reply.data
    first, *rest = RESULT_FIELDS[step]
    return {first: _str(data, first), **{f: data.get(f) for f in rest}}


def _succeeded(
    state: dict[str, Any], step: str, reply: Envelope, now: int, timing: Timing
) -> Outcome:
    latency = (step, max(0, now - state["stepStartedAt"]))
    state["results"][step] = _result(step, reply)
    state["done"].append(step)
    _log(state, now, reply.name, id=reply.id)
    index = STEPS.index(step)
    if index + 1 < len(STEPS):
        command = _forward(state, STEPS[index + 1], now, timing, reply.id)
        return Outcome(state, (command,), "advanced", latency)
    state.update(
        status=COMPLETED,
        step=None,
        deadline=None,
        commandId=None,
        finishedAt=now,
        outcomePublished=True,
    )
    results = state["results"]
    done = _event(
        state,
        "order.saga_completed",
        {
            "reservationId": results["inventory"]["reservationId"],
            "paymentId": results["payment"]["paymentId"],
            "shipmentId": results["shipment"]["shipmentId"],
            "trackingNumber": results["shipment"].get("trackingNumber"),
        },
        now,
        reply.id,
    )
    _log(state, now, done.name, id=done.id)
    return Outcome(state, (done,), "completed", latency)


def _late_success(
    state: dict[str, Any], step: str, reply: Envelope, now: int, timing: Timing
) -> Outcome:
    """The timed-out step ran after all: undo it too (it is the newest step done)."""
    state["results"][step] = _result(step, reply)
    state["done"].append(step)
    _log(state, now, reply.name, id=reply.id, late="the step ran after its timeout")
    if state["status"] == COMPENSATING:
        state["toUndo"].insert(0, step)
        return Outcome(state, (), "late")
    state["toUndo"] = [step]
    return _next_compensation(state, now, timing, reply.id)


def on_deadline(state: dict[str, Any], now: int, timing: Timing) -> Outcome:
    """The saga's deadline passed: a forward step timed out, or a compensation
    is sent again (same id). Nothing happens before the deadline."""
    deadline = state.get("deadline")
    if deadline is None or now < deadline:
        return Outcome(None)
    state = _copy(state)
    step = state["step"]
    if state["status"] == RUNNING:
        _log(state, now, "timeout", step=step)
        reason = f"timeout: no reply to {FORWARD[step]} within {timing.step_timeout_ms} ms"
        return _fail(state, step, reason, now, timing, state["commandId"], timed_out=True)
    command = _compensation(state, step, now, state["reason"] or "", state["commandId"])
    state["attempts"] += 1
    state["deadline"] = now + timing.retry_ms
    _log(state, now, command.name, id=command.id, attempt=state["attempts"])
    return Outcome(state, (command,), "resent")


def saga_view(state: dict[str, Any]) -> dict[str, Any]:
    """The document ``GET /sagas/{orderId}`` serves."""
    return {
        "orderId": state["orderId"],
        "sagaId": state["sagaId"],
        "status": state["status"],
        "step": state["step"],
        "attempts": state["attempts"],
        "deadline": iso(state["deadline"]) if state["deadline"] is not None else None,
        "done": state["done"],
        "results": state["results"],
        "compensationsRun": state["compensated"],
        "compensationsPending": ([state["step"]] if state["status"] == COMPENSATING else [])
        + state["toUndo"],
        "failedStep": state["failedStep"],
        "reason": state["reason"],
        "timedOut": state["timedOut"],
        "startedAt": iso(state["startedAt"]),
        "finishedAt": iso(state["finishedAt"]) if state["finishedAt"] is not None else None,
        "ignoredReplies": state["ignored"],
        "history": state["history"],
    }
