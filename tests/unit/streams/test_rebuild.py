"""Rebuild requests a worker refuses, progress reporting, and the CLI's errors."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner

from agents import CustomersProjection, NotificationsProjection, OrdersProjection
from eventide.cli import main
from eventide.tools.rebuild_client import run_rebuild
from schemas.codecs import EventCodec
from streams.engine import ProjectionEngine
from streams.exceptions import (
    NotRebuildableError,
    RebuildRunningError,
    RebuildUnavailableError,
    UnknownReadModelError,
)
from streams.rebuild import RebuildManager
from streams.rebuild_state import FAILED, PartitionProgress, Rebuild
from streams.settings import Settings
from streams.sinks import build_sink
from streams.views import http_status
from tests.fixtures.broker import free_port


def manager(tmp_path: Path) -> RebuildManager:
    settings = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": f"kafka://127.0.0.1:{free_port()}",  # nothing listens
            "EVENTIDE_DATA_DIR": str(tmp_path / "data"),
            "EVENTIDE_STATE_DIR": str(tmp_path),
        }
    )
    codec = EventCodec()
    engine = ProjectionEngine(
        settings,
        [
            OrdersProjection(settings, codec),
            CustomersProjection(settings, codec),
            NotificationsProjection(settings, codec, build_sink(settings)),
        ],
    )
    return RebuildManager(engine)


def test_unknown_and_side_effect_read_models_are_refused_with_the_reason(tmp_path):
    rebuilds = manager(tmp_path)
    with pytest.raises(UnknownReadModelError) as unknown:
        rebuilds.start("order")
    assert str(unknown.value) == (
        "no read model named 'order'; the read models are: customers, notifications, orders"
    )
    assert http_status(unknown.value) == 404
    with pytest.raises(NotRebuildableError, match="'notifications' cannot be rebuilt") as refused:
        rebuilds.status("notifications")
    assert http_status(refused.value) == 400
    assert rebuilds.status("orders")["state"] == "idle"


async def test_a_second_rebuild_of_a_table_waits_for_the_first(tmp_path):
    rebuilds = manager(tmp_path)
    with pytest.raises(RebuildUnavailableError, match="partitions are being assigned"):
        rebuilds.start("orders")
    rebuilds.engine.ready = True
    first = rebuilds.start("orders")
    with pytest.raises(RebuildRunningError, match="a rebuild of 'orders' is already running"):
        rebuilds.start("orders")
    rebuilds.start("customers")  # another table may be rebuilt meanwhile
    assert first.task is not None
    await asyncio.wait_for(first.task, 30)
    status = rebuilds.status("orders")
    assert status["state"] == FAILED  # no broker answers
    assert status["reason"]
    assert rebuilds.start("orders").id != first.id  # a finished one may be run again
    await rebuilds.abort_all("test over")


def test_status_reports_progress_against_the_live_position():
    rebuild = Rebuild("orders")
    rebuild.partitions = {
        TopicPartition("order-events", 0): PartitionProgress(start=0, position=300, target=400),
        TopicPartition("order-events", 1): PartitionProgress(start=0, position=100, target=100),
    }
    rebuild.invalid = 2
    status = rebuild.status()
    assert (status["recordsDone"], status["recordsTotal"], status["percent"]) == (400, 500, 80.0)
    assert status["recordsInvalid"] == 2
    assert status["partitions"][0] == {
        "topic": "order-events",
        "partition": 0,
        "start": 0,
        "position": 300,
        "target": 400,
    }
    assert rebuild.progress().startswith("400/500 records (80.0%), ")


def test_cli_says_when_the_worker_cannot_be_reached():
    port = free_port()
    result = CliRunner().invoke(
        main, ["rebuild", "orders", "--worker", f"http://127.0.0.1:{port}"], env={}
    )
    assert result.exit_code == 2
    assert f"eventide: error: cannot reach the worker at http://127.0.0.1:{port}" in result.output
    assert "is `eventide worker` running there?" in result.output


class _Worker(BaseHTTPRequestHandler):
    """A worker's rebuild endpoints, answering from a script of status documents."""

    def do_GET(self) -> None:
        script = self.server.script  # type: ignore[attr-defined]
        self._send(200, script.pop(0) if len(script) > 1 else script[0])

    def do_POST(self) -> None:
        running = self.server.script[0]  # type: ignore[attr-defined]
        self._send(409, {**running, "error": "a rebuild of 'orders' is already running"})

    def _send(self, code: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted_worker():
    servers = []

    def make(*script: dict) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
        server.script = list(script)  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def _status(state: str, done: int, **extra: object) -> dict:
    return {
        "id": "r1",
        "table": "orders",
        "state": state,
        "phase": "replaying" if state == "running" else "done",
        "recordsDone": done,
        "recordsTotal": 1000,
        "ratePerSecond": 500.0,
        "workers": [],
        **extra,
    }


def test_cli_follows_a_rebuild_already_running_until_it_switches(scripted_worker):
    url = scripted_worker(
        _status("running", 100), _status("running", 100), _status("running", 600),
        _status("switched", 1000, changelogRecords=40),
    )  # fmt: skip
    lines: list[str] = []
    assert run_rebuild("orders", [url], url, lines.append, interval=0.01) == 0
    assert lines[0] == f"{url}: a rebuild of orders is already running; following it"
    assert "rebuild of orders: 600/1,000 records (60.0%), 500 records/s" in "\n".join(lines)
    assert lines[-1].startswith("rebuild of orders switched on 1 worker(s): 1,000/1,000 records")


def test_cli_exits_1_with_the_reason_when_a_rebuild_is_aborted(scripted_worker):
    url = scripted_worker(
        _status("running", 100),
        _status("aborted", 300, reason="rebalance: 8 partitions revoked"),
    )
    out: list[str] = []
    err: list[str] = []
    assert run_rebuild("orders", [url], url, out.append, interval=0.01, err=err.append) == 1
    assert err == [f"rebuild of orders aborted on {url}: rebalance: 8 partitions revoked"]
