"""``eventide asyncapi`` and ``eventide schemas export``: the event contract in the
ecosystem's formats (AsyncAPI 3.0, JSON Schema draft 2020-12), for producers
written in other languages."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from schemas.json_schema import all_schemas
from schemas.registry import DEFAULT_ROOT, Registry
from streams.asyncapi import document
from streams.settings import Settings

_PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


@click.command("asyncapi")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the document to this file (default: print it).",
)
def asyncapi_command(out: str | None) -> None:
    """Print the AsyncAPI 3.0 document of the topics and events (JSON).

    Channels are the topics as this worker's settings name them (EVENTIDE_TOPIC_PREFIX,
    EVENTIDE_PARTITIONS, EVENTIDE_REPLICATION_FACTOR), with their retry and dead-letter
    topics; messages are the registered events. The command API serves the same
    document at GET /asyncapi.json.
    """
    text = orjson.dumps(document(Settings.from_env()), option=_PRETTY)
    if out is None:
        click.echo(text.decode(), nl=False)
        return
    Path(out).write_bytes(text)
    click.echo(f"wrote {out}", err=True)


@click.command("export")
@click.option(
    "--format",
    "form",
    type=click.Choice(["jsonschema"]),
    default="jsonschema",
    show_default=True,
    help="The schema language to write.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory to write one document per event version into (created if missing).",
)
@click.option(
    "--registry",
    "root",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Directory holding registry.json and avsc/ (default: the committed schemas/).",
)
def export_command(form: str, out: str, root: str | None) -> None:
    """Write a JSON Schema (draft 2020-12) per registered event version, envelope
    included, so producers in any language can validate an event before they publish it.

    Files are named <event>-<major.minor>.schema.json. String and array bounds
    follow EVENTIDE_MAX_STRING_LENGTH and EVENTIDE_MAX_ARRAY_LENGTH.
    """
    registry = Registry.load(Path(root) if root else DEFAULT_ROOT)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    docs = all_schemas(registry, Settings.from_env().limits)
    for name, doc in docs.items():
        (folder / name).write_bytes(orjson.dumps(doc, option=_PRETTY))
    click.echo(f"wrote {len(docs)} {form} documents to {folder}")
