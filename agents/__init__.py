"""The projections, one module each, declared with ``streams.projection.projection``.

:data:`PROJECTIONS` is the catalogue the app factory, ``EVENTIDE_PROJECTIONS``
and ``eventide rebuild`` work from: adding a projection is a module here (and
its pure read-model functions in ``tables/readmodels/``) plus a line below.
"""

from .customers import CustomersProjection
from .notifications import NotificationsProjection
from .orders import OrdersProjection
from .saga import SagaProjection

PROJECTIONS = (OrdersProjection, CustomersProjection, NotificationsProjection, SagaProjection)
"""Every projection a worker can run, in start-up order."""

__all__ = [
    "PROJECTIONS",
    "CustomersProjection",
    "NotificationsProjection",
    "OrdersProjection",
    "SagaProjection",
]
