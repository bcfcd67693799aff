"""The fault matrix's short form: the same cases and verifier as
``python -m benchmarks.faults --small``, each row 0 lost / 0 double-applied / 0 other."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults.__main__ import run_matrix, table
from benchmarks.faults.harness import Options
from streams.settings import Settings

pytestmark = pytest.mark.integration

CASES = ["kill", "sst-corrupt", "bad-keys"]
"""Fast cases: kill -9 twice, a truncated .sst, keyless and foreign-keyed records."""


@pytest.mark.timeout(600)  # about 2 min on a quiet machine; six worker starts on a busy one
def test_fault_matrix_short_form_loses_nothing_and_applies_nothing_twice(
    kafka: Settings, tmp_path: Path
) -> None:
    opts = Options(broker=kafka.broker_url, workdir=tmp_path, rate=100, small=True)
    rows = run_matrix(opts, CASES)
    report = "\n".join(table(rows) + [f"{r.case}: {r.notes}" for r in rows])
    assert [r.case for r in rows] == CASES
    for row in rows:
        assert row.error == "", report
        assert (row.lost, row.double_applied, row.other) == (0, 0, 0), report
        assert row.events > 0 and row.faults >= 1, report
