"""The command API as served (`eventide api`: uvicorn with httptools) with bearer
tokens: the head limit is enforced by the server's protocol (431 before the app
sees the request), and a command's audit line lands in the API's log."""

from __future__ import annotations

import contextlib
import json
import socket

import httpx

from streams.httpaccess import token_hash

WRITE = "w-api-token"
USER = {"email": "canary-91c2@example.com", "name": "Grace Canary"}


def status_line(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def test_served_api_refuses_big_heads_and_audits_commands(make_settings, processes, tmp_path):
    settings = make_settings(
        EVENTIDE_DATABASE_URL=f"sqlite://{tmp_path / 'outbox.sqlite3'}",
        EVENTIDE_API_PORT=str(_free_port()),
        EVENTIDE_API_RELAY="false",
        EVENTIDE_HTTP_TOKENS=f"svc:write:{token_hash(WRITE)}",
    )
    api = processes("api", settings).start()
    port = settings.api_port
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert status_line(port, head) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert httpx.get(f"{api.url}/health").status_code == 200  # the server is unharmed

    assert httpx.post(f"{api.url}/users", json=USER).status_code == 401
    auth = {"Authorization": f"Bearer {WRITE}"}
    plain = httpx.post(
        f"{api.url}/users", content=json.dumps(USER), headers={**auth, "Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    nul = httpx.post(f"{api.url}/users", json={**USER, "name": "x\u0000y"}, headers=auth)
    assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "name"
    ok = httpx.post(  # the first user also publishes its data key to Kafka
        f"{api.url}/users", json=USER, headers={**auth, "X-Correlation-Id": "c-42"}, timeout=60
    )
    assert ok.status_code == 201
    api.stop()
    log = api.output()
    audit = [json.loads(line[line.index('{"audit":') :]) for line in log.splitlines()
             if '{"audit":' in line]  # fmt: skip
    assert audit == [
        {
            "audit": "command",
            "principal": "svc",
            "correlationId": "c-42",
            "command": "create_user",
            "status": 201,
            "eventId": ok.json()["eventId"],
        }
    ]
    assert "canary-91c2" not in log and "Grace" not in log and WRITE not in log


def _free_port() -> int:
    from tests.fixtures.broker import free_port

    return free_port()
