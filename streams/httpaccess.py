"""Who may call Eventide's HTTP endpoints, how often, and what is audited.

One policy for both HTTP servers, the command API (``api/app.py``) and the
worker's views (``streams/views.py``); each adapts it to its framework.

- **Bearer tokens**, configured as SHA-256 hashes with a principal and a role
  (EVENTIDE_HTTP_TOKENS, EVENTIDE_HTTP_TOKENS_FILE). ``read`` may GET, ``write``
  may also POST commands, ``admin`` may also use ``/admin/*``. ``/health`` and
  ``/metrics`` are open unless EVENTIDE_HTTP_OPEN_PROBES=false. No token: 401;
  a role too low: 403.
- **Rate limit** per client: a token bucket per principal (per address for
  requests without a valid token); over it, 429 with ``Retry-After``.
- **Audit log**: one JSON line on the ``eventide.audit`` logger for every
  accepted command and every admin action: the action, the principal, the
  correlation id and what was done (ids, never personal data).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import orjson

from .exceptions import SettingsError
from .settings import Settings
from .tokens import TokenEntry, parse_token_entries

logger = logging.getLogger(__name__)

AUDIT_LOGGER = "eventide.audit"
"""Name of the logger of audit lines (route it to its own handler to keep them apart)."""
audit_log = logging.getLogger(AUDIT_LOGGER)

PROBES = frozenset({"/health", "/metrics"})
"""Paths served without a token unless EVENTIDE_HTTP_OPEN_PROBES=false."""
CORRELATION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
WWW_AUTHENTICATE = ("WWW-Authenticate", 'Bearer realm="eventide"')


class Role(IntEnum):
    """What a principal may do; each role implies the ones below it."""

    READ = 1
    """GET requests: read models, health, metrics, progress."""
    WRITE = 2
    """Commands (POST) as well."""
    ADMIN = 3
    """``/admin/*`` as well: rebuilds, pause and resume."""


@dataclass(frozen=True)
class Principal:
    """The client a request comes from."""

    name: str
    """Its configured name; ``anonymous`` without a token (authentication off, open paths)."""
    role: Role
    """What it may do."""


ANONYMOUS = Principal("anonymous", Role.ADMIN)
"""Every request when authentication is off."""
UNAUTHENTICATED = Principal("anonymous", Role.READ)
"""A request without a valid token on an open path (``/health``, ``/metrics``)."""


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer that refuses a request before it reaches a handler."""

    status: int
    """401, 403, 413, 429 or 431."""
    error: str
    """What was wrong and what to do: the ``error`` of the JSON body."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (``Retry-After``, ``WWW-Authenticate``)."""

    def body(self) -> bytes:
        """The JSON body of the answer."""
        return orjson.dumps({"error": self.error})


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, ``burst`` at once.

    Memory is bounded: beyond ``max_clients`` buckets, the full (idle) ones are
    dropped, and all of them if that is not enough.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, client: str) -> float:
        """Take one request from ``client``'s bucket: 0.0 when allowed, else the
        seconds until the next request would be."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._prune(now)
            tokens = self.burst
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst
        ]
        for c in full:
            del self._buckets[c]
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_tokens(settings: Settings) -> list[TokenEntry]:
    """The token entries of EVENTIDE_HTTP_TOKENS and EVENTIDE_HTTP_TOKENS_FILE.

    Raises :class:`SettingsError` naming the variable when the file cannot be
    read or an entry is malformed (a bad role, not a SHA-256 hash, a repeat).
    """
    entries = parse_token_entries("EVENTIDE_HTTP_TOKENS", settings.http_tokens.reveal())
    if settings.http_tokens_file:
        path = Path(settings.http_tokens_file)
        source = f"EVENTIDE_HTTP_TOKENS_FILE={str(path)!r}"
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise SettingsError(
                f"{source}: cannot read the token file: {reason}; "
                "fix the path or its permissions, or unset the variable"
            ) from None
        more = parse_token_entries(source, text)
        known = {e.sha256 for e in entries}
        for entry in more:
            if entry.sha256 in known:
                raise SettingsError(
                    f"{source}: the token of {entry.principal!r} is also in EVENTIDE_HTTP_TOKENS"
                )
        entries += more
    return entries


def token_hash(token: str) -> str:
    """The SHA-256 hex digest under which a token is configured."""
    return hashlib.sha256(token.encode()).hexdigest()


class AccessPolicy:
    """Authentication, authorization and rate limit of one HTTP server.

    ``principals`` maps token hashes to principals; ``None`` means
    authentication is off (every request is :data:`ANONYMOUS`).
    """

    def __init__(
        self,
        principals: Mapping[str, Principal] | None,
        open_paths: Iterable[str] = PROBES,
        limiter: RateLimiter | None = None,
        max_body_bytes: int = 65_536,
        max_header_bytes: int = 16_384,
    ) -> None:
        self.principals = dict(principals) if principals is not None else None
        self.open_paths = frozenset(open_paths)
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    @property
    def enabled(self) -> bool:
        """Whether requests need a token."""
        return self.principals is not None

    @classmethod
    def from_settings(
        cls, settings: Settings, server: str, host: str, open_paths: Iterable[str] = ()
    ) -> AccessPolicy:
        """The policy of a server (``server`` names it in messages) bound to ``host``.

        Fails with :class:`SettingsError` naming the variable on a token
        misconfiguration, with EVENTIDE_HTTP_AUTH=on and no tokens, and with
        the default ``auto``, no tokens and a ``host`` other than loopback.
        """
        entries = load_tokens(settings)
        mode = settings.http_auth
        if mode == "on" and not entries:
            raise SettingsError(
                "EVENTIDE_HTTP_AUTH=on but no tokens are configured: set EVENTIDE_HTTP_TOKENS "
                "or EVENTIDE_HTTP_TOKENS_FILE (make entries with `eventide http-token`)"
            )
        if mode == "auto" and not entries and not is_loopback(host):
            raise SettingsError(
                f"the {server} would listen on {host} without authentication: configure "
                "EVENTIDE_HTTP_TOKENS or EVENTIDE_HTTP_TOKENS_FILE, or set EVENTIDE_HTTP_AUTH=off "
                "to serve it to anyone who can reach it"
            )
        if mode == "off" or not entries:
            logger.warning(
                "!!! HTTP AUTHENTICATION IS OFF on the %s (%s): anyone who can reach %s may "
                "%s. Configure EVENTIDE_HTTP_TOKENS or EVENTIDE_HTTP_TOKENS_FILE to require "
                "bearer tokens. !!!",
                server,
                "EVENTIDE_HTTP_AUTH=off" if mode == "off" else "no tokens configured",
                host,
                "send commands and read every read model"
                if server == "command API"
                else "read every read model and start rebuilds",
            )
        principals = None
        if mode != "off" and entries:
            principals = {e.sha256: Principal(e.principal, Role[e.role.upper()]) for e in entries}
        probes = PROBES if settings.http_open_probes else frozenset()
        limiter = (
            RateLimiter(settings.http_rate_limit, settings.http_rate_burst)
            if settings.http_rate_limit > 0
            else None
        )
        return cls(
            principals,
            open_paths=probes | frozenset(open_paths),
            limiter=limiter,
            max_body_bytes=settings.http_max_body_bytes,
            max_header_bytes=settings.http_max_header_bytes,
        )

    def required_role(self, method: str, path: str) -> Role | None:
        """The role a request needs; ``None`` for an open path."""
        if path in self.open_paths:
            return None
        segments = [s for s in path.split("/") if s]
        if segments and segments[0].lower() == "admin":
            return Role.ADMIN
        if method in ("GET", "HEAD", "OPTIONS"):
            return Role.READ
        return Role.WRITE

    def authorize(
        self, method: str, path: str, authorization: str | None, client: str | None
    ) -> Principal | Refusal:
        """The principal a request is served for, or the answer that refuses it."""
        principal = None
        if authorization and self.principals is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                principal = self.principals.get(token_hash(token.strip()))
        if self.limiter is not None:
            key = f"principal:{principal.name}" if principal else f"address:{client or '-'}"
            wait = self.limiter.acquire(key)
            if wait > 0:
                return Refusal(
                    429,
                    f"rate limit exceeded ({self.limiter.rate:g} requests/s, bursts of "
                    f"{self.limiter.burst:g}, per client); retry after the Retry-After seconds",
                    (("Retry-After", str(max(1, math.ceil(wait)))),),
                )
        if self.principals is None:
            return ANONYMOUS
        needed = self.required_role(method, path)
        if needed is None:
            return principal or UNAUTHENTICATED
        if principal is None:
            reason = (
                "unknown or malformed bearer token"
                if authorization
                else "this endpoint needs a bearer token (header Authorization: Bearer <token>)"
            )
            return Refusal(401, reason, (WWW_AUTHENTICATE,))
        if principal.role < needed:
            audit("denied", principal.name, "-", method=method, path=path)
            return Refusal(
                403,
                f"principal {principal.name!r} has the {principal.role.name.lower()} role; "
                f"{method} {path} needs {needed.name.lower()}",
            )
        return principal

    def header_refusal(self, size: int) -> Refusal | None:
        """The 431 answer when a request's head is ``size`` bytes, over the limit."""
        if size <= self.max_header_bytes:
            return None
        return Refusal(
            431,
            f"request headers of {size} bytes are over the limit of {self.max_header_bytes} "
            "(EVENTIDE_HTTP_MAX_HEADER_BYTES)",
        )

    def body_refusal(self) -> Refusal:
        """The 413 answer to a body over the limit."""
        return Refusal(
            413,
            f"request body over {self.max_body_bytes} bytes (EVENTIDE_HTTP_MAX_BODY_BYTES)",
        )


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header Eventide's own clients send (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def http_env(settings: Settings) -> dict[str, str]:
    """The EVENTIDE_HTTP_* variables of ``settings``, for the settings of child
    processes (benchmarks) that must accept and send the same tokens."""
    return {k: v for k, v in settings.to_env().items() if k.startswith("EVENTIDE_HTTP_")}


def correlation_id(header: str | None) -> str:
    """The request's ``X-Correlation-Id`` when well-formed, else a new uuid."""
    if header and CORRELATION_RE.match(header):
        return header
    return str(uuid.uuid4())


def audit(kind: str, principal: str, correlation: str, **what: object) -> None:
    """Write one audit line: a JSON object with ``audit`` (``command``, ``admin``,
    ``denied``),
    ``principal``, ``correlationId`` and ``what``'s fields. Callers pass ids and
    outcomes only, never personal data (no e-mail address, no name)."""
    if audit_log.isEnabledFor(logging.INFO):
        record = {"audit": kind, "principal": principal, "correlationId": correlation, **what}
        audit_log.info("%s", orjson.dumps(record).decode(), extra={"audit": record})
