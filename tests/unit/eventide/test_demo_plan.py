from collections import Counter

from eventide.tools.demo import plan_orders
from tables.readmodels.orders import apply_order_event


def test_every_order_starts_with_placed_and_ends_in_its_expected_status():
    plan = plan_orders(300, customers=40, seed=3)
    views: dict = {}
    for event in plan.events:
        order_id = event.data["orderId"]
        if order_id not in views:
            assert event.name == "order.placed"
        views[order_id] = apply_order_event(views.get(order_id), event)
    assert {k: v["status"] for k, v in views.items()} == plan.expected_status
    statuses = Counter(plan.expected_status.values())
    assert set(statuses) == {"pending", "confirmed", "shipped", "cancelled"}


def test_events_of_an_order_share_its_correlation_id_and_chain_causation():
    plan = plan_orders(50, customers=10, seed=5)
    last: dict = {}
    for event in plan.events:
        order_id = event.data["orderId"]
        if order_id in last:
            assert event.correlation_id == last[order_id].correlation_id
            assert event.causation_id == last[order_id].id
        last[order_id] = event
