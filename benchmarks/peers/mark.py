"""The moment a peer handles its first record, for the suite to time it from.

The suite sets BENCH_FIRST_RECORD_FILE; a peer calls :func:`first_record`
for every record it handles (a cheap test after the first) and the first
call writes ``<time.monotonic()> <CPU seconds of this process>`` to that
file. On Linux ``time.monotonic`` is one clock for every process of the
machine, so the suite compares it with its own readings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_path = os.environ.get("BENCH_FIRST_RECORD_FILE")


def first_record() -> None:
    """Write the first-record mark once (nothing when the suite asked for none)."""
    global _path
    if _path is None:
        return
    path, _path = Path(_path), None
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{time.monotonic()!r} {time.process_time()!r}\n")
    tmp.replace(path)


def read_mark(path: Path) -> tuple[float, float] | None:
    """(monotonic time, process CPU seconds) of the mark at ``path``, None before it exists."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    when, cpu = text.split()
    return float(when), float(cpu)
