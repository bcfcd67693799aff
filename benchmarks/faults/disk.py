"""RocksDB's disk fills up: the worker's data folder on a small filesystem that fills.

Without root, a tmpfs is mounted in a user + mount namespace of the case's own
(``unshare -rm``, held open by a ``sleep`` in it) and the worker runs inside
that namespace (``nsenter``), its EVENTIDE_DATA_DIR on the tmpfs. The fault:
a filler file takes every free byte, so the stores' writes (WAL, flushes,
compactions) fail with ENOSPC; after the outage the filler is deleted. A
worker that died meanwhile is restarted (the row's notes say so).
"""

from __future__ import annotations

import shutil
import subprocess
import time

from benchmarks.procs import log

from .harness import Case, Outcome

SIZE_MB = 64
"""The filesystem's size: room for the stores, then filled up by the fault."""


def available() -> str:
    """Why the case cannot run here, or "" when it can."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>&1 || true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0 or probe.stdout.strip():
        why = (probe.stdout + probe.stderr).strip()
        return f"no tmpfs in an unprivileged user namespace here ({why})"
    return ""


def _inside(holder: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(holder), "-U", "-m", "--preserve-credentials", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
    )


def disk_full(case: Case) -> Outcome:
    """The data folder's filesystem is full for 15 s (6 s short), then freed."""
    why = available()
    if why:
        raise RuntimeError(why)
    mount = case.dir / "disk"
    mount.mkdir()
    holder = subprocess.Popen(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size={SIZE_MB}m tmpfs "$0" && exec sleep infinity',
            str(mount),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while "tmpfs" not in _inside(holder.pid, "df", str(mount)).stdout:
            if holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tmpfs on {mount} did not come up")
            time.sleep(0.2)
        case.reconfigure(EVENTIDE_DATA_DIR=str(mount))
        w = case.worker()
        w.prefix = ["nsenter", "-t", str(holder.pid), "-U", "-m", "--preserve-credentials"]
        w.start()
        case.begin()
        case.run_for(4)
        outage = 6.0 if case.opts.small else 15.0
        at = time.monotonic()
        filler = mount / "filler"
        _inside(holder.pid, "sh", "-c", f'cat /dev/zero > "{filler}"')
        log(f"  {_inside(holder.pid, 'df', '-h', str(mount)).stdout.splitlines()[-1]}")
        states = set()
        while time.monotonic() - at < outage:
            states.add(str(w.health().get("status", "unreachable")))
            time.sleep(0.5)
        _inside(holder.pid, "rm", "-f", str(filler))
        died = not w.alive()
        if died:
            case.outcome.notes.append("the worker exited while the disk was full; restarted")
            w.start(wait=False)
        took = case.recovery(at, w)
        log(f"  disk full for {outage:.0f} s: caught up {took:.1f} s after the fault")
        case.outcome.notes.append(
            f"/health while the disk was full: {', '.join(sorted(states))}; the worker "
            f"{'died' if died else 'stayed up'}; its log: "
            f"{_enospc_lines(case)} lines naming the full disk"
        )
        case.run_for(2)
        return case.verify(w)
    finally:
        case.close()
        holder.kill()
        holder.wait()


def _enospc_lines(case: Case) -> int:
    text = (case.dir / "worker-0.log").read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "No space left" in line)
