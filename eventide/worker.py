"""``eventide worker``: create the topics, then run the Faust worker."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from faust.worker import Worker

from streams.catalogue import CATALOGUE
from streams.httpaccess import load_tokens
from streams.kafka_clients import check_kafka
from streams.settings import Settings
from streams.topics import ensure_topics

from .app import EventideApp, create_app

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, customize: Callable[[EventideApp], None] | None = None) -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM.

    ``customize`` may adjust the app before it starts (tests wrap projections).
    """
    load_tokens(settings)  # a bad token file fails now, not after the topics are set up
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One loop for the topic set-up and the worker: Faust's Worker runs on the
    # loop that is current when it starts.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Refused credentials, an untrusted certificate or a missing ACL fail here, in
    # seconds, instead of in the clients' endless retries.
    loop.run_until_complete(
        check_kafka(
            settings,
            topics=[settings.topic(spec.name) for spec in CATALOGUE],
            groups=[settings.app_id, settings.projection_group],
            purpose="worker",
        )
    )
    loop.run_until_complete(ensure_topics(settings))
    eventide = create_app(settings)
    if customize is not None:
        customize(eventide)
    # The worker allocates many short-lived dicts per batch and keeps few
    # long-lived ones: move what start-up created out of the collector's
    # sight and collect the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    worker = Worker(eventide.app, loglevel=settings.log_level, quiet=True, loop=loop)
    worker.execute_from_commandline()
