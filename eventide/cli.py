"""The ``eventide`` command: the one entry point for every operation."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import uvloop

from api.app import run_api
from api.relay import run_relay
from schemas.codecs import EventCodec
from schemas.compat import check_registry
from schemas.exceptions import EventideError
from schemas.personal import new_kek_line
from schemas.registry import DEFAULT_ROOT, REGISTRY_FILE, Registry
from streams.httpaccess import token_hash
from streams.keys import KafkaKeyStore
from streams.rabbitmq import run_rabbitmq_bridge
from streams.rekey import run_bridge
from streams.settings import Settings
from streams.tokens import ROLES, parse_token_entries
from streams.topics import ensure_topics

from .broker_cli import broker
from .clicommon import fail_cleanly as _fail_cleanly
from .clicommon import kafka_settings as _kafka_settings
from .clicommon import settings as _settings
from .contracts_cli import asyncapi_command, export_command
from .rabbitmq_cli import rabbitmq
from .saga_cli import participant, saga
from .tools.demo import run_demo
from .tools.dlq import read_dead_letters, replay
from .tools.history import entity_history
from .tools.rebuild_client import run_rebuild
from .tools.saga_demo import run_saga_demo
from .tools.targets import check, format_table
from .worker import run_worker


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
    )


@click.group()
def main() -> None:
    """Eventide: event-driven stream processing on Kafka with Faust.

    Configuration comes from EVENTIDE_* environment variables; see
    `eventide settings` for the values in effect.
    """


@main.command()
@_fail_cleanly
def settings() -> None:
    """Print the settings in effect (defaults overridden by EVENTIDE_*)."""

    s = _settings()
    for f in fields(s):
        click.echo(f"EVENTIDE_{f.name.upper()}={getattr(s, f.name)}")


@main.command()
@_fail_cleanly
def worker() -> None:
    """Run a stream-processing worker (agents, tables, HTTP queries)."""

    run_worker(_settings())


@main.command()
@click.option("--orders", default=200, show_default=True, help="Orders to place.")
@click.option("--show", default=4, show_default=True, help="Read models to print.")
@click.option("--seed", default=7, show_default=True, help="Random seed of the burst.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the worker.")
@click.option(
    "--sagas",
    default=0,
    show_default=True,
    help="Instead: place this many orders, run the inventory, payment and shipment "
    "participants here (EVENTIDE_PARTICIPANT_*) and summarise the sagas.",
)
@_fail_cleanly
def demo(orders: int, show: int, seed: int, timeout: float, sagas: int) -> None:
    """Publish a realistic burst of orders and print read models fetched over HTTP."""

    s = _settings()
    _logging(s)
    try:
        if sagas:
            run_saga_demo(s, sagas, seed=seed, timeout=timeout, echo=click.echo)
            return
        run_demo(s, orders=orders, show=show, seed=seed, timeout=timeout, echo=click.echo)
    except TimeoutError as exc:
        click.echo(f"eventide demo: {exc}", err=True)
        sys.exit(1)


@main.command("topics")
@_fail_cleanly
def topics() -> None:
    """Create the catalogue's topics (workers and the demo do this too)."""

    s = _kafka_settings("topics")
    created = asyncio.run(ensure_topics(s))
    click.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@main.command("api")
@_fail_cleanly
def api_command() -> None:
    """Serve the command HTTP API (EVENTIDE_API_PORT); OpenAPI at /docs.

    With EVENTIDE_API_RELAY=true (the default) the outbox relay runs inside it.
    """

    s = _settings()
    _logging(s)
    run_api(s)


@main.command("relay")
@_fail_cleanly
def relay_command() -> None:
    """Publish the command API's outbox to Kafka (several may run at once)."""

    s = _settings()
    _logging(s)
    # uvloop, as in the API: socket writes to Kafka and PostgreSQL cost a third
    # of the relay's CPU on the default loop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_relay(s))


@main.command("history")
@click.argument("entity_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON envelope per line.")
@_fail_cleanly
def history_command(entity_id: str, as_json: bool) -> None:
    """Print an entity's events in order, read from its topic (key = ENTITY_ID)."""

    s = _settings()
    codec = EventCodec(limits=s.limits)
    entries = asyncio.run(entity_history(s, entity_id, codec=codec))
    if not entries:
        click.echo(
            f"no events keyed {entity_id!r} on {s.topic('user-events')}, {s.topic('order-events')}",
            err=True,
        )
        sys.exit(1)
    for e in entries:
        if as_json:
            if e.event is not None:
                click.echo(codec.encode_json(e.event).decode())
            continue
        where = f"{e.topic}[{e.partition}]@{e.offset}"
        if e.event is None:
            click.echo(f"{where}  undecodable: {e.error}")
            continue
        ev = e.event
        data = " ".join(f"{k}={v}" for k, v in ev.data.items() if k not in ("orderId", "userId"))
        click.echo(f"{where}  {ev.timestamp}  {ev.name:<24} id={ev.id}  {data}")


@main.command("check-targets")
@click.option("--url", default=None, help="Worker base URL (default: EVENTIDE_WEB_HOST/PORT).")
@click.option("--window", default=5.0, show_default=True, help="Seconds between the two scrapes.")
@_fail_cleanly
def check_targets(url: str | None, window: float) -> None:
    """Compare a running worker's /metrics with the documented targets.

    Prints a table (docs/targets.md explains each target) and exits 1 on a
    miss, 2 when the worker cannot be scraped.
    """

    s = _settings()
    base = url or s.web_url
    try:
        results = check(base, window=window, token=s.http_token.reveal())
    except OSError as exc:
        click.echo(f"eventide check-targets: cannot scrape {base}/metrics: {exc}", err=True)
        sys.exit(2)
    click.echo(format_table(results))
    missed = [r.target.name for r in results if not r.ok]
    if missed:
        click.echo(f"missed: {', '.join(missed)}", err=True)
        sys.exit(1)


@main.command("rebuild")
@click.argument("read_model")
@click.option(
    "--worker",
    "workers",
    multiple=True,
    metavar="URL",
    help="Worker base URL (repeatable); default: every worker of the group, found "
    "through EVENTIDE_WEB_HOST/PORT.",
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between progress lines.")
@_fail_cleanly
def rebuild(read_model: str, workers: tuple[str, ...], interval: float) -> None:
    """Rebuild READ_MODEL (orders, customers) from its source topics, then switch to it.

    Every worker replays the source topics from the beginning into a fresh
    copy of its partitions while it keeps serving the live one, and switches
    queries to the copy once it has caught up. Prints progress until every
    worker has switched; exits 1 when a rebuild is aborted (a rebalance) or
    fails, 2 when a worker cannot be reached or refuses the read model.
    """

    s = _settings()
    code = run_rebuild(
        read_model,
        list(workers),
        s.web_url,
        click.echo,
        interval=interval,
        err=lambda line: click.echo(line, err=True),
        token=s.http_token.reveal(),
    )
    sys.exit(code)


@main.command("http-token")
@click.argument("principal")
@click.argument("role", type=click.Choice(ROLES))
def http_token(principal: str, role: str) -> None:
    """Make a bearer token for PRINCIPAL with ROLE (read, write or admin).

    Prints the token (give it to the client, e.g. as EVENTIDE_HTTP_TOKEN) and
    the entry for EVENTIDE_HTTP_TOKENS or a line of EVENTIDE_HTTP_TOKENS_FILE,
    which holds only the token's SHA-256.
    """

    entry = f"{principal}:{role}:{token_hash(token := secrets.token_urlsafe(32))}"
    try:
        parse_token_entries("PRINCIPAL", entry)
    except EventideError as exc:
        raise click.BadParameter(str(exc), param_hint="PRINCIPAL") from None
    click.echo(f"token  {token}")
    click.echo(f"entry  {entry}")


async def _with_keys(settings: Settings, action: Callable[[KafkaKeyStore], Any]) -> Any:
    await ensure_topics(settings)
    store = KafkaKeyStore(settings)
    try:
        return await action(store)
    finally:
        await store.stop()


@main.command("forget")
@click.argument("customer_id")
@_fail_cleanly
def forget_command(customer_id: str) -> None:
    """Crypto-shred a customer: destroy their data keys on the keys topic.

    Every worker drops the keys from memory as it reads the tombstones; the
    personal fields of the customer's events, in every topic, changelog and
    read model, can no longer be decrypted, also after a rebuild. Read models
    answer null for them with `forgotten: true`.
    """

    s = _settings()
    _logging(s)
    destroyed = asyncio.run(_with_keys(s, lambda keys: keys.forget(customer_id)))
    click.echo(
        f"forgot customer {customer_id}: {destroyed} data key(s) destroyed on "
        f"{s.topic('pii-keys')} (compaction removes them from the broker's disk within the hour)"
    )


@main.group("keys")
def keys_group() -> None:
    """Customers' data keys and the key-encryption key (KEK)."""


@keys_group.command("rotate")
@_fail_cleanly
def keys_rotate() -> None:
    """Re-wrap every data key with the current KEK (the first of EVENTIDE_PII_KEK(_FILE)).

    Put the new KEK first and keep the old ones after it until this has run;
    events are not re-published: they are encrypted with the data keys, which
    do not change.
    """

    s = _settings()
    _logging(s)
    rewrapped = asyncio.run(_with_keys(s, lambda keys: keys.rotate()))
    click.echo(f"re-wrapped {rewrapped} data key(s); the old KEKs can now be removed")


@keys_group.command("new-kek")
@click.argument("kek_id")
def keys_new_kek(kek_id: str) -> None:
    """Print a new KEK entry `<kekId>:<base64 of 32 random bytes>`."""

    click.echo(new_kek_line(kek_id))


@main.group("schemas")
def schemas_group() -> None:
    """Event schemas: the registry in schemas/ and the evolution rules."""


_REGISTRY_OPTION = click.option(
    "--registry",
    "root",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Directory holding registry.json and avsc/ (default: the committed schemas/).",
)


@schemas_group.command("check")
@_REGISTRY_OPTION
@_fail_cleanly
def schemas_check(root: str | None) -> None:
    """Check the registry and every evolution; exit 1 naming the offending field.

    The registry: ids and files agree, schemas unchanged since registered,
    upcasters for every major version (a problem exits 2). Evolution: each minor
    version reads the previous one's data and is readable by its consumers.
    """

    registry = Registry.load(Path(root) if root else DEFAULT_ROOT)
    pairs, problems = check_registry(registry)
    for problem in problems:
        click.echo(f"incompatible: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(
        f"ok: {len(registry)} schemas of {len(registry.names)} events in "
        f"{registry.root / REGISTRY_FILE}; {pairs} minor-version evolutions checked, "
        "all backward and forward compatible"
    )


@schemas_group.command("list")
@_REGISTRY_OPTION
@_fail_cleanly
def schemas_list(root: str | None) -> None:
    """Print every registered schema: id, event, version, file."""

    for entry in Registry.load(Path(root) if root else DEFAULT_ROOT):
        click.echo(f"{entry.id:>5}  {entry.name:<26} {entry.version:<6} {entry.file}")


main.add_command(asyncapi_command)
schemas_group.add_command(export_command)


@main.group("bridge")
def bridge_group() -> None:
    """Bring events from producers that do not follow Eventide's keying into its topics."""


@bridge_group.command("kafka")
@click.option(
    "--from",
    "source",
    required=True,
    help="The ingest topic (EVENTIDE_TOPIC_PREFIX is put before it), keyed by anything.",
)
@_fail_cleanly
def bridge_kafka(source: str) -> None:
    """Re-key events from an ingest topic onto the entity-keyed topics.

    Each record is decoded and validated, then published with its entity id as
    key to the topic that carries its event name; invalid ones go to
    <ingest>.dlq with the reason. Offsets are committed once the batch is
    acknowledged (nothing lost; the projections absorb a redone batch by event
    id). Per-entity order holds within one ingest partition only. Several
    bridges may run for one ingest topic (one consumer group).
    """
    s = _settings()
    _logging(s)
    asyncio.run(run_bridge(s, source))


@bridge_group.command("rabbitmq")
@_fail_cleanly
def bridge_rabbitmq() -> None:
    """Bring events published on a RabbitMQ topic exchange into Kafka.

    Declares the exchange (EVENTIDE_RABBITMQ_EXCHANGE), the dead-letter exchange
    and its queue, and a durable queue (EVENTIDE_RABBITMQ_QUEUE) bound with
    EVENTIDE_RABBITMQ_BINDINGS; consumes it with manual acks. Each message is
    validated and published to the topic of its event name, keyed by entity id;
    a batch is acked on RabbitMQ only once Kafka acknowledged it (nothing lost;
    the read models absorb a redelivery by event id). Invalid messages are
    rejected to the dead-letter exchange and recorded in rabbitmq-bridge.dlq with
    the reason. Several bridges may consume one queue. A RabbitMQ connection lost
    after start-up is retried (1 s, doubling up to 30 s between attempts).
    """
    s = _settings()
    _logging(s)
    asyncio.run(run_rabbitmq_bridge(s))


@main.group("dlq")
def dlq_group() -> None:
    """Dead-letter topics: list, show and replay their records."""


def _dlq_filters(fun: Callable[..., Any]) -> Callable[..., Any]:
    fun = click.option("--topic", "topics", multiple=True, help="DLQ topic (default: all).")(fun)
    fun = click.option(
        "--error", "error_class", default=None, help="Error class, e.g. DecodeError."
    )(fun)
    fun = click.option("--since", default=None, help="Last failure at or after (ISO time).")(fun)
    return fun


def _read_letters(topics: tuple[str, ...], error_class: str | None, since: str | None) -> list:

    when = None
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise click.BadParameter(
                f"{since!r} is not an ISO time", param_hint="--since"
            ) from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return asyncio.run(read_dead_letters(_kafka_settings("dlq"), topics or None, error_class, when))


@dlq_group.command("list")
@_dlq_filters
@_fail_cleanly
def dlq_list(topics: tuple[str, ...], error_class: str | None, since: str | None) -> None:
    """One line per dead-lettered record: name, error, attempts, last failure."""
    letters = _read_letters(topics, error_class, since)
    for d in letters:
        click.echo(
            f"{d.ref}  {d.error_class:<20} attempts={d.header('dlq-attempts') or 0}  "
            f"{d.last_failure.isoformat() if d.last_failure else '-'}  "
            f"event={d.header('event-id') or '-'}  {d.header('dlq-error-message')[:80]}"
        )
    click.echo(f"{len(letters)} record(s)", err=True)


@dlq_group.command("show")
@click.argument("ref")
@_fail_cleanly
def dlq_show(ref: str) -> None:
    """Every header and the value of one record, named TOPIC:PARTITION:OFFSET."""
    topic, _, rest = ref.partition(":")
    part, _, off = rest.partition(":")
    if not (topic and part.isdigit() and off.isdigit()):
        raise click.BadParameter(f"{ref!r}: expected TOPIC:PARTITION:OFFSET", param_hint="REF")
    for d in _read_letters((topic,), None, None):
        if d.partition == int(part) and d.offset == int(off):
            click.echo(f"record   {d.ref}")
            click.echo(f"key      {d.key!r}")
            for k, v in d.headers:
                click.echo(f"header   {k}: {v.decode(errors='replace')}")
            for line in d.value_lines(EventCodec(limits=_settings().limits)):
                click.echo(line)
            return
    click.echo(f"no record {ref}", err=True)
    sys.exit(1)


@dlq_group.command("replay")
@click.argument("refs", nargs=-1)
@_dlq_filters
@click.option("--all", "replay_all", is_flag=True, help="Replay every record that matches.")
@_fail_cleanly
def dlq_replay(
    refs: tuple[str, ...],
    topics: tuple[str, ...],
    error_class: str | None,
    since: str | None,
    replay_all: bool,
) -> None:
    """Send chosen records (REFS, or --all matching the filters) back to their origin topic."""

    if not refs and not replay_all:
        raise click.UsageError("name records to replay (TOPIC:PARTITION:OFFSET) or pass --all")
    letters = _read_letters(topics, error_class, since)
    if refs:
        wanted = set(refs)
        letters = [d for d in letters if d.ref in wanted]
        missing = wanted - {d.ref for d in letters}
        if missing:
            click.echo(f"not found: {', '.join(sorted(missing))}", err=True)
            sys.exit(1)
    with click.progressbar(length=len(letters), label="replaying", file=sys.stderr) as bar:
        sent = asyncio.run(replay(_settings(), letters, bar.update))
    click.echo(f"replayed {sent} record(s)")


main.add_command(broker)
main.add_command(rabbitmq)
main.add_command(participant)
main.add_command(saga)

if __name__ == "__main__":  # pragma: no cover
    main()
