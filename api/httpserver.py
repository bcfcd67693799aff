"""uvicorn's httptools protocol with a limit on the size of a request's head.

httptools (llhttp) buffers a request line and headers of any size; uvicorn sets
no limit on it (only its h11 protocol has one). This protocol counts the bytes
of a request's head as they arrive and answers 431 once they pass the limit
(EVENTIDE_HTTP_MAX_HEADER_BYTES), before the head reaches the app, so a 200 KB
header costs neither memory nor a trip through the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_SECONDS = 1.0
"""How long the connection stays open after a 431, its input discarded, so the
client reads the answer instead of a reset."""


class HeadTooLargeError(Exception):
    """Raised in a parser callback to abort a request whose head is too large."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads over :attr:`max_head` bytes."""

    max_head = 16_384
    """Most bytes of a request line and headers (set by :func:`bounded_protocol`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._refused = 0

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # discard what the client still sends after the 431
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head and not self._refused:
            self._refused = self._head_bytes
            self.send_400_response("")

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_head:
            self._refused = size
            raise HeadTooLargeError(size)
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
            return
        body = orjson.dumps(
            {
                "error": f"request line and headers over {self.max_head} bytes "
                "(EVENTIDE_HTTP_MAX_HEADER_BYTES)"
            }
        )
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)


def bounded_protocol(max_head: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` option with the given limit."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"max_head": max_head})
