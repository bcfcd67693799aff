"""Notification sinks: where the notification projection delivers its messages.

Two implementations of :class:`NotificationSink`:

- :class:`FileSink` (the default): an append-only JSON-lines file, one line
  per notification, fsync'd once per batch; it keeps an index of the event ids
  already in the file and skips them when asked to send one again;
- :class:`WebhookSink`: one HTTP POST per notification with the event id in
  the ``Idempotency-Key`` header, a total timeout per request and bounded
  concurrency.

:class:`CircuitBreaker` stops calling a sink that keeps failing: after
``failures`` consecutive failures it opens for ``cooldown`` seconds and refuses
every call; then it lets one probe through (half-open), which closes it on
success or opens it again on failure.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp
import orjson

from schemas.exceptions import EventideError
from tables.readmodels.notifications import Notification

from .exceptions import SettingsError
from .settings import SecretUrl, Settings

logger = logging.getLogger(__name__)


class SinkError(EventideError):
    """A sink did not accept a notification; the engine retries the event later."""

    retriable = True


class CircuitOpenError(SinkError):
    """The circuit breaker refused the call: the sink failed too often lately."""


@runtime_checkable
class NotificationSink(Protocol):
    """Delivers notifications; used by one projection, from one asyncio task.

    Guarantees the projection relies on:

    - :meth:`send` returns only once the sink has accepted the notification,
      or raises (any exception, :class:`SinkError` preferred) when it did not;
      a notification that raised may be sent again later with the same
      ``event_id``.
    - :meth:`flush` returns only once every notification accepted since the
      last flush is durable at the destination; the projection calls it once
      per batch, after the batch's sends and before it records them as sent.
      When it raises, the batch's notifications count as not sent.
    - A notification may be handed over again after it was accepted (the
      worker crashed after the sink accepted it and before the batch that
      records it as sent was durable). A sink should then deliver it at most
      once more: the file sink skips event ids already in its file; the webhook
      sink sends the same ``Idempotency-Key`` and relies on the receiver.
    - Up to :attr:`concurrency` calls of :meth:`send` may be in flight at
      once, never two for the same entity.
    """

    name: str
    """Short name for logs and errors (``file``, ``webhook``)."""
    concurrency: int
    """How many sends the projection may have in flight at once."""

    async def send(self, notification: Notification) -> None:
        """Deliver one notification (see the class docstring for the guarantees)."""

    async def flush(self) -> None:
        """Make every accepted notification durable."""

    async def close(self) -> None:
        """Release files and connections; the sink reopens them if used again."""


class FileSink:
    """Append-only JSON-lines file, fsync'd per batch, with an index of event ids.

    Each line is the notification's JSON document plus ``sentAt`` (ms since
    the epoch). The file may be shared by several workers on one machine: a
    batch is written under an exclusive ``flock`` after reading the lines
    others appended, so an event id is in the file at most once. A trailing
    partial line (a crash in the middle of a write, never acknowledged) is cut
    off when the file is opened.
    """

    name = "file"
    concurrency = 1

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._fd: int | None = None
        self._read_pos = 0
        self._index: set[str] = set()
        """Event ids in the file."""
        self._buffer: dict[str, bytes] = {}
        """Event id → line, accepted by :meth:`send` and not yet written."""

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._index or event_id in self._buffer

    async def send(self, notification: Notification) -> None:
        if self._fd is None:
            await asyncio.to_thread(self._open)
        if notification.event_id in self:
            logger.info("notification for event %s is already in %s", notification.event_id, self)
            return
        doc = notification.to_dict()
        doc["sentAt"] = int(self.clock() * 1000)
        self._buffer[notification.event_id] = orjson.dumps(doc) + b"\n"

    async def flush(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, {}
        try:
            await asyncio.to_thread(self._write, buffer)
        except OSError as exc:
            raise SinkError(f"cannot write notifications to {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._index.clear()
            self._read_pos = 0

    def __str__(self) -> str:
        return str(self.path)

    # -- file work (in a thread) -----------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._fd = fd
                self._catch_up(truncate=True)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        logger.info("notification file %s holds %d notifications", self.path, len(self._index))

    def _catch_up(self, truncate: bool = False) -> None:
        """Index the lines appended since the last read (by this or another process)."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size <= self._read_pos:
            return
        data = os.pread(self._fd, size - self._read_pos, self._read_pos)
        end = data.rfind(b"\n") + 1
        if truncate and end < len(data):
            logger.warning(
                "cutting a partial last line (%d bytes) off %s", len(data) - end, self.path
            )
            os.ftruncate(self._fd, self._read_pos + end)
        for line in data[:end].splitlines():
            try:
                self._index.add(orjson.loads(line)["eventId"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                logger.warning("ignoring a line of %s that is not a notification", self.path)
        self._read_pos += end

    def _write(self, buffer: dict[str, bytes]) -> None:
        assert self._fd is not None
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            lines = [line for eid, line in buffer.items() if eid not in self._index]
            if lines:
                data = b"".join(lines)
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
                self._index.update(eid for eid in buffer)
                self._read_pos = os.fstat(fd).st_size
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


class WebhookSink:
    """HTTP POST of each notification's JSON document to one URL.

    Headers: ``Content-Type: application/json`` and ``Idempotency-Key: <event
    id>``; a receiver that remembers the keys it has seen turns the rare
    re-send after a crash into a no-op. Any 2xx answer is acceptance; any
    other status, a connection error or the timeout is a :class:`SinkError`.
    """

    name = "webhook"

    def __init__(self, url: SecretUrl, timeout: float = 5.0, concurrency: int = 16) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def send(self, notification: Notification) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"Content-Type": "application/json", "Idempotency-Key": notification.event_id}
        try:
            async with self._session.post(
                self.url.reveal(), data=notification.to_json(), headers=headers
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                body = (await resp.text(errors="replace"))[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkError(
                f"webhook {self.url} did not take event {notification.event_id}: "
                f"{type(exc).__name__}: {exc or 'timed out'}"
            ) from exc
        raise SinkError(
            f"webhook {self.url} answered HTTP {resp.status} for event "
            f"{notification.event_id}: {body!r}"
        )

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __str__(self) -> str:
        return str(self.url)


class CircuitBreaker:
    """Closed → (``failures`` consecutive failures) → open → (``cooldown`` s) →
    half-open: one probe → closed on success, open again on failure."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self,
        failures: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "sink",
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.name = name
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (open turns half-open once cooled)."""
        if self._state == self.OPEN and self.clock() >= self._opened_at + self.cooldown:
            return self.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May the sink be called now? In half-open state only one probe at a time."""
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and not self._probing:
            self._state = self.HALF_OPEN
            self._probing = True
            logger.info("%s circuit half-open: probing", self.name)
            return True
        return False

    def success(self) -> None:
        """The call allowed last succeeded."""
        if self._state != self.CLOSED:
            logger.warning("%s circuit closed: the probe succeeded", self.name)
        self._state = self.CLOSED
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        """The call allowed last failed."""
        self._failures += 1
        if self._state == self.HALF_OPEN or self._failures >= self.threshold:
            if self._state != self.OPEN:
                logger.warning(
                    "%s circuit open for %.1fs after %d consecutive failures",
                    self.name,
                    self.cooldown,
                    self._failures,
                )
            self._state = self.OPEN
            self._opened_at = self.clock()
            self._probing = False


def build_sink(settings: Settings) -> NotificationSink:
    """The sink ``EVENTIDE_NOTIFY_SINK`` names, configured from the settings."""
    if settings.notify_sink == "webhook":
        if not settings.notify_webhook_url.value:
            raise SettingsError(
                "EVENTIDE_NOTIFY_SINK=webhook needs EVENTIDE_NOTIFY_WEBHOOK_URL "
                "(e.g. https://hooks.example.com/notify)"
            )
        return WebhookSink(
            settings.notify_webhook_url,
            timeout=settings.notify_webhook_timeout,
            concurrency=settings.notify_webhook_concurrency,
        )
    return FileSink(settings.notify_path)
