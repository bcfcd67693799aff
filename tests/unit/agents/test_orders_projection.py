from types import SimpleNamespace

import orjson
import pytest

from agents.orders import OrdersProjection
from schemas import ValidationError, new_event
from schemas.codecs import EventCodec
from streams.exceptions import RecordKeyError
from streams.projection import BatchContext
from streams.settings import Settings
from tables.readmodels.orders import apply_order_event
from tables.store import PartitionStore
from tables.transaction import Transaction


def placed(order_id="o-1", **extra):
    data = {
        "orderId": order_id,
        "customerId": "c-9",
        "items": [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}],
        "totalAmount": 16.0,
        "currency": "EUR",
        **extra,
    }
    return new_event("order.placed", data, source="order-service")


def follow(name, order_id="o-1", **data):
    return new_event(name, {"orderId": order_id, **data})


def replay(events, view=None):
    for event in events:
        view = apply_order_event(view, event) or view
    return view


def test_full_lifecycle():
    p = placed()
    pay = follow("order.payment_confirmed", paymentId="p-1", amount=16.0)
    ship = follow("order.shipped", trackingNumber="TRK1", carrier="DHL")
    view = apply_order_event(None, p)
    assert view["status"] == "pending"
    assert (view["customerId"], view["totalAmount"], view["placedAt"]) == ("c-9", 16.0, p.timestamp)
    view = apply_order_event(view, pay)
    assert (view["status"], view["paymentId"], view["paidAmount"]) == ("confirmed", "p-1", 16.0)
    view = apply_order_event(view, ship)
    assert (view["status"], view["trackingNumber"], view["carrier"]) == ("shipped", "TRK1", "DHL")
    assert view["items"] == [{"sku": "sku-mug", "quantity": 2, "unitPrice": 8.0}]
    assert (view["lastEventId"], view["lastEventName"], view["eventCount"]) == (
        ship.id,
        "order.shipped",
        3,
    )


def test_cancellation():
    view = replay([placed(), follow("order.cancelled", reason="too slow")])
    assert (view["status"], view["cancelReason"]) == ("cancelled", "too slow")
    assert view["cancelledAt"] is not None


def test_redelivery_of_a_recent_event_changes_nothing():
    p = placed()
    pay = follow("order.payment_confirmed", paymentId="p-1", amount=16.0)
    view = replay([p, pay])
    assert apply_order_event(view, p) is None
    assert apply_order_event(view, pay) is None


def test_event_before_placed_creates_partial_view_and_placed_fills_it_in():
    ship = follow("order.shipped", trackingNumber="TRK1")
    view = apply_order_event(None, ship)
    assert (view["status"], view["customerId"], view["items"], view["totalAmount"]) == (
        "shipped",
        None,
        [],
        None,
    )
    view = apply_order_event(view, placed())
    assert view["status"] == "shipped"  # placed late does not move the status back
    assert (view["customerId"], view["totalAmount"], view["eventCount"]) == ("c-9", 16.0, 2)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (placed(customerId=None), "data.customerId: expected a non-empty string, got None"),
        (placed(totalAmount="42"), 'data.totalAmount: expected a number, got "42"'),
        (placed(totalAmount=True), "data.totalAmount: expected a number, got True"),
        (placed(items=[{"sku": "a"}, 3]), "data.items[1]: expected an object, got 3"),
        (follow("order.shipped"), "data.trackingNumber: expected a non-empty string, got nothing"),
        (new_event("order.shipped", {"trackingNumber": "T"}), "data.orderId: expected"),
        (follow("order.teleported"), "name: expected one of order.cancelled, order.payment"),
    ],
)
def test_bad_data_names_the_field(event, message):
    with pytest.raises(ValidationError) as info:
        apply_order_event(None, event)
    assert message in str(info.value)


def unchecked_json(event):
    """The JSON form of ``event`` without the codec's checks: some events are invalid on purpose."""
    return orjson.dumps(event.to_dict())


def record(key, event, topic="order-events"):
    return SimpleNamespace(
        topic=topic, partition=0, offset=0, key=key, value=unchecked_json(event), headers=()
    )


def test_projection_writes_the_view_and_emits_a_customer_fact(tmp_path):
    projection = OrdersProjection(Settings.from_env({}), EventCodec())
    ctx = BatchContext(Transaction(PartitionStore(tmp_path / "orders-0")))
    event = placed()
    projection.apply(ctx, record(b"o-1", event))
    assert ctx.tx.get(b"o-1")["status"] == "pending"
    assert ctx.tx.get(b"o-1")["lastEventId"] == event.id
    # the view reaches order-views as the table's changelog, not as an output
    assert set(ctx.outputs) == {("customer-facts", b"o-1")}
    key, fact = ctx.outputs[("customer-facts", b"o-1")]
    assert key == b"c-9"
    assert fact == {  # encoded once, when the batch is sent
        "orderId": "o-1",
        "customerId": "c-9",
        "version": 1,
        "placedAt": event.timestamp,
        "paidAmount": None,
    }


def test_shipping_changes_nothing_for_the_customer(tmp_path):
    projection = OrdersProjection(Settings.from_env({}), EventCodec())
    ctx = BatchContext(Transaction(PartitionStore(tmp_path / "orders-0")))
    projection.apply(ctx, record(b"o-1", placed()))
    ctx.outputs.clear()
    projection.apply(ctx, record(b"o-1", follow("order.shipped", trackingNumber="T")))
    assert ctx.outputs == {}
    assert ctx.tx.get(b"o-1")["status"] == "shipped"


def test_projection_refuses_an_event_under_another_key(tmp_path):
    projection = OrdersProjection(Settings.from_env({}), EventCodec())
    ctx = BatchContext(Transaction(PartitionStore(tmp_path / "orders-0")))
    with pytest.raises(ValidationError, match='key: expected the order id "o-1"'):
        projection.apply(ctx, record(b"o-2", placed()))
    assert ctx.tx.updates == {}


def test_projection_refuses_an_event_without_a_key(tmp_path):
    projection = OrdersProjection(Settings.from_env({}), EventCodec())
    ctx = BatchContext(Transaction(PartitionStore(tmp_path / "orders-0")))
    with pytest.raises(RecordKeyError) as info:
        projection.apply(ctx, record(None, placed()))
    assert str(info.value) == (
        'key: expected the order id "o-1" (events are keyed by orderId), got no key'
    )
    assert ctx.tx.updates == {} and ctx.outputs == {}
