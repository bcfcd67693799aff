"""``eventide rabbitmq``: the development RabbitMQ node (Debian's rabbitmq-server)."""

from __future__ import annotations

import sys

import click

from .clicommon import fail_cleanly as _fail_cleanly
from .clicommon import settings as _settings
from .tools import devrabbit


@click.group()
def rabbitmq() -> None:
    """Control the development RabbitMQ node (its own directory, node name and ports)."""


@rabbitmq.command("start")
@_fail_cleanly
def rabbitmq_start() -> None:
    """Start the node on the port of EVENTIDE_RABBITMQ_URL in the background;
    return once it accepts AMQP connections."""

    devrabbit.start(_settings(), click.echo)


@rabbitmq.command("stop")
@_fail_cleanly
def rabbitmq_stop() -> None:
    """Stop the node (and its epmd) started by `eventide rabbitmq start`."""

    devrabbit.stop(_settings(), click.echo)


@rabbitmq.command("status")
@_fail_cleanly
def rabbitmq_status() -> None:
    """Say whether the dev node runs and accepts AMQP connections; exit 1 unless it does."""

    s = _settings()
    pid, answering = devrabbit.status(s)
    where = f"127.0.0.1:{s.rabbitmq_port}"
    if answering:
        click.echo(f"RabbitMQ up on {where}" + (f" (pid {pid})" if pid else " (not ours)"))
    else:
        click.echo(f"RabbitMQ down on {where}" + (f" (pid {pid} not answering)" if pid else ""))
        sys.exit(1)
