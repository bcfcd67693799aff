"""The fault matrix: every case under a steady stream, every read model audited.

    python -m benchmarks.faults [--cases kill,sst-corrupt] [--small] [--reference]

Each case runs its worker(s) while users and orders (with duplicates) are
published at ``--rate`` events/s, injects its fault, and times the recovery
(fault → the worker ready and everything published by the fault's end
committed). When the stream stops and the group has drained, every order and
customer is fetched over HTTP and compared with the state computed offline
from exactly the events published: lost, double-applied, other differences.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.procs import ROOT, log
from eventide.tools import devbroker
from streams.settings import Settings

from .harness import Options, Outcome, Ports, run_case
from .matrix import CASES, UNAVAILABLE


def run_matrix(
    opts: Options, names: list[str], after: Callable[[list[Outcome]], None] | None = None
) -> list[Outcome]:
    """Run the cases ``names`` in order; a case that breaks down is a failed row.
    ``after`` gets the rows so far after each case (the report, kept up to date)."""
    ports = Ports(opts.port_base)
    rows: list[Outcome] = []
    for name in names:
        _, body, overrides = CASES[name]
        rows.append(run_case(name, body, opts, ports, **overrides))
        if after is not None:
            after(rows)
    return rows


def table(rows: list[Outcome]) -> list[str]:
    """The matrix as markdown rows."""
    lines = [
        "| case | events | lost | double-applied | other | recovery s | faults |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        recovery = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        name = r.case if not r.error else f"{r.case} (FAILED: {r.error})"
        lines.append(
            f"| {name} | {r.events:,} | {r.lost} | {r.double_applied} | {r.other} | "
            f"{recovery} | {r.faults} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, in this order")
    ap.add_argument("--small", action="store_true", help="the short form: fewer repetitions")
    ap.add_argument("--rate", type=int, default=400, help="order events published per second")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--broker", default="kafka://127.0.0.1:39092")
    ap.add_argument(
        "--private-broker-port",
        type=int,
        default=39094,
        help="port of the broker the network-partition cases start for themselves "
        "(it takes the next two ports too)",
    )
    ap.add_argument(
        "--cluster-port",
        type=int,
        default=39110,
        help="first port of the three-broker cluster of the cluster cases (the next two "
        "ports, and the three 10 above for its controllers)",
    )
    ap.add_argument(
        "--port-base", type=int, default=0, help="first port for workers and proxies (0: any)"
    )
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--workdir", type=Path, help="where the cases keep data and logs (default: a temp folder)"
    )
    ap.add_argument("--reference", action="store_true", help="keep under docs/benchmarks/faults/")
    args = ap.parse_args(argv)
    # SIGTERM (a timeout, a ^C from a supervisor) unwinds: every case stops its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES and n not in UNAVAILABLE]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    command = report.command_line("benchmarks.faults", argv)
    machine = report.machine()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="eventide-faults-", dir=args.workdir))
    opts = Options(
        broker=args.broker,
        workdir=workdir,
        rate=args.rate,
        small=args.small,
        partitions=args.partitions,
        port_base=args.port_base,
        private_broker_port=args.private_broker_port,
        cluster_port=args.cluster_port,
        seed=args.seed,
    )
    base = Settings.from_env(
        {"EVENTIDE_BROKER_URL": args.broker, "EVENTIDE_STATE_DIR": str(ROOT / ".eventide")}
    )
    started_broker = not devbroker.is_answering(base)
    if started_broker:
        devbroker.start(base, log)
    started = time.monotonic()
    out = report.run_dir("faults", args.reference)
    result: dict[str, Any] = {
        "scenario": "faults",
        "command": command,
        "when": when,
        "machine": machine,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "unavailable": {n: UNAVAILABLE[n] for n in names if n in UNAVAILABLE},
        "cases": {n: CASES[n][0] for n in names if n in CASES},
    }

    def keep(rows: list[Outcome]) -> str:
        result["rows"] = [r.__dict__ for r in rows]
        result["seconds"] = round(time.monotonic() - started, 1)
        result["load_after"] = _load()
        result["complete"] = len(rows) == len(result["cases"])
        markdown = faults_report(result)
        report.write(out, result, markdown, args.reference)
        return markdown

    try:
        rows = run_matrix(opts, [n for n in names if n in CASES], after=keep)
    finally:
        if started_broker:
            devbroker.stop(base, log)
    print(keep(rows))
    if all(r.clean for r in rows):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and data of the cases kept in {workdir}")
    return 0 if all(r.clean for r in rows) else 1


def _load() -> list[str]:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return []


def faults_report(result: dict[str, Any]) -> str:
    """The matrix's page."""
    rows = [Outcome(**r) for r in result["rows"]]
    lines = report.header("Faults: the fault matrix under a steady stream", result)
    a = result["args"]
    lines += [
        f"Each case ran while users and then orders (3 % duplicates) were published at "
        f"{a['rate']:,} order events/s on {a['partitions']} partitions"
        f"{' (short form)' if a['small'] else ''}; {result['seconds']:,.0f} s in all, load "
        f"average after the run {'/'.join(result.get('load_after') or ['?'])}."
        + (
            ""
            if result.get("complete", True)
            else " **Incomplete: the run is still going or "
            "was stopped; the rows are the cases done.**"
        ),
        "",
        *table(rows),
        "",
        "*events*: records published during the case; *lost*: a key missing or with fewer "
        "events (orders) or orders (customers) than published; *double-applied*: more; "
        "*other*: any other difference, a badly keyed order applied or not dead-lettered; "
        "*recovery s*: the worst, over the case's faults, from the fault to the moment the "
        "worker was ready and had committed every event published by the fault's end; "
        "*faults*: faults injected and timed.",
        "",
        "| case | what happens |",
        "|---|---|",
        *(f"| {name} | {what} |" for name, what in result["cases"].items()),
        "",
    ]
    if result["unavailable"]:
        lines += ["Not run here:", ""]
        lines += [f"- **{n}**: {why}" for n, why in result["unavailable"].items()]
        lines.append("")
    notes = [f"- {r.case}: {n}" for r in rows for n in r.notes if not n.startswith("case took")]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
