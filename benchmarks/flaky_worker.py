"""A worker whose orders projection fails on marked events, for failure tests.

Events whose ``data.currency`` is ``FLK`` fail on their first three attempts
(the source record and retries 1 and 2) and succeed on the fourth; ``DIE``
always fails. The attempt comes from the retry headers, so the behaviour is
the same across kill -9 and restarts. Run as ``python -m benchmarks.flaky_worker``.
"""

from __future__ import annotations

from typing import Any

from eventide.app import EventideApp
from eventide.worker import run_worker
from streams.settings import Settings

APPLIED_LOG = "flaky-applied"


def make_flaky(eventide: EventideApp) -> None:
    """Wrap the orders projection's apply with the failure rules above."""
    orders = eventide.engine.by_table["orders"]
    real = orders.apply

    def apply(ctx: Any, record: Any) -> None:
        value = record.value or b""
        retry = getattr(record, "retry", None)
        attempt = retry.attempt if retry is not None else 0
        if b'"currency":"DIE"' in value:
            raise RuntimeError("payment provider rejected the order (permanent)")
        if b'"currency":"FLK"' in value and attempt < 3:
            raise ConnectionError(f"downstream timeout on attempt {attempt}")
        real(ctx, record)

    orders.apply = apply


if __name__ == "__main__":
    run_worker(Settings.from_env(), customize=make_flaky)
