"""A minimal HTTP/1.1 keep-alive client for load generation.

aiohttp cost 330-380 µs of CPU per command, 40 % of what the command API
itself took, and on a 2-core machine shared by the API, PostgreSQL, the
broker and the relay the load generator's CPU is taken from the system under
test; this client costs about 60 µs. This client does
only what the command benchmark needs: one persistent connection per virtual
client, POST with a JSON body, read the status line, the headers up to
``Content-Length`` and the body. No chunked encoding, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio


class HttpError(Exception):
    """The server answered something this client does not understand."""


class Connection:
    """One keep-alive connection; requests on it are sequential."""

    def __init__(self, host: str, port: int, token: str = "") -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = (
            f"Host: {host}:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: "
        ).encode()

    async def open(self) -> Connection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; returns (status, response body)."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise HttpError("connection not open")
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._head
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
                break
        if length < 0:
            raise HttpError(f"{path}: answer without Content-Length: {head[:200]!r}")
        return status, await reader.readexactly(length)
