from api.aggregate import CommandMeta, place_order, rebuild_order
from schemas.envelope import new_event


def test_an_order_is_rebuilt_from_its_events():
    items = [{"sku": "s", "quantity": 2, "unitPrice": 1.5}]
    placed = place_order(
        [], {"orderId": "o", "customerId": "c", "items": items, "currency": "EUR"}, CommandMeta()
    ).events
    paid = new_event("order.payment_confirmed", {"orderId": "o", "paymentId": "p", "amount": 3})
    order = rebuild_order([*placed, paid])
    assert order is not None
    assert (order.status, order.customerId, order.totalAmount, order.version) == (
        "confirmed",
        "c",
        3.0,
        2,
    )
    assert order.lastEventId == paid.id
    assert rebuild_order([]) is None
