"""Order sagas per second, with 0 % and 10 % injected failures.

For each failure rate: a fresh worker (orders + sagas projections) and the
three demo participants (``eventide participant all``) on their own topics;
N orders placed at once; every saga fetched over HTTP once all have finished.
Sagas/s is the finished sagas over the span from the first saga's start to the
last one's finish (the sagas' own record times); the duration of a saga is its
``finishedAt - startedAt``. The run also checks what the crash scenario checks
(benchmarks/saga_crash.py), without kills.

    python -m benchmarks.sagas --sagas 2000 --broker kafka://127.0.0.1:39092
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report
from .procs import log
from .saga_crash import run

EXPLAINED = (
    "For each failure rate, a fresh worker (orders + sagas projections) and the three"
    " demo participants (`eventide participant all`) run on topics of their own; all "
    "orders are placed at once, so a saga's duration (`finishedAt - startedAt`) inclu"
    "des its wait in the queue. Sagas/s is the finished sagas over the span from the "
    "first saga's start to the last one's finish. With failures, sagas that fail end "
    "after fewer steps, hence the higher rate. *Problems* counts what the crash scena"
    "rio checks (no command applied twice by a participant, no compensation for a ste"
    "p that never ran, every saga completed or fully compensated; `benchmarks/saga_cr"
    "ash.py`), here without kills."
)
"""What the page's figures mean."""


def sagas_report(result: dict[str, Any]) -> str:
    """The run's README.md."""
    lines = report.header("Order sagas per second", result)
    lines += [
        "| injected failures | sagas | completed | failed | sagas/s | p50 ms | p99 ms | problems |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['failure_rate']:.0%} | {r['sagas_placed']} | {r['sagas'].get('completed', 0)} "
            f"| {r['sagas'].get('failed', 0)} | {r.get('sagas_per_s', 0):,.1f} "
            f"| {r.get('duration_p50_ms', 0):,.0f} | {r.get('duration_p99_ms', 0):,.0f} "
            f"| {len(r['problems'])} |"
        )
    lines += ["", EXPLAINED]
    return "\n".join(lines) + "\n"


def sagas_plot(result: dict[str, Any], path: Path) -> None:
    """Sagas/s and saga duration p50/p99 per injected failure rate, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    labels = [f"{r['failure_rate']:.0%} failures" for r in rows]
    fig, (rate, took) = plt.subplots(1, 2, figsize=(10, 4))
    rate.bar(labels, [r.get("sagas_per_s", 0) for r in rows], color="navy")
    rate.set_ylabel("sagas finished per second")
    rate.set_title("Throughput")
    x = range(len(rows))
    for offset, key, name, color in (
        (-0.2, "duration_p50_ms", "p50", "tab:blue"),
        (0.2, "duration_p99_ms", "p99", "deepskyblue"),
    ):
        took.bar([i + offset for i in x], [r.get(key, 0) / 1000 for r in rows], 0.4,
                 label=name, color=color)  # fmt: skip
    took.set_xticks(list(x), labels)
    took.set_ylabel("saga duration, s")
    took.set_title("Duration, start to outcome (queueing included)")
    took.legend()
    fig.suptitle(
        f"Order sagas: {rows[0]['sagas_placed'] if rows else 0:,} placed at once, one worker"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sagas", type=int, default=2000)
    ap.add_argument("--rates", default="0,0.1", help="injected failure rates, comma-separated")
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument("--reference", action="store_true", help="write to docs/benchmarks/sagas/")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {
        "scenario": "sagas",
        "command": report.command_line("benchmarks.sagas", argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": report.machine(),
        "args": vars(args),
        "results": [],
    }
    for rate in (float(r) for r in args.rates.split(",")):
        log(f"{args.sagas} sagas, {rate:.0%} injected failures")
        workdir = Path(tempfile.mkdtemp(prefix="eventide-sagas-"))
        found = run(args.broker, args.sagas, 0, rate, chunks=1, pause=0.0, workdir=workdir, log=log)
        result["results"].append(found)
        log(
            f"  {found.get('sagas_per_s')} sagas/s, p50 {found.get('duration_p50_ms')} ms, "
            f"p99 {found.get('duration_p99_ms')} ms; {len(found['problems'])} problems"
        )
    markdown = sagas_report(result) + "\n![Sagas per second and saga durations](sagas.png)\n"
    out = report.run_dir("sagas", args.reference)
    sagas_plot(result, out / "sagas.png")
    report.write(out, result, markdown, args.reference)
    print(markdown)
    return 1 if any(r["problems"] for r in result["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
