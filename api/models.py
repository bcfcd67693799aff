"""Request bodies of the command API: what a valid command looks like.

Strict types (a quantity of ``"2"`` is refused, not coerced) and no unknown
fields, so a typo comes back as a 422 naming the field instead of being
silently dropped.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Unicode's control characters (category Cc): NUL, escape, line breaks, C1 codes."""


def no_control_characters(value: str) -> str:
    """Refuse control characters: the first one is named with its position."""
    found = CONTROL_RE.search(value)
    if found is not None:
        raise ValueError(
            f"control character U+{ord(found.group()):04X} at position {found.start()} "
            "is not allowed"
        )
    return value


Plain = AfterValidator(no_control_characters)
"""Free text ends up in read models, e-mails and logs: no control characters."""

EntityId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$", strict=True)
]
"""Ids of users, orders, payments: 1-100 letters, digits and ``._:@-``."""
Text = Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True), Plain]


class Command(BaseModel):
    """Common configuration: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CreateUser(Command):
    """``POST /users`` → ``user.created``."""

    userId: EntityId | None = None
    """Id of the new user; generated (``u-<uuid>``) when absent."""
    email: Annotated[
        str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254), Plain
    ]
    """E-mail address, ``name@domain.tld``."""
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), Plain
    ]
    """Display name."""
    address: (
        Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]
        | None
    ) = None
    """Postal address, one string (``user.created`` 1.1); optional."""


class OrderLine(Command):
    """One line of an order."""

    sku: EntityId
    """Stock-keeping unit."""
    quantity: int = Field(gt=0, le=10_000)
    """How many, 1..10000."""
    unitPrice: float = Field(ge=0, le=1_000_000)
    """Price of one unit in the order's currency."""


class PlaceOrder(Command):
    """``POST /orders`` → ``order.placed``."""

    orderId: EntityId | None = None
    """Id of the new order; generated (``o-<uuid>``) when absent."""
    customerId: EntityId
    """The customer (a userId)."""
    items: list[OrderLine] = Field(min_length=1, max_length=100)
    """1..100 order lines."""
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"
    """ISO 4217 code."""
    totalAmount: float | None = Field(default=None, ge=0)
    """Optional check: when given it must equal the sum of the lines."""


class ConfirmPayment(Command):
    """``POST /orders/{orderId}/payment`` → ``order.payment_confirmed``."""

    paymentId: EntityId
    """Id of the payment at the payment provider."""
    amount: float | None = Field(default=None, gt=0)
    """Amount paid; must equal the order total (defaults to it)."""


class ShipOrder(Command):
    """``POST /orders/{orderId}/shipment`` → ``order.shipped``."""

    trackingNumber: Annotated[str, StringConstraints(min_length=1, max_length=100), Plain]
    """Carrier tracking number."""
    carrier: Annotated[str, StringConstraints(min_length=1, max_length=50), Plain]
    """Carrier name."""


class CancelOrder(Command):
    """``POST /orders/{orderId}/cancel`` → ``order.cancelled``."""

    reason: Text
    """Why the order is cancelled."""
