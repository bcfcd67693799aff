"""Where a benchmark run's results go, what machine they came from, and the plots' style.

Every scenario writes one folder per run: ``result.json`` (every figure,
the arguments, the machine), ``README.md`` (the command, the machine, the
tables, the plots) and its PNG plots. By default the folder is
``benchmarks/results/<scenario>-<time>/`` (ignored by git); with
``--reference`` it is ``docs/benchmarks/<scenario>/``, replacing the
reference run kept there, and ``docs/benchmarks/README.md``, the index of
the kept runs, is written again from every scenario's ``result.json``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = ROOT / "docs" / "benchmarks"

SCENARIOS: dict[str, str] = {
    "throughput": "Eventide against Quix Streams, a plain aiokafka consumer and a naive Faust "
    "agent on the same pre-loaded order events; recovery from changelogs "
    "(`python -m benchmarks`)",
    "scaling": "1, 2 and 4 Eventide worker processes of one group on 8 partitions: total "
    "events/s and each worker's CPU per event (`python -m benchmarks`)",
    "scaling-cluster": "the scaling rows on a three-broker cluster (replication factor 3, "
    "min.insync.replicas 2), standby replicas off and on "
    "(`python -m benchmarks --only scaling --cluster 3 --standby 0,1`)",
    "latency": "end-to-end latency p50/p95/p99 of one worker at fixed offered loads "
    "(`python -m benchmarks`)",
    "drain": "the issue-#4 drain: the bare-consumer ceiling, one worker, the rebuild and the "
    "naive Faust agent on about a million Avro events (`python -m benchmarks.drain`)",
    "crash": "kill -9 of the worker during processing, then every read model audited "
    "(`python -m benchmarks.crash`)",
    "faults": "the fault matrix: kill -9, slow events, rebalance churn, damaged stores, "
    "offset resets, badly keyed records, compaction, network partitions, each under a steady "
    "stream, every read model audited (`python -m benchmarks.faults`)",
    "codecs": "encode and decode rates of the event codecs against plain orjson "
    "(`python -m benchmarks.codecs`)",
    "commands": "the command API and the outbox relay: commands/s, latency, relay lag "
    "(`python -m benchmarks.commands`)",
    "security": "drain rate and command rate with TLS + SCRAM + ACLs + personal-data "
    "encryption beside plaintext, and what each factor costs (`python -m benchmarks.security`)",
    "sagas": "order sagas per second and saga duration p50/p99 with 0 % and 10 % injected "
    "failures, three demo participants (`python -m benchmarks.sagas`)",
    "rabbitmq": "RabbitMQ in: `eventide bridge rabbitmq` messages/s from a queue to records "
    "acknowledged by Kafka, beside a bare aio-pika consumer and the figure quoted for one "
    "queue (`python -m benchmarks.rabbitmq`)",
}
"""Scenario (folder name under docs/benchmarks/) → what it measures."""

COLORS = {
    "eventide": "tab:blue",
    "quix": "tab:orange",
    "aiokafka": "tab:green",
    "faust": "tab:red",
    "other": "tab:gray",
}
"""One colour per implementation, the same in every plot."""


def color_of(name: str) -> str:
    """The colour of the implementation ``name`` names."""
    low = name.lower()
    for key, value in COLORS.items():
        if key in low:
            return value
    return COLORS["other"]


def command_line(module: str, argv: Sequence[str] | None, env: Sequence[str] = ()) -> str:
    """The command that reproduces this run, as typed from the repository root, with the
    variables of ``env`` that are set (those the scenario reads instead of options)."""
    args = list(sys.argv[1:] if argv is None else argv)
    prefix = [f"{name}={os.environ[name]}" for name in env if name in os.environ]
    return shlex.join([*prefix, "python", "-m", module, *args])


def kafka_version() -> str:
    """The broker version the dev broker runs: ``kafka.version`` of deploy/kafka/pom.xml."""
    try:
        pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    except OSError:
        return "?"
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return found.group(1) if found else "?"


def machine(cluster_nodes: int = 0) -> dict[str, Any]:
    """CPU model, cores, memory, Python, Kafka, the commit and the load before the run;
    ``cluster_nodes``: the broker is a dev cluster of that many nodes."""
    brokers = (
        f"{cluster_nodes} KRaft nodes (broker and controller each, -Xmx512m)"
        if cluster_nodes
        else "one KRaft node"
    )
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kafka": f"{kafka_version()}, {brokers} on the same machine",
        "os": platform.platform(),
    }
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        info["memory_gib"] = round(mem_kib / 1024 / 1024, 1)
        models = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        if models:
            info["cpu"] = models[0].split(":", 1)[1].strip()
        info["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    info["commit"] = _git("rev-parse", "--short", "HEAD")
    info["tree_modified"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_line(m: dict[str, Any]) -> str:
    """The machine in one markdown sentence."""
    load = "/".join(m.get("load_average", ["?"]))
    commit = m.get("commit") or "?"
    if m.get("tree_modified"):
        commit += " (with uncommitted changes)"
    return (
        f"{m.get('cores')} cores ({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB, "
        f"Python {m.get('python')}, Kafka {m.get('kafka')}; commit {commit}; "
        f"load average before the run {load} (1/5/15 min)."
    )


def run_dir(scenario: str, reference: bool, stamp: str | None = None) -> Path:
    """A fresh folder for one scenario's results (see the module's doc)."""
    if reference:
        out = REFERENCE / scenario
        if out.exists():
            # what a run writes; other files (earlier A/B notes) stay
            for old in [out / "README.md", out / "result.json", *out.glob("*.png")]:
                old.unlink(missing_ok=True)
    else:
        out = RESULTS / f"{scenario}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_average() -> list[str]:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?", "?", "?"]


def header(title: str, result: dict[str, Any]) -> list[str]:
    """A report's first lines: title, command, date, machine (and the load after
    the run, and the run's ``--note``, when there are)."""
    after = result.get("load_average_after")
    lines = [
        f"# {title}",
        "",
        "```sh",
        result["command"],
        "```",
        "",
        f"Run {result['when']} on {machine_line(result['machine'])}"
        + (f" Load average after the run {'/'.join(after)}." if after else ""),
        "",
    ]
    note = result.get("args", {}).get("note")
    return lines + ([note, ""] if note else [])


def write(out: Path, result: dict[str, Any], markdown: str, reference: bool) -> None:
    """``result.json`` and ``README.md`` into ``out``; the index too for a reference run."""
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "README.md").write_text(markdown)
    if reference:
        write_index()
    print(f"results: {out}/ (README.md, result.json, plots)")


def write_index() -> None:
    """docs/benchmarks/README.md: every scenario, its latest reference run or how to make one."""
    lines = [
        "# Benchmark reference runs",
        "",
        "One folder per scenario, each holding the reference run of that scenario:",
        "`README.md` (the exact command, the machine, the tables, the plots), `result.json`",
        "(every figure) and the PNG plots. A run with `--reference` replaces the folder's",
        "files and writes this index again; without it, results go to",
        "`benchmarks/results/<scenario>-<time>/` (not kept by git). What each figure means",
        "and how it is timed: [`benchmarks/README.md`](../../benchmarks/README.md).",
        "",
        "Figures move with whatever else the machine runs: compare rows of the same run",
        "(the ratios), not absolute rates across runs. Each report gives the load average",
        "before the run and, per measured window, the cores used by other programs.",
        "",
        "| scenario | what it measures | reference run | in that run |",
        "|---|---|---|---|",
    ]
    for name, what in SCENARIOS.items():
        path = REFERENCE / name / "result.json"
        seen = ""
        if path.exists():
            result = json.loads(path.read_text())
            m = result.get("machine", {})
            ran = (
                f"[{result.get('when', '?')}]({name}/README.md), "
                f"{m.get('cores', '?')} cores, commit {m.get('commit') or '?'}"
            )
            try:
                seen = HEADLINES[name](result)
            except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
                seen = "see its page"
        else:
            ran = "none kept yet"
        notes = sorted(p.name for p in (REFERENCE / name).glob("*.md") if p.name != "README.md")
        if notes:
            ran += "; also " + ", ".join(f"[{n.removesuffix('.md')}]({name}/{n})" for n in notes)
        lines.append(f"| {name} | {what} | {ran} | {seen} |")
    lines += [
        "",
        "To replace a reference run, run the command at the top of its README.md (it",
        "carries `--reference`) with the bench virtualenv's Python (`.venv-bench/bin/python`,",
        "see [`benchmarks/README.md`](../../benchmarks/README.md)) on a quiet machine, and",
        "commit the folder.",
        "",
    ]
    REFERENCE.mkdir(parents=True, exist_ok=True)
    (REFERENCE / "README.md").write_text("\n".join(lines))


def _throughput(r: dict[str, Any]) -> str:
    rows = r["rows"]
    quix = rows.get("quix_streams", {}).get("events_per_s")
    parts = [
        f"{label} {rows[key]['events_per_s']:,.0f}/s ({ratio(rows[key]['events_per_s'], quix)} "
        "Quix Streams)"
        for key, label in (("eventide_orders", "orders only"), ("eventide", "orders + customers"))
        if key in rows and quix
    ]
    return "Eventide " + "; ".join(parts) if parts else "see its page"


def _scaling(r: dict[str, Any]) -> str:
    standby = bool(r.get("args", {}).get("standby"))
    return "; ".join(
        f"{row['workers']} worker{'s' if row['workers'] > 1 else ''}"
        + (f" ({row.get('standby_replicas')} standby)" if standby else "")
        + f": {row['events_per_s']:,.0f}/s, {row['cpu_us_per_event']:.0f} µs CPU/event"
        for row in r["rows"]
    )


def _latency(r: dict[str, Any]) -> str:
    return "; ".join(
        f"p99 {row['p99_s'] * 1000:,.0f} ms at {row['offered_per_s']:,}/s"
        for row in r["rows"]
        if row["p99_s"] is not None
    )


def _drain(r: dict[str, Any]) -> str:
    e, read = r["eventide"], r["ceiling"].get("read", {}).get("events_per_s")
    naive = (r.get("naive_faust") or {}).get("events_per_s")
    return (
        f"Eventide {e['events_per_s']:,.0f}/s on {r['events']:,} events"
        + (f", {ratio(e['events_per_s'], read)} the bare read-only consumer" if read else "")
        + (f", {ratio(e['events_per_s'], naive)} the naive Faust agent" if naive else "")
    )


def _crash(r: dict[str, Any]) -> str:
    return (
        "; ".join(
            f"{t}: {r[f'{t}_audit']['lost']} lost, {r[f'{t}_audit']['double_applied']} "
            "double-applied"
            for t in ("orders", "customers")
        )
        + f" ({r['kills']} kills)"
    )


def _faults(r: dict[str, Any]) -> str:
    rows = r["rows"]
    clean = sum(
        1 for x in rows if not x["error"] and x["lost"] == x["double_applied"] == x["other"] == 0
    )
    worst = max((x["recovery_s"] or 0.0 for x in rows), default=0.0)
    return (
        f"{clean} of {len(rows)} cases 0 lost / 0 double-applied / 0 other; "
        f"worst recovery {worst:.0f} s"
    )


def _codecs(r: dict[str, Any]) -> str:
    placed = r["results"].get("order.placed") or next(iter(r["results"].values()))
    rates = placed["rates"]
    return (
        f"order.placed decode: JSON {rates['json decode']:,.0f}/s, "
        f"Avro {rates['avro decode']:,.0f}/s"
    )


def _commands(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{x['backend']} {x['commands_per_s']:,.0f} commands/s, p99 {x['latency_p99_ms']:.0f} ms"
        for x in r["results"]
    )


def _security(r: dict[str, Any]) -> str:
    plain, secured = r["rows"]["plain"], r["rows"]["secured+pii"]
    parts = []
    for part, key, unit in (("drain", "events_per_s", "events/s"), ("commands",
                            "commands_per_s", "commands/s")):  # fmt: skip
        a, b = secured[part][key], plain[part][key]
        parts.append(f"{part} {ratio(a, b)} ({a:,.0f} vs {b:,.0f} {unit})")
    return "TLS + SCRAM + encryption / plaintext: " + ", ".join(parts)


def _sagas(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{x['failure_rate']:.0%} failures: {x['sagas_per_s']:,.1f} sagas/s, "
        f"p50 {x['duration_p50_ms']:,.0f} ms, p99 {x['duration_p99_ms']:,.0f} ms"
        for x in r["results"]
    )


def _rabbitmq(r: dict[str, Any]) -> str:
    x = r["results"]
    return (
        f"bridge {x['bridge_per_s']:,.0f} messages/s, bare consumer {x['baseline_per_s']:,.0f}/s "
        f"(quoted for one queue: {x['quoted_single_queue_per_s']:,}/s)"
    )


HEADLINES = {
    "throughput": _throughput,
    "scaling": _scaling,
    "scaling-cluster": _scaling,
    "latency": _latency,
    "drain": _drain,
    "crash": _crash,
    "faults": _faults,
    "codecs": _codecs,
    "commands": _commands,
    "security": _security,
    "sagas": _sagas,
    "rabbitmq": _rabbitmq,
}
"""Scenario → its main figures in one line, for the index."""


def ratio(value: float | None, base: float | None) -> str:
    """``value / base`` as ``1.23x``, or an empty cell."""
    if not value or not base:
        return ""
    return f"{value / base:.2f}x"


def hbars(
    path: Path,
    title: str,
    panels: list[tuple[str, list[tuple[str, float | None, str]]]],
    colors: dict[str, str] | None = None,
) -> None:
    """Horizontal bar panels side by side, one bar per implementation, values written on them.

    ``panels``: (x-axis label with its unit, [(bar label, value, text on the bar)]);
    a bar's colour is ``colors[label]``, else its implementation's (:func:`color_of`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rows = max(len(bars) for _, bars in panels)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.5 + 5 * len(panels), 1.4 + 0.55 * rows),
        squeeze=False,
        sharey=True,
    )
    for ax, (xlabel, bars) in zip(axes[0], panels, strict=True):
        labels = [b[0] for b in bars][::-1]
        values = [b[1] or 0.0 for b in bars][::-1]
        texts = [b[2] for b in bars][::-1]
        drawn = ax.barh(
            labels, values, color=[(colors or {}).get(label) or color_of(label) for label in labels]
        )
        ax.bar_label(drawn, labels=texts, padding=3, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, max(values or [1.0]) * 1.45 or 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
