"""Log lines of a lost broker, with back-off: one line per cause per interval.

A worker whose broker is down gets the same connection error from aiokafka
thousands of times a second (every node, every request, every retry: "Unable
connect to node with id 1: ..."), 23 MB of log in half a minute.
:class:`ThrottleFilter` lets the first line of each *cause* through, drops the
ones like it for ``interval`` seconds, and adds to the next one that gets
through how many it dropped meanwhile. A cause is the logger, the level and
the message's format string (its arguments, such as a node id or an errno,
are not part of it), so distinct problems are each still logged.

:func:`install_log_throttle` puts it on the Kafka clients' loggers; the rest
of the worker's logging is untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

THROTTLED_LOGGERS = (
    "aiokafka",
    "kafka",
    "faust.transport",
    "streams.rdkafka",
    "streams.confluent_consumer",
    "streams.confluent_sender",
)
"""Prefixes of the loggers whose lines are throttled: the Kafka clients (aiokafka,
Faust's driver, librdkafka's log and error callbacks of the confluent client)."""

MAX_CAUSES = 1000
"""Causes remembered at most (a message formatted before logging makes one per line)."""


class ThrottleFilter(logging.Filter):
    """Passes one record per cause per ``interval`` seconds; counts the others."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._causes: dict[tuple[str, int, str], list[float | int]] = {}
        """cause → [time its current interval began, records dropped since]."""

    def filter(self, record: logging.LogRecord) -> bool:
        cause = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._causes.get(cause)
        if seen is None:
            if len(self._causes) >= MAX_CAUSES:
                self._causes.clear()
            self._causes[cause] = [now, 0]
            return True
        began, dropped = seen
        if now - began < self.interval:
            seen[1] = dropped + 1
            return False
        seen[0], seen[1] = now, 0
        if dropped:
            record.msg = (
                f"{record.getMessage()} ({int(dropped)} more like this in the last "
                f"{now - began:.0f}s not logged)"
            )
            record.args = ()
        return True


def install_log_throttle(
    interval: float = 10.0, prefixes: Iterable[str] = THROTTLED_LOGGERS
) -> ThrottleFilter:
    """Put one :class:`ThrottleFilter` on every logger under ``prefixes``.

    A logger's filters do not apply to its children's records, so the filter
    goes on each logger that exists (the clients create theirs when imported:
    call this after importing them) and on the prefixes themselves.
    """
    throttle = ThrottleFilter(interval)
    prefixes = tuple(prefixes)
    names = set(prefixes)
    for name in list(logging.root.manager.loggerDict):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            names.add(name)
    for name in sorted(names):
        logger = logging.getLogger(name)
        if throttle not in logger.filters:
            logger.addFilter(throttle)
    return throttle
