"""A network partition between a worker and the broker: an asyncio TCP proxy.

The case starts a broker of its own whose ``PROXIED`` listener advertises the
proxy's port (devbroker ``proxied_port``): the worker bootstraps through the
proxy and every connection it opens afterwards goes through it too, while the
stream and the verifier use the broker's own port. The proxy forwards, stalls
(connections stay open, no byte moves either way) or drops (every connection
closed, new ones closed on accept) until healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from benchmarks.procs import log
from eventide.tools import devbroker
from streams.settings import Settings

from .harness import Case, Outcome


class TcpProxy:
    """127.0.0.1:``listen`` → 127.0.0.1:``target``, in a thread of its own."""

    def __init__(self, listen: int, target: int) -> None:
        self.listen, self.target = listen, target
        self.mode = "pass"
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-proxy")

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the proxy did not listen on {self.listen}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.listen)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def set_mode(self, mode: str) -> None:
        """``pass``, ``stall`` or ``drop`` (see the module's doc)."""
        self._loop.call_soon_threadsafe(self._set_mode, mode)

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "drop":
            for w in list(self._writers):
                w.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                await self._flowing.wait()
                if self.mode == "drop":
                    return
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    def close(self) -> None:
        self._set_mode("drop")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


def partition(case: Case, mode: str) -> Outcome:
    """The worker's connections to the broker stall or drop for 20 s (8 s short)."""
    if not case.opts.private_broker_port:
        raise RuntimeError("no port for the case's own broker (--private-broker-port)")
    port = case.opts.private_broker_port
    broker = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": f"kafka://127.0.0.1:{port}",
            "EVENTIDE_STATE_DIR": str(case.dir / "broker"),
            "EVENTIDE_BROKER_HEAP": "512m",
            "EVENTIDE_PARTITIONS": str(case.opts.partitions),
        }
    )
    proxy = TcpProxy(case.ports.take(), port + 2).start()
    devbroker.start(broker, lambda m: log(f"  {m}"), proxied_port=proxy.listen)
    try:
        case.use_broker(broker.broker_url, worker_broker=f"kafka://127.0.0.1:{proxy.listen}")
        w = case.worker().start()
        case.begin()
        case.run_for(3)
        outage = 8.0 if case.opts.small else 20.0
        at = time.monotonic()
        proxy.set_mode(mode)
        states = set()
        while time.monotonic() - at < outage:
            states.add(str(w.health().get("status", "unreachable")))
            time.sleep(0.5)
        proxy.set_mode("pass")
        healed = time.monotonic()
        took = case.recovery(at, w)
        log(
            f"  {mode} for {outage:.0f} s: caught up {took:.1f} s after the fault "
            f"({time.monotonic() - healed:.1f} s after healing); /health said {sorted(states)}"
        )
        case.outcome.notes.append(
            f"/health during the {mode}: {', '.join(sorted(states))}; caught up "
            f"{took - outage:.1f} s after the partition healed"
        )
        case.run_for(2)
        return case.verify(w)
    finally:
        case.close()
        proxy.close()
        devbroker.stop(broker, lambda m: log(f"  {m}"), grace=5.0)
