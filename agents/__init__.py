"""Projections and agents, one module each, registered explicitly by the app factory."""

from .customers import CustomersProjection
from .notifications import NotificationsProjection
from .orders import OrdersProjection

__all__ = ["CustomersProjection", "NotificationsProjection", "OrdersProjection"]
