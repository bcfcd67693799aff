"""Micro-benchmark of the event codecs: encode and decode rates per event, Avro and JSON.

    python -m benchmarks.codecs                      # every event, 20k records each
    python -m benchmarks.codecs --events 50000 --only order.placed --repeat 7

For each event of the registry it builds a set of realistic, distinct events,
then measures, in one process and one run:

- ``ceiling decode``: ``orjson.loads`` of the JSON bytes, no validation: the
  fastest a JSON consumer can go, and the baseline of every decode ratio;
- ``json decode`` / ``avro decode``: :meth:`EventCodec.decode` with the
  record's headers: limits, content type, parsing, schema validation, the
  :class:`Envelope`;
- ``ceiling encode``: ``orjson.dumps`` of the envelope dict, no validation,
  the baseline of every encode ratio;
- ``json encode`` / ``avro encode``: :meth:`EventCodec.encode_json` /
  :meth:`EventCodec.encode_avro`, which validate first.

Each figure is the best of ``--repeat`` passes over the records (the least
disturbed by other processes). Ratios are rate / ceiling rate from the same
run, so they compare across machines better than the absolute rates. Results
are printed as a table and written (README.md, result.json, throughput.png)
to ``benchmarks/results/codecs-<time>/``, or with ``--reference`` to
``docs/benchmarks/codecs/`` (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from schemas.codecs import CONTENT_TYPE_AVRO, EventCodec
from schemas.envelope import CONTENT_TYPE_JSON, Envelope, new_event
from schemas.registry import SchemaEntry

from . import report as report_

KINDS = (
    "ceiling decode",
    "json decode",
    "avro decode",
    "ceiling encode",
    "json encode",
    "avro encode",
)


def sample_value(schema: Any, field: str, rng: random.Random, n: int) -> Any:
    """A realistic value for ``field`` of type ``schema`` (the n-th event of a set)."""
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        return None if rng.random() < 0.2 else sample_value(branches[0], field, rng, n)
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            return {f["name"]: sample_value(f["type"], f["name"], rng, n) for f in schema["fields"]}
        if kind == "array":
            return [sample_value(schema["items"], field, rng, n) for _ in range(rng.randint(1, 3))]
        if kind == "enum":
            return rng.choice(schema["symbols"])
        if kind == "map":
            return {f"k{i}": sample_value(schema["values"], field, rng, n) for i in range(2)}
        return sample_value(kind, field, rng, n)
    if schema == "string":
        if field == "currency":
            return rng.choice(["EUR", "USD", "GBP"])
        if field == "email":
            return f"user{n}@example.com"
        if field.endswith("Id") or field in ("sku", "trackingNumber"):
            return f"{field[:3]}-{n:08d}"
        return rng.choice(["customer changed their mind", "DHL", "Ada Lovelace", "out of stock"])
    if schema in ("int", "long"):
        return rng.randint(1, 5)
    if schema in ("double", "float"):
        return round(rng.uniform(1, 200), 2)
    if schema == "boolean":
        return rng.random() < 0.5
    return None


def sample_events(entry: SchemaEntry, count: int, seed: int) -> list[Envelope]:
    """``count`` distinct events of ``entry``'s schema."""
    rng = random.Random(f"{seed}-{entry.name}")
    start = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
    return [
        new_event(
            entry.name,
            sample_value(entry.payload, "data", rng, n),
            source="benchmark",
            version=f"{entry.version}.0",
            timestamp=start + timedelta(milliseconds=n),
        )
        for n in range(count)
    ]


def best_rate(run: Callable[[], None], count: int, repeat: int) -> float:
    """Events per second of the fastest of ``repeat`` passes over ``count`` events."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def measure(codec: EventCodec, events: list[Envelope], repeat: int) -> dict[str, float]:
    """Rates (events/s) of every kind in :data:`KINDS` for one event's records."""
    as_json = [codec.encode_json(e) for e in events]
    as_avro = [codec.encode_avro(e) for e in events]
    json_headers = codec.headers(events[0], CONTENT_TYPE_JSON)
    avro_headers = codec.headers(events[0], CONTENT_TYPE_AVRO)
    decode, loads, dumps = codec.decode, orjson.loads, orjson.dumps
    encode_json, encode_avro = codec.encode_json, codec.encode_avro
    # Correctness first: both forms must give back what was encoded.
    for event, j, a in zip(events[:100], as_json, as_avro, strict=False):
        assert decode(j, json_headers) == decode(a, avro_headers) == event

    def ceiling_decode() -> None:
        for raw in as_json:
            loads(raw)

    def json_decode() -> None:
        codec.forget()  # every record decoded for real, not served from the memo
        for raw in as_json:
            decode(raw, json_headers)

    def avro_decode() -> None:
        codec.forget()
        for raw in as_avro:
            decode(raw, avro_headers)

    def ceiling_encode() -> None:
        for e in events:
            dumps(e.to_dict())

    def json_encode() -> None:
        for e in events:
            encode_json(e)

    def avro_encode() -> None:
        for e in events:
            encode_avro(e)

    runs = (ceiling_decode, json_decode, avro_decode, ceiling_encode, json_encode, avro_encode)
    rates = {
        kind: best_rate(run, len(events), repeat) for kind, run in zip(KINDS, runs, strict=True)
    }
    rates["json bytes"] = sum(map(len, as_json)) / len(as_json)
    rates["avro bytes"] = sum(map(len, as_avro)) / len(as_avro)
    return rates


def ratios(rates: dict[str, float]) -> dict[str, float]:
    """Each codec's rate as a fraction of the ceiling measured in the same run."""
    return {
        "json decode": rates["json decode"] / rates["ceiling decode"],
        "avro decode": rates["avro decode"] / rates["ceiling decode"],
        "json encode": rates["json encode"] / rates["ceiling encode"],
        "avro encode": rates["avro encode"] / rates["ceiling encode"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.codecs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=20_000, help="records per event (20000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best counts (5)")
    parser.add_argument("--only", action="append", help="benchmark only this event (repeatable)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample events (7)")
    parser.add_argument("--output", type=Path, help="also write the JSON results to this file")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="write the report to docs/benchmarks/codecs/ (kept in git)",
    )
    args = parser.parse_args(argv)
    command = report_.command_line("benchmarks.codecs", argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be at least 1")

    codec = EventCodec()
    entries = [codec.registry.latest(name) for name in codec.registry.names]
    selected = [e for e in entries if e is not None and (not args.only or e.name in args.only)]
    if not selected:
        parser.error(f"no such event: {', '.join(args.only)} (see `eventide schemas list`)")

    results: dict[str, Any] = {}
    started = time.perf_counter()
    for n, entry in enumerate(selected, start=1):
        print(f"[{n}/{len(selected)}] {entry.name} {entry.version} ...", end="", file=sys.stderr)
        sys.stderr.flush()
        rates = measure(codec, sample_events(entry, args.events, args.seed), args.repeat)
        results[entry.name] = {"rates": rates, "ratios": ratios(rates)}
        print(
            f" json decode {rates['json decode']:,.0f}/s,"
            f" avro decode {rates['avro decode']:,.0f}/s",
            file=sys.stderr,
        )

    print(_table(results))
    report = {
        "benchmark": "codecs",
        "scenario": "codecs",
        "command": command,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.perf_counter() - started, 1),
        "parameters": {"events": args.events, "repeat": args.repeat, "seed": args.seed},
        "machine": {
            **report_.machine(),
            "orjson": version("orjson"),
            "fastavro": version("fastavro"),
        },
        "units": "rates in events per second; ratios are rate / ceiling rate of the same run",
        "results": results,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.output}", file=sys.stderr)
    out = report_.run_dir("codecs", args.reference)
    report_.write(out, report, codecs_report(report, out), args.reference)
    return 0


def codecs_report(result: dict[str, Any], out: Path) -> str:
    """The codecs scenario's page; writes ``throughput.png`` beside it."""
    lines = report_.header("Codecs: encode and decode rates per event", result)
    lines += [
        "| event | JSON bytes | Avro bytes | "
        + " | ".join(f"{k}/s" for k in KINDS)
        + " | JSON decode / ceiling | Avro decode / ceiling |",
        "|---|" + "---:|" * (len(KINDS) + 4),
    ]
    for name, r in result["results"].items():
        rates, rel = r["rates"], r["ratios"]
        lines.append(
            f"| {name} | {rates['json bytes']:.0f} | {rates['avro bytes']:.0f} | "
            + " | ".join(f"{rates[k]:,.0f}" for k in KINDS)
            + f" | {rel['json decode']:.2f} | {rel['avro decode']:.2f} |"
        )
    p = result["parameters"]
    lines += [
        "",
        f"Each rate is the best of {p['repeat']} passes over {p['events']:,} distinct events "
        "in one process (`benchmarks/codecs.py`); *ceiling* is plain orjson without "
        "validation, the baseline of the ratios measured in the same run.",
        "",
        "![Decode and encode rates per event](throughput.png)",
        "",
    ]
    _codecs_plot(result["results"], out / "throughput.png")
    return "\n".join(lines)


def _codecs_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    labels = ("orjson, no validation (the ceiling)", "EventCodec, JSON", "EventCodec, Avro")
    fig, axes = plt.subplots(1, 2, figsize=(13, 2.0 + 0.45 * len(names)), squeeze=False)
    for ax, side in zip(axes[0], ("decode", "encode"), strict=True):
        kinds = [f"ceiling {side}", f"json {side}", f"avro {side}"]
        height = 0.8 / len(kinds)
        for i, kind in enumerate(kinds):
            ax.barh(
                [n + (i - 1) * height for n in range(len(names))],
                [results[name]["rates"][kind] / 1000 for name in names],
                height=height,
                label=labels[i],
                color=("tab:gray", "tab:blue", "tab:cyan")[i],
            )
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"thousand events/s, {side} (higher is better)")
        ax.grid(axis="x", alpha=0.3)
    handles, texts = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.965), fontsize=9)
    fig.suptitle("EventCodec against plain orjson, one process, best pass")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(results: dict[str, Any]) -> str:
    head = (
        f"{'event':<26}"
        + "".join(f"{k:>16}" for k in KINDS)
        + f"{'json/ceil':>11}{'avro/ceil':>11}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        rates, rel = r["rates"], r["ratios"]
        lines.append(
            f"{name:<26}"
            + "".join(f"{rates[k]:>14,.0f}/s" for k in KINDS)
            + f"{rel['json decode']:>11.2f}{rel['avro decode']:>11.2f}"
        )
    lines.append("(rates: events/s, best pass; */ceil: decode rate / orjson.loads rate, same run)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
