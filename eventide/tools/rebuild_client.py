"""``eventide rebuild <read-model>``: rebuild a read model on every worker, with progress.

The command asks one worker (``--worker``, default ``EVENTIDE_WEB_HOST``/``PORT``)
for the rebuild status of the read model, which names every worker of the
group (from the assignment); without ``--worker`` it rebuilds on all of them,
with ``--worker URL ...`` on exactly those. It checks that each answers,
starts the rebuild on each (``POST /admin/rebuild/<table>``; one already
running there is followed instead), then prints the progress summed over the
workers until every one has switched to its rebuilt copy.

Exit status: 0 once every worker has switched; 1 when a rebuild was aborted
(a rebalance) or failed, with the reason; 2 when a worker cannot be reached
or refuses (an unknown read model, one with side effects).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.exceptions import RebuildError
from streams.httpaccess import bearer


def request_json(
    method: str, url: str, timeout: float = 10.0, token: str = "", correlation: str = ""
) -> tuple[int, Any]:
    """Send a request (``token``: bearer token, ``correlation``: X-Correlation-Id);
    return (status, JSON body); OSError when unreachable."""
    headers = bearer(token)
    if correlation:
        headers["X-Correlation-Id"] = correlation
    req = urllib.request.Request(
        url, method=method, data=b"" if method == "POST" else None, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": body.decode(errors="replace")[:200] or exc.reason}


@dataclass(frozen=True)
class _Client:
    token: str
    """Bearer token (EVENTIDE_HTTP_TOKEN): the admin role is needed."""
    correlation: str
    """X-Correlation-Id of every request of this run: one id in the workers' audit lines."""


def _call(client: _Client, method: str, worker: str, table: str) -> tuple[int, dict[str, Any]]:
    url = f"{worker.rstrip('/')}/admin/rebuild/{table}"
    try:
        code, body = request_json(method, url, token=client.token, correlation=client.correlation)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise RebuildError(
            f"cannot reach the worker at {worker}: {reason}; is `eventide worker` running "
            "there? (pass --worker URL, or set EVENTIDE_WEB_HOST and EVENTIDE_WEB_PORT)"
        ) from exc
    if code in (401, 403):
        raise RebuildError(
            f"{worker} refused the request ({code}: {_error(body)}); set EVENTIDE_HTTP_TOKEN "
            "to a token with the admin role"
        )
    if code == 429:
        raise RebuildError(f"{worker} is rate-limiting this client (429); retry shortly")
    if code == 404 and not (isinstance(body, dict) and "table" in body):
        raise RebuildError(f"{worker} does not serve {url}: is it an Eventide worker?")
    if not isinstance(body, dict):
        body = {"error": str(body)}
    return code, body


def _error(body: Any) -> Any:
    return body.get("error", body) if isinstance(body, dict) else body


def _refused(worker: str, body: dict[str, Any]) -> RebuildError:
    return RebuildError(f"{worker}: {body.get('error', body)}")


@dataclass
class _Follow:
    worker: str
    id: str | None
    status: dict[str, Any]


def run_rebuild(
    table: str,
    workers: list[str],
    default_worker: str,
    echo: Callable[[str], None],
    interval: float = 1.0,
    err: Callable[[str], None] | None = None,
    token: str = "",
) -> int:
    """Rebuild ``table`` on ``workers`` (all of the group's when empty); the exit status.

    Progress lines go to ``echo``, the reasons of aborts and failures to ``err``.
    ``token`` is sent as bearer token (the workers need the admin role).
    """
    err = err or echo
    client = _Client(token, f"rebuild-{uuid.uuid4()}")
    if workers:
        targets = list(dict.fromkeys(w.rstrip("/") for w in workers))
    else:
        code, body = _call(client, "GET", default_worker, table)
        if code != 200:
            raise _refused(default_worker, body)
        targets = [w.rstrip("/") for w in body.get("workers") or [default_worker]]
    for worker in targets:  # every one answers and accepts the read model
        code, body = _call(client, "GET", worker, table)
        if code != 200:
            raise _refused(worker, body)
    follows = []
    for worker in targets:
        code, body = _call(client, "POST", worker, table)
        if code == 409:
            echo(f"{worker}: a rebuild of {table} is already running; following it")
        elif code != 202:
            raise _refused(worker, body)
        follows.append(_Follow(worker, body.get("id"), body))
    echo(f"rebuilding {table} on {len(follows)} worker(s): {', '.join(targets)}")
    reported: set[str] = set()
    while True:
        for f in follows:
            code, body = _call(client, "GET", f.worker, table)
            if code != 200:
                raise _refused(f.worker, body)
            if body.get("id") != f.id:
                body = {
                    **body,
                    "state": "failed",
                    "reason": "the worker no longer knows this rebuild (was it restarted?)",
                }
            f.status = body
        states = [f.status.get("state") for f in follows]
        for f in follows:
            state = f.status.get("state")
            if state in ("switched", "aborted", "failed") and f.worker not in reported:
                reported.add(f.worker)
                echo(_worker_line(f.worker, f.status))
        bad = [f for f in follows if f.status.get("state") in ("aborted", "failed")]
        if bad:
            for f in bad:
                err(
                    f"rebuild of {table} {f.status['state']} on {f.worker}: "
                    f"{f.status.get('reason')}"
                )
            return 1
        if all(s == "switched" for s in states):
            echo(f"rebuild of {table} switched on {len(follows)} worker(s): {_summary(follows)}")
            return 0
        if any(f.status.get("phase") == "starting" for f in follows):
            echo(f"rebuild of {table}: starting")
        else:
            phases = [f.status.get("phase") for f in follows if f.status.get("state") == "running"]
            doing = ", ".join(f"{phases.count(p)} {p}" for p in sorted(set(phases), key=str))
            echo(f"rebuild of {table}: {_summary(follows)}; {doing}")
        time.sleep(interval)


def _summary(follows: list[_Follow]) -> str:
    done = sum(int(f.status.get("recordsDone") or 0) for f in follows)
    total = sum(int(f.status.get("recordsTotal") or 0) for f in follows)
    rate = sum(float(f.status.get("ratePerSecond") or 0) for f in follows)
    invalid = sum(int(f.status.get("recordsInvalid") or 0) for f in follows)
    failed = sum(int(f.status.get("recordsFailed") or 0) for f in follows)
    percent = 100.0 * done / total if total else 100.0
    return (
        f"{done:,}/{total:,} records ({percent:.1f}%), {rate:,.0f} records/s, "
        f"{invalid:,} invalid, {failed:,} failed"
    )


def _worker_line(worker: str, s: dict[str, Any]) -> str:
    line = (
        f"{worker}: {s.get('state')} after {float(s.get('elapsedSeconds') or 0):.1f}s, "
        f"{int(s.get('recordsDone') or 0):,} records replayed "
        f"({int(s.get('recordsInvalid') or 0):,} invalid, "
        f"{int(s.get('recordsFailed') or 0):,} failed)"
    )
    if s.get("state") == "switched":
        line += (
            f", {int(s.get('changelogRecords') or 0):,} keys and "
            f"{int(s.get('tombstones') or 0):,} tombstones written to the changelog"
        )
    return line
