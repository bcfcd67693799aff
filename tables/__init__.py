"""Read-model tables (CQRS): their projections and query views."""

from .orders import TABLE_NAME as ORDERS_TABLE
from .orders import OrderView, apply_order_event, new_view

__all__ = ["ORDERS_TABLE", "OrderView", "apply_order_event", "new_view"]
