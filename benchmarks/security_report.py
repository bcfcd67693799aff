"""The security scenario's rows, their ratios and its page (:mod:`benchmarks.security`).

Pure functions of a run's ``result.json`` (no broker): what each row is, the
figures compared, the ratios to the plaintext row and what each factor
(encryption, TLS + SCRAM) costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import report

ROWS: dict[str, dict[str, Any]] = {
    "plain": {"label": "plaintext", "secured": False, "encryption": False, "color": "tab:blue"},
    "plain+pii": {
        "label": "plaintext + encryption",
        "secured": False,
        "encryption": True,
        "color": "tab:cyan",
    },
    "secured+pii": {
        "label": "TLS + SCRAM + ACLs + encryption",
        "secured": True,
        "encryption": True,
        "color": "tab:red",
    },
    "secured": {
        "label": "TLS + SCRAM + ACLs",
        "secured": True,
        "encryption": False,
        "color": "tab:orange",
    },
}
"""Row name (``--rows``) → its label, whether it runs on the SASL_SSL broker, whether
personal fields are encrypted (EVENTIDE_PII_ENCRYPTION) and its colour in the plot."""

BASELINE = "plain"
SECURED = "secured+pii"

METRICS: list[tuple[str, str, str, str, bool]] = [
    ("drain", "events_per_s", "drain, events/s", "{:,.0f}", True),
    ("drain", "cpu_us_per_event", "drain, worker CPU µs/event", "{:.1f}", False),
    ("drain", "start_s", "worker start to ready, s", "{:.1f}", False),
    ("commands", "commands_per_s", "commands/s", "{:,.0f}", True),
    ("commands", "latency_p50_ms", "command latency p50, ms", "{:.1f}", False),
    ("commands", "latency_p99_ms", "command latency p99, ms", "{:.1f}", False),
    ("commands", "relay_lag_p50_ms", "relay lag p50, ms", "{:.1f}", False),
    ("commands", "relay_lag_p99_ms", "relay lag p99, ms", "{:.1f}", False),
    ("commands", "api_cpu_us_per_command", "API CPU µs/command", "{:,.0f}", False),
]
"""(part, key, label, format, higher is better) of each compared figure."""

FACTORS: list[tuple[str, str, str]] = [
    ("encryption", "plain+pii", "plain"),
    ("TLS + SCRAM + ACLs", "secured+pii", "plain+pii"),
    ("TLS + SCRAM + ACLs", "secured", "plain"),
    ("encryption", "secured+pii", "secured"),
    ("all together", "secured+pii", "plain"),
]
"""(what it adds, row with it, row without it): a factor's cost is the ratio of the two."""


def value(result: dict[str, Any], row: str, part: str, key: str) -> float | None:
    """A row's figure, or None when the row was not measured."""
    found = result["rows"].get(row, {}).get(part, {}).get(key)
    return None if found is None else float(found)


def quotient(a: float | None, b: float | None) -> float | None:
    """``a / b``, None when either is missing or ``b`` is 0."""
    if a is None or not b:
        return None
    return a / b


def comparison(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per figure: its value in every measured row and secured / plaintext."""
    lines = []
    for part, key, label, fmt, higher in METRICS:
        values = {row: value(result, row, part, key) for row in result["rows"]}
        lines.append(
            {
                "label": label,
                "format": fmt,
                "higher_is_better": higher,
                "values": values,
                "ratio": quotient(values.get(SECURED), values.get(BASELINE)),
            }
        )
    return lines


def factors(result: dict[str, Any]) -> list[dict[str, Any]]:
    """What each factor costs: drain and command rate (and CPU) with it / without it,
    for every pair of rows the run measured."""
    out = []
    for what, with_, without in FACTORS:
        if with_ not in result["rows"] or without not in result["rows"]:
            continue
        ratios = {
            key: quotient(value(result, with_, part, key), value(result, without, part, key))
            for part, key in (
                ("drain", "events_per_s"),
                ("drain", "cpu_us_per_event"),
                ("commands", "commands_per_s"),
                ("commands", "api_cpu_us_per_command"),
            )
        }
        out.append({"factor": what, "with": with_, "without": without, "ratios": ratios})
    return out


def _x(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def security_report(result: dict[str, Any], out: Path) -> str:
    """The scenario's page; writes ``throughput.png`` beside it."""
    plot(result, out / "throughput.png")
    return security_markdown(result)


def shared_machine(machine: dict[str, Any]) -> str | None:
    """A warning when the machine was busier than its cores before the run, else None."""
    try:
        load, cores = float(machine["load_average"][0]), int(machine["cores"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if load <= cores:
        return None
    return (
        f"**The machine was shared**: load average {load:.2f} (1 min) before the run on "
        f"{cores} cores, other programs ran throughout (their cores per window are below). "
        "The rows of this run share that noise; compare their ratios, not their rates with "
        "other runs."
    )


def security_markdown(result: dict[str, Any]) -> str:
    """The scenario's page: the rows side by side, the ratios, the factors."""
    names = list(result["rows"])
    labels = [ROWS[n]["label"] for n in names]
    lines = report.header("Security: TLS + SCRAM + encryption beside plaintext", result)
    warning = shared_machine(result["machine"])
    if warning:
        lines += [warning, ""]
    lines += [
        "| figure | " + " | ".join(labels) + " | secured / plaintext |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for line in comparison(result):
        cells = [
            "" if line["values"][n] is None else line["format"].format(line["values"][n])
            for n in names
        ]
        lines.append(f"| {line['label']} | " + " | ".join(cells) + f" | {_x(line['ratio'])} |")
    lines += ["", "What each factor costs (the row with it / the row without it):", ""]
    lines += [
        "| factor | rows | drain events/s | worker CPU/event | commands/s | API CPU/command |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for f in factors(result):
        r = f["ratios"]
        lines.append(
            f"| {f['factor']} | {f['with']} / {f['without']} | {_x(r['events_per_s'])} | "
            f"{_x(r['cpu_us_per_event'])} | {_x(r['commands_per_s'])} | "
            f"{_x(r['api_cpu_us_per_command'])} |"
        )
    drains = [result["rows"][n]["drain"] for n in names]
    cmds = [result["rows"][n]["commands"] for n in names]
    first = drains[0]
    lines += [
        "",
        f"Each row pre-loads the same {first['events']:,} Avro events (user.created per "
        "customer, order lifecycles with 2 % duplicates) into fresh topics and one worker "
        "(orders + customers) drains them, timed from its /health turning ready to its "
        "group's last commit (`benchmarks/timing.py`); with encryption the customers' "
        "e-mail and name are pre-loaded as ciphertext, each customer under a data key of "
        "the keys topic. Then the command API, relay inside, SQLite outbox, takes "
        f"{cmds[0]['commands']:,} commands from {cmds[0]['concurrency']} keep-alive clients: "
        "per customer, create them (personal fields, a new data key with encryption), "
        "place, pay and ship an order (`benchmarks/commands.py`). On the secured broker "
        "(SASL_SSL, SCRAM-SHA-512, deny-by-default ACLs) the worker connects as `worker`, "
        "the API and its relay as `relay`, the pre-loader and the progress polls as `admin`.",
        "",
        "Read models compared over HTTP with the state computed offline (customers "
        "decrypted): "
        + ", ".join(
            f"{ROWS[n]['label']} {d['mismatches']} mismatches in {d['read_models_checked']:,}"
            for n, d in zip(names, drains, strict=True)
        )
        + ". Cores used by other programs during each drain: "
        + ", ".join(f"{d['other_cores']:.2f}" for d in drains)
        + "; during each command run: "
        + ", ".join(f"{c['cores'].get('other', 0.0):.2f}" for c in cmds)
        + ".",
        "",
        "![Drain and command rates, CPU per event and per command](throughput.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """The rows side by side: drain and command rates, CPU per event and per command."""
    names = list(result["rows"])
    labels = [ROWS[n]["label"] for n in names]
    colors = {ROWS[n]["label"]: ROWS[n]["color"] for n in names}

    def panel(part: str, key: str, title: str, fmt: str, unit: str) -> tuple[str, list[Any]]:
        base = value(result, BASELINE, part, key)
        bars = []
        for n, label in zip(names, labels, strict=True):
            v = value(result, n, part, key)
            text = "" if v is None else f"{fmt.format(v)}{unit}  {report.ratio(v, base)}"
            bars.append((label, v, text))
        return title, bars

    faster = "(higher is better; x plaintext)"
    report.hbars(
        path,
        "Plaintext vs TLS + SCRAM + encryption, one worker / one command API each",
        [
            panel("drain", "events_per_s", f"drain, events/s {faster}", "{:,.0f}", "/s"),
            panel("drain", "cpu_us_per_event", "worker CPU µs per event", "{:.1f}", " µs"),
            panel("commands", "commands_per_s", f"commands/s {faster}", "{:,.0f}", "/s"),
            panel("commands", "api_cpu_us_per_command", "API CPU µs per command", "{:,.0f}", " µs"),
        ],
        colors,
    )
