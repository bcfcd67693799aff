"""The worker's HTTP endpoints with bearer tokens, against the real broker (issue #13,
part 4): 401, 403, 413, 429 with Retry-After, oversized headers, and the audit
line of an admin action (``eventide rebuild`` sends the token of EVENTIDE_HTTP_TOKEN)."""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

from eventide.tools.demo import fetch_json
from eventide.tools.rebuild_client import request_json, run_rebuild
from streams.httpaccess import token_hash

TOKENS = {"reader": "r-tok", "writer": "w-tok", "ops": "a-tok", "greedy": "g-tok"}
ROLES = {"reader": "read", "writer": "write", "ops": "admin", "greedy": "read"}


def raw_request(port: int, head: bytes) -> bytes:
    """Send a raw request head; return the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            s.sendall(head)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    return data.split(b"\r\n", 1)[0]


def test_worker_endpoints_need_tokens_roles_and_stay_within_limits(
    make_settings, worker_factory, tmp_path
):
    tokens = ",".join(f"{n}:{ROLES[n]}:{token_hash(t)}" for n, t in TOKENS.items())
    settings = make_settings(
        EVENTIDE_HTTP_TOKENS=tokens,
        EVENTIDE_HTTP_RATE_LIMIT="5",
        EVENTIDE_HTTP_RATE_BURST="20",
        EVENTIDE_ADMIN_ENDPOINTS="true",
    )
    worker = worker_factory(settings).start()
    url = settings.web_url

    assert fetch_json(f"{url}/health")[0] == 200  # open by default
    code, body = fetch_json(f"{url}/orders/o-1")
    assert code == 401 and "needs a bearer token" in body["error"]
    assert fetch_json(f"{url}/orders/o-1", token="wrong")[0] == 401
    code, body = fetch_json(f"{url}/orders/o-1", token=TOKENS["reader"])
    assert code == 404 and body["orderId"] == "o-1"  # served: there is no such order

    rebuild = f"{url}/admin/rebuild/orders"
    code, body = request_json("POST", rebuild, token=TOKENS["writer"])
    assert code == 403
    assert body["error"] == (
        "principal 'writer' has the write role; POST /admin/rebuild/orders needs admin"
    )
    assert request_json("GET", rebuild, token=TOKENS["reader"])[0] == 403
    assert request_json("POST", f"{url}/admin/pause")[0] == 401

    # eventide rebuild with the admin token: accepted, and audited.
    lines: list[str] = []
    assert run_rebuild("orders", [url], url, lines.append, 0.2, token=TOKENS["ops"]) == 0
    audit = [a for a in _audit_lines(worker.output()) if a["audit"] == "admin"]
    assert [a["action"] for a in audit] == ["rebuild"], audit
    assert audit[0]["principal"] == "ops" and audit[0]["status"] == 202
    assert audit[0]["correlationId"].startswith("rebuild-")
    assert audit[0]["table"] == "orders"

    # 413: a body over EVENTIDE_HTTP_MAX_BODY_BYTES (64 KiB by default).
    big = b"POST /admin/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-tok\r\n"
    big += b"Content-Length: 200000\r\n\r\n" + b"x" * 200_000
    assert raw_request(settings.web_port, big).startswith(b"HTTP/1.1 413")
    # A 200 KB header: refused by the parser (aiohttp: 400 or 431).
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert raw_request(settings.web_port, head).split(b" ")[1] in (b"400", b"431")

    # 429 with Retry-After once a principal's burst is spent; others are not affected.
    codes = [fetch_json(f"{url}/orders/o-1", token=TOKENS["greedy"])[0] for _ in range(25)]
    assert 429 in codes and codes[0] == 404
    status, retry_after = _status_and_retry_after(f"{url}/orders/o-1", TOKENS["greedy"])
    assert status == 429 and int(retry_after) >= 1
    assert fetch_json(f"{url}/orders/o-1", token=TOKENS["reader"])[0] == 404
    assert "a-tok" not in worker.output() and "r-tok" not in worker.output()


def _audit_lines(log: str) -> list[dict[str, Any]]:
    """The audit records of a worker's log (the JSON after the log line's prefix)."""
    lines = [line for line in log.splitlines() if '{"audit":' in line]
    return [json.loads(line[line.index('{"audit":') :]) for line in lines]


def _status_and_retry_after(url: str, token: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After", "")
