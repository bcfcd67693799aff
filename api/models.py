"""Request bodies of the command API: what a valid command looks like.

Strict types (a quantity of ``"2"`` is refused, not coerced) and no unknown
fields, so a typo comes back as a 422 naming the field instead of being
silently dropped.

The value rules of a field that becomes a field of an event (bounds, id
patterns, lengths, no control characters, e-mail form) are not written here:
they are the event schema's ``constraints`` in ``schemas/avsc``
(:mod:`schemas.constraints`), which the worker's decoder enforces too, so a
command refused here would be dead-lettered by the worker had another
producer published it. :data:`CONTRACT` says which event field each command
field becomes; ``tests/unit/api/test_api_contract.py`` checks that every
constrained field of these events is covered and that the rules agree.

The API checks the plaintext of personal fields (e-mail, name, address),
before it encrypts them; the worker sees only their ciphertext.

Rules of the API alone: an order has at least one line (the event contract
admits an empty ``items``, as field publishers send them), ``name``,
``address`` and ``reason`` are trimmed before they are checked, and the
totals must add up (``api/aggregate.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from schemas.constraints import CONTROL_RE, FORMATS, FieldConstraints, payload_constraints
from schemas.exceptions import SchemaError
from schemas.registry import Registry

_REGISTRY = Registry.load()


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


def rule(event: str, path: str) -> FieldConstraints:
    """The constraints of ``path`` (``items[].quantity``) in the newest schema of ``event``."""
    entry = _REGISTRY.latest(event)
    found = payload_constraints(entry.payload).get(path) if entry is not None else None
    if found is None:
        raise SchemaError(
            f"api/models.py expects constraints on {path} of {event} in schemas/avsc: "
            "the command API takes its rules from there"
        )
    return found


def text(event: str, path: str, *, strip: bool = False) -> Any:
    """The type of a string command field with the constraints of the event field."""
    spec = rule(event, path).spec
    constraints = StringConstraints(
        strict=True,
        strip_whitespace=strip or None,
        min_length=spec.get("minLength"),
        max_length=spec.get("maxLength"),
        pattern=spec.get("pattern") or FORMATS.get(spec.get("format", "")),
    )
    if spec.get("noControl"):
        return Annotated[str, constraints, Plain]
    return Annotated[str, constraints]


def number(event: str, path: str, kind: type) -> Any:
    """The type of a numeric command field with the bounds of the event field."""
    spec = rule(event, path).spec
    bounds = Field(
        allow_inf_nan=False if kind is float else None,
        ge=spec.get("minimum"),
        gt=spec.get("exclusiveMinimum"),
        le=spec.get("maximum"),
        lt=spec.get("exclusiveMaximum"),
    )
    return Annotated[kind, bounds]


if TYPE_CHECKING:  # what type checkers see; the rules are pydantic's at run time
    UserId: TypeAlias = str
    OrderId: TypeAlias = str
    CustomerId: TypeAlias = str
    Sku: TypeAlias = str
    PaymentId: TypeAlias = str
    Email: TypeAlias = str
    Name: TypeAlias = str
    Address: TypeAlias = str
    Currency: TypeAlias = str
    Tracking: TypeAlias = str
    Carrier: TypeAlias = str
    Reason: TypeAlias = str
    Quantity: TypeAlias = int
    Price: TypeAlias = float
    Amount: TypeAlias = float
    Paid: TypeAlias = float
else:  # the types with the rules of the event fields they become
    UserId = text("user.created", "userId")
    Email = text("user.created", "email")
    Name = text("user.created", "name", strip=True)
    Address = text("user.created", "address", strip=True)
    OrderId = text("order.placed", "orderId")
    CustomerId = text("order.placed", "customerId")
    Sku = text("order.placed", "items[].sku")
    Quantity = number("order.placed", "items[].quantity", int)
    Price = number("order.placed", "items[].unitPrice", float)
    Currency = text("order.placed", "currency")
    Amount = number("order.placed", "totalAmount", float)
    PaymentId = text("order.payment_confirmed", "paymentId")
    Paid = number("order.payment_confirmed", "amount", float)
    Tracking = text("order.shipped", "trackingNumber")
    Carrier = text("order.shipped", "carrier")
    Reason = text("order.cancelled", "reason", strip=True)


class Command(BaseModel):
    """Common configuration: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CreateUser(Command):
    """``POST /users`` → ``user.created``."""

    userId: UserId | None = None
    """Id of the new user; generated (``u-<uuid>``) when absent."""
    email: Email
    """E-mail address, ``name@domain.tld``."""
    name: Name
    """Display name."""
    address: Address | None = None
    """Postal address, one string (``user.created`` 1.1); optional."""


class OrderLine(Command):
    """One line of an order."""

    sku: Sku
    """Stock-keeping unit."""
    quantity: Quantity
    """How many, 1..10000."""
    unitPrice: Price
    """Price of one unit in the order's currency."""


class PlaceOrder(Command):
    """``POST /orders`` → ``order.placed``."""

    orderId: OrderId | None = None
    """Id of the new order; generated (``o-<uuid>``) when absent."""
    customerId: CustomerId
    """The customer (a userId)."""
    items: list[OrderLine] = Field(
        min_length=1, max_length=rule("order.placed", "items").spec["maxItems"]
    )
    """1..100 order lines (at least one: a rule of the API alone)."""
    currency: Currency = "EUR"
    """ISO 4217 code."""
    totalAmount: Amount | None = None
    """Optional check: when given it must equal the sum of the lines."""


class ConfirmPayment(Command):
    """``POST /orders/{orderId}/payment`` → ``order.payment_confirmed``."""

    paymentId: PaymentId
    """Id of the payment at the payment provider."""
    amount: Paid | None = None
    """Amount paid; must equal the order total (defaults to it)."""


class ShipOrder(Command):
    """``POST /orders/{orderId}/shipment`` → ``order.shipped``."""

    trackingNumber: Tracking
    """Carrier tracking number."""
    carrier: Carrier
    """Carrier name."""


class CancelOrder(Command):
    """``POST /orders/{orderId}/cancel`` → ``order.cancelled``."""

    reason: Reason
    """Why the order is cancelled."""


CONTRACT: dict[tuple[type[Command], str], tuple[str, str]] = {
    (CreateUser, "userId"): ("user.created", "userId"),
    (CreateUser, "email"): ("user.created", "email"),
    (CreateUser, "name"): ("user.created", "name"),
    (CreateUser, "address"): ("user.created", "address"),
    (PlaceOrder, "orderId"): ("order.placed", "orderId"),
    (PlaceOrder, "customerId"): ("order.placed", "customerId"),
    (PlaceOrder, "items"): ("order.placed", "items"),
    (OrderLine, "sku"): ("order.placed", "items[].sku"),
    (OrderLine, "quantity"): ("order.placed", "items[].quantity"),
    (OrderLine, "unitPrice"): ("order.placed", "items[].unitPrice"),
    (PlaceOrder, "currency"): ("order.placed", "currency"),
    (PlaceOrder, "totalAmount"): ("order.placed", "totalAmount"),
    (ConfirmPayment, "paymentId"): ("order.payment_confirmed", "paymentId"),
    (ConfirmPayment, "amount"): ("order.payment_confirmed", "amount"),
    (ShipOrder, "trackingNumber"): ("order.shipped", "trackingNumber"),
    (ShipOrder, "carrier"): ("order.shipped", "carrier"),
    (CancelOrder, "reason"): ("order.cancelled", "reason"),
}
"""(model, field) → (event, field path): the event field each command field becomes."""

FROM_THE_PATH: frozenset[tuple[str, str]] = frozenset(
    (event, "orderId") for event in ("order.payment_confirmed", "order.shipped", "order.cancelled")
)
"""Constrained event fields no body field becomes: the URL's ``{orderId}``, an order
that must exist (placed with an id the API checked)."""
