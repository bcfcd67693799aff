"""What every ``eventide`` subcommand shares: the settings, and one clear line
with exit status 2 for Eventide's own errors and a Kafka client's refusals."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import click
from aiokafka.errors import KafkaError

from schemas.exceptions import EventideError
from streams.kafka_clients import check_kafka, explain
from streams.settings import Settings


def settings() -> Settings:
    """The settings from EVENTIDE_* variables."""
    return Settings.from_env()


def kafka_settings(purpose: str) -> Settings:
    """The settings, once Kafka has accepted them: a refused credential or
    certificate fails here within EVENTIDE_KAFKA_CONNECT_TIMEOUT seconds."""
    s = settings()
    asyncio.run(check_kafka(s, purpose=f"eventide-{purpose}"))
    return s


def fail_cleanly(fun: Callable[..., Any]) -> Callable[..., Any]:
    """Turn Eventide's own errors, and a Kafka client's refusals, into one clear
    line and exit status 2."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fun(*args, **kwargs)
        except EventideError as exc:
            click.echo(f"eventide: error: {exc}", err=True)
            sys.exit(2)
        except KafkaError as exc:
            message = explain(exc, settings())
            if message is None:
                raise
            click.echo(f"eventide: error: {message}", err=True)
            sys.exit(2)

    wrapper.__name__ = fun.__name__
    wrapper.__doc__ = fun.__doc__
    return wrapper
