"""Upcasters: explicit functions that carry event data across a major version.

A minor version only adds optional fields, so the registry reads old minors
into the newest shape by Avro schema resolution alone. A major version is a
new schema; events of an older major reach agents only through an upcaster
registered here, and the registry refuses to load when a major version has
none (``eventide schemas check`` says which).

Each upcaster takes the data of an event decoded with the newest minor of
major ``N`` (defaults filled in) and returns the data of major ``N + 1``; its
output is validated against that schema before an agent sees it. Chains
(1 → 2 → 3) are applied in order. Example::

    def _order_placed_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": data["currency"] or "EUR"}

    UPCASTERS = {("order.placed", 1): _order_placed_1_to_2}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the data of major ``N`` (newest minor) into the data of major ``N + 1``."""

UPCASTERS: Mapping[tuple[str, int], Upcaster] = {}
"""(event name, major it reads) → upcaster to the next major. No event has a second major yet."""
