"""A worker that takes seconds over one order's events, for the slow-event case.

The orders projection blocks for ``SLOW_SECONDS`` on the first event it sees
of the order named by ``FAULTS_SLOW_ORDER`` (a handler stuck on a slow call),
after creating the file named by ``FAULTS_SLOW_MARK``; once per process, so a
restarted worker is slow again on the same event. Run as
``python -m benchmarks.faults.slow_worker``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from eventide.app import EventideApp
from eventide.worker import run_worker
from streams.settings import Settings

SLOW_SECONDS = 4.0


def make_slow(eventide: EventideApp) -> None:
    """Wrap the orders projection's apply with the delay above."""
    order_id = os.environ["FAULTS_SLOW_ORDER"].encode()
    mark = Path(os.environ["FAULTS_SLOW_MARK"])
    orders = eventide.engine.by_table["orders"]
    real = orders.apply
    done: list[bool] = []

    def apply(ctx: Any, record: Any) -> None:
        if record.key == order_id and not done:
            done.append(True)
            mark.touch()
            time.sleep(SLOW_SECONDS)
        real(ctx, record)

    orders.apply = apply


if __name__ == "__main__":
    run_worker(Settings.from_env(), customize=make_slow)
