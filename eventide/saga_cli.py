"""``eventide participant`` and ``eventide saga show`` (added to ``eventide`` by cli.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import click

from schemas.exceptions import EventideError
from streams.kafka_clients import check_kafka
from streams.settings import Settings

from .tools.participant import SERVICES, run_participants
from .tools.saga_demo import fetch_saga, format_saga


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except EventideError as exc:
        click.echo(f"eventide: error: {exc}", err=True)
        sys.exit(2)


@click.command("participant")
@click.argument("services", nargs=-1, type=click.Choice([*SERVICES, "all"]))
def participant(services: tuple[str, ...]) -> None:
    """Run demo saga participants: inventory, payment, shipment (or all).

    Each answers its command topic on saga-replies, idempotent by command id,
    logging every applied command to EVENTIDE_PARTICIPANT_LOG_DIR/<service>.jsonl;
    EVENTIDE_PARTICIPANT_FAILURE_RATE, _LATENCY_MS and _NEVER_ANSWER shape its answers.
    """

    if not services:
        raise click.UsageError("name a participant: inventory, payment, shipment or all")
    chosen = SERVICES if "all" in services else tuple(dict.fromkeys(services))
    s = _settings()
    asyncio.run(check_kafka(s, purpose="eventide-participant"))
    logging.basicConfig(
        level=s.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run_participants(s, chosen, echo=click.echo))


@click.group()
def saga() -> None:
    """Inspect order sagas (run by the workers' saga projection)."""


@saga.command("show")
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True, help="The document GET /sagas/{id} serves.")
def saga_show(order_id: str, as_json: bool) -> None:
    """Print the saga of ORDER_ID: state, step, compensations and history."""

    s = _settings()
    try:
        code, body = fetch_saga(s, order_id)
    except OSError as exc:
        click.echo(f"eventide saga show: cannot reach {s.web_url}: {exc}", err=True)
        sys.exit(2)
    if code != 200:
        click.echo(f"eventide saga show: {code} {body}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for line in format_saga(body):
        click.echo(line)
