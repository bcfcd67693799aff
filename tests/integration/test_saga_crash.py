"""kill -9 of the saga orchestrator while sagas run (benchmarks/saga_crash.py, small).

The issue's run is 2,000 sagas (``python -m benchmarks.saga_crash``); here 120
sagas, 10 % injected failures per step and two kills keep the suite short.
"""

from __future__ import annotations

import pytest

from benchmarks import saga_crash
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_after_kill_9_every_saga_is_completed_or_fully_compensated(kafka: Settings, tmp_path):
    result = saga_crash.run(
        kafka.broker_url,
        sagas=120,
        kills=2,
        failure_rate=0.1,
        chunks=4,
        pause=1.0,
        workdir=tmp_path,
        log=lambda line: None,
    )
    assert result["problems"] == []
    # both outcomes happened, so both were checked
    assert result["sagas"]["completed"] > 0 and result["sagas"]["failed"] > 0
    assert sum(result["sagas"].values()) == 120
    assert result["duplicate_applications"] == 0
    assert result["compensations_without_step"] == 0
