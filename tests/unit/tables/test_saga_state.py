"""The order saga's state machine, without a broker (tables/readmodels/saga.py)."""

from __future__ import annotations

from typing import Any

from schemas import new_event
from schemas.envelope import Envelope
from tables.readmodels import saga
from tables.readmodels.orders import apply_order_event

T = saga.Timing(step_timeout_ms=1000, retry_ms=300)
RESULTS = {
    "inventory.reserved": {"reservationId": "r-1"},
    "payment.processed": {"paymentId": "p-1", "amount": 10.0},
    "shipment.created": {"shipmentId": "s-1", "trackingNumber": "T"},
    "inventory.released": {"reservationId": "r-1"},
    "payment.refunded": {"paymentId": "p-1", "amount": 10.0},
    "shipment.cancelled": {"shipmentId": "s-1"},
}


def placed() -> Envelope:
    data = {
        "orderId": "o-1",
        "customerId": "c-1",
        "totalAmount": 10.0,
        "items": [{"sku": "a", "quantity": 2, "unitPrice": 5.0}],
    }
    return new_event("order.placed", data)


def reply(state: dict[str, Any], name: str, **extra: Any) -> Envelope:
    data = {"orderId": "o-1", "sagaId": state["sagaId"], **RESULTS.get(name, {}), **extra}
    return new_event(name, data, causation_id=state["commandId"])


def test_a_saga_runs_its_three_steps_then_completes_with_deterministic_ids():
    out = saga.start(placed(), 0, T)
    assert [e.name for e in out.events] == ["inventory.reserve"]
    first_id = out.events[0].id
    assert saga.start(placed(), 0, T).events[0].id != first_id  # another order.placed event
    state = out.state
    names = []
    for i, name in enumerate(["inventory.reserved", "payment.processed", "shipment.created"]):
        out = saga.on_reply(state, reply(state, name), 10 * (i + 1), T)
        state = out.state
        names += [e.name for e in out.events]
    assert names == ["payment.process", "shipment.create", "order.saga_completed"]
    assert state["status"] == "completed" and state["deadline"] is None
    assert out.events[0].data["paymentId"] == "p-1"


def test_a_failure_reply_compensates_the_done_steps_newest_first():
    state = saga.start(placed(), 0, T).state
    state = saga.on_reply(state, reply(state, "inventory.reserved"), 1, T).state
    state = saga.on_reply(state, reply(state, "payment.processed"), 2, T).state
    out = saga.on_reply(state, reply(state, "shipment.failed", reason="no truck"), 3, T)
    assert [e.name for e in out.events] == ["payment.refund"]
    state = out.state
    out = saga.on_reply(state, reply(state, "payment.refunded"), 4, T)
    assert [e.name for e in out.events] == ["inventory.release"]
    assert out.events[0].data["reservationId"] == "r-1"
    state = out.state
    out = saga.on_reply(state, reply(state, "inventory.released"), 5, T)
    assert [e.name for e in out.events] == ["order.saga_failed"]
    assert out.events[0].data["failedStep"] == "shipment"
    assert out.state["compensated"] == ["payment", "inventory"]
    assert out.state["reason"] == "shipment.failed: no truck"


def test_a_timeout_compensates_and_an_unacknowledged_compensation_is_resent_with_its_id():
    state = saga.start(placed(), 0, T).state
    state = saga.on_reply(state, reply(state, "inventory.reserved"), 10, T).state
    assert saga.on_deadline(state, 1009, T).state is None  # not due yet
    out = saga.on_deadline(state, 1010, T)
    assert out.note == "timed-out" and [e.name for e in out.events] == ["inventory.release"]
    release_id = out.events[0].id
    state = out.state
    again = saga.on_deadline(state, 1010 + 300, T)
    assert [e.id for e in again.events] == [release_id] and again.state["attempts"] == 2


def test_duplicate_late_and_out_of_order_replies_are_recorded_and_ignored():
    state = saga.start(placed(), 0, T).state
    early = saga.on_reply(state, reply(state, "payment.processed"), 1, T)
    assert early.note == "ignored" and early.events == ()
    ok = reply(state, "inventory.reserved")
    state = saga.on_reply(state, ok, 2, T).state
    dup = saga.on_reply(state, ok, 3, T)
    assert dup.note == "ignored" and dup.state["ignored"] == 1
    assert dup.state["step"] == state["step"] and dup.state["done"] == state["done"]
    assert dup.state["history"][-1]["ignored"] == "duplicate reply"


def test_a_late_success_of_a_timed_out_step_is_compensated_too():
    state = saga.start(placed(), 0, T).state
    state = saga.on_deadline(state, 1000, T).state  # inventory timed out: nothing to undo
    assert state["status"] == "failed" and state["compensated"] == []
    late = saga.on_reply(
        state,
        new_event(
            "inventory.reserved",
            {"orderId": "o-1", "sagaId": state["sagaId"], "reservationId": "r-9"},
        ),
        2000,
        T,
    )
    assert [e.name for e in late.events] == ["inventory.release"]
    state = saga.on_reply(late.state, reply(late.state, "inventory.released"), 2001, T).state
    assert state["status"] == "failed" and state["compensated"] == ["inventory"]


def test_the_order_read_model_shows_the_saga_outcome_and_keeps_its_status():
    order = placed()
    view = apply_order_event(None, order)
    state = saga.start(order, 0, T).state
    state = saga.on_deadline(state, 1000, T).state
    failed = saga.on_deadline(saga.start(order, 0, T).state, 1000, T).events[0]
    assert failed.name == "order.saga_failed"
    view = apply_order_event(view, failed)
    assert view is not None and view["status"] == "pending"
    assert view["saga"]["outcome"] == "failed" and view["saga"]["failedStep"] == "inventory"
    assert view["saga"]["sagaId"] == state["sagaId"]
