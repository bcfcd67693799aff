"""CPU used by the processes of a benchmark run, from ``/proc`` (Linux only).

A :class:`CpuMeter` samples user + system time of named process groups (a
pid and, optionally, its descendants) at the start and end of a measured
window and reports cores used: CPU seconds divided by wall seconds. On a
2-core machine the column adds up to at most 2.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state; ppid is field 4 of stat, utime 14, stime 15 (1-based).
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant."""
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is None:
            continue
        parents.setdefault(st[0], []).append(int(entry))
        cpu[int(entry)] = st[1]
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(parents.get(pid, []))
    return total


class CpuMeter:
    """Cores used by each group over a window: ``start()``, then ``stop()``."""

    def __init__(self, groups: dict[str, tuple[int, bool]]) -> None:
        """``groups``: name → (pid, include descendants)."""
        self.groups = groups
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        out = {"machine": machine_cpu()}
        for name, (pid, tree) in self.groups.items():
            if tree:
                out[name] = _tree_cpu(pid)
            else:
                st = _stat(pid)
                out[name] = st[1] if st else 0.0
        return out

    def start(self) -> None:
        self._start = self._sample()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used per group (CPU seconds / wall seconds), 2 decimals, plus
        ``machine`` (every process) and ``other`` (machine minus the groups:
        other programs, other sessions, the kernel)."""
        wall = time.monotonic() - self._t0
        end = self._sample()
        used = {name: (end[name] - self._start[name]) / wall for name in end}
        used["other"] = used["machine"] - sum(used[name] for name in self.groups)
        return {name: round(value, 2) for name, value in used.items()}


def machine_cpu() -> float:
    """CPU seconds spent machine-wide (every process, idle and iowait excluded)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS
