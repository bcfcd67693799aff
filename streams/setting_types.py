"""The value types and parsers of :mod:`streams.settings`.

A parser takes (variable name, raw text) and returns the value, or raises
:class:`~streams.exceptions.SettingsError` naming the variable, the value found
and what is expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .exceptions import SettingsError
from .tokens import Secret, parse_token_entries

PREFIX = "EVENTIDE_"
Parser = Callable[[str, str], Any]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
T = TypeVar("T")


@dataclass(frozen=True)
class SecretUrl:
    """A URL that may hold a password: printed with the password masked."""

    value: str
    """The URL as configured; read it with :meth:`reveal`."""

    def reveal(self) -> str:
        """The URL with its password, for the database driver only."""
        return self.value

    def __str__(self) -> str:
        parts = urlsplit(self.value)
        if parts.password is None:
            return self.value
        masked = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=masked).geturl()

    def __repr__(self) -> str:
        return f"SecretUrl({str(self)!r})"


SecretText = Secret
"""A secret (a key, a password): printed as ``***`` when set (the same type as
the HTTP tokens' :class:`~streams.tokens.Secret`)."""


def parse_broker_url(url: str) -> list[str]:
    """Parse ``kafka://h1:p1;h2:p2`` (or a bare ``h:p,h:p``) into ``['h1:p1', ...]``."""
    raw = url.strip()
    if "://" in raw:
        scheme = urlsplit(raw).scheme
        if scheme != "kafka":
            raise SettingsError(
                f"EVENTIDE_BROKER_URL={url!r}: scheme must be kafka://, got {scheme}://"
            )
        raw = raw.split("://", 1)[1]
    servers = [s.strip().rstrip("/") for s in raw.replace(";", ",").split(",") if s.strip()]
    if not servers:
        raise SettingsError(f"EVENTIDE_BROKER_URL={url!r}: no host:port given")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"EVENTIDE_BROKER_URL={url!r}: {server!r} is not host:port "
                "(example: kafka://127.0.0.1:9092)"
            )
    return servers


def _str(var: str, value: str) -> str:
    if not value.strip():
        raise SettingsError(f"{var} is set but empty; unset it to use the default")
    return value.strip()


def _prefix(var: str, value: str) -> str:
    return value.strip()


def _int(low: int, high: int) -> Callable[[str, str], int]:
    def parse(var: str, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{var}={value!r}: expected an integer") from None
        if not low <= number <= high:
            raise SettingsError(f"{var}={number}: expected {low}..{high}")
        return number

    return parse


def _float(low: float, high: float) -> Callable[[str, str], float]:
    def parse(var: str, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{var}={value!r}: expected a number of seconds") from None
        if not low <= number <= high:
            raise SettingsError(f"{var}={number}: expected {low}..{high}")
        return number

    return parse


def _rate(var: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{var}={value!r}: expected requests per second, 0 for none") from None
    if not 0 <= number <= 1_000_000:
        raise SettingsError(f"{var}={number}: expected 0..1000000 requests per second")
    return number


def _path(var: str, value: str) -> Path:
    return Path(_str(var, value))


def _log_level(var: str, value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{var}={value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


def _bool(var: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{var}={value!r}: expected true or false")


def _database_url(var: str, value: str) -> SecretUrl:
    url = value.strip()
    scheme = urlsplit(url).scheme if "://" in url else ""
    if url and scheme not in ("sqlite", "postgresql", "postgres"):
        shown = SecretUrl(url)
        raise SettingsError(
            f"{var}={str(shown)!r}: expected sqlite:///path or postgresql://user@host:port/db "
            "(or unset it for SQLite under EVENTIDE_STATE_DIR)"
        )
    return SecretUrl(url)


def _choice(*choices: str, fold: Callable[[str], str] = str.lower) -> Callable[[str, str], str]:
    """A parser accepting one of ``choices``, in any case (``fold`` gives theirs)."""

    def parse(var: str, value: str) -> str:
        v = fold(value.strip())
        if v not in choices:
            raise SettingsError(f"{var}={value!r}: expected one of {', '.join(choices)}")
        return v

    return parse


def _http_url(var: str, value: str) -> SecretUrl:
    url = value.strip()
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise SettingsError(
            f"{var}={str(SecretUrl(url))!r}: expected an http:// or https:// URL "
            "such as https://hooks.example.com/notify"
        )
    return SecretUrl(url)


def _token_entries(var: str, value: str) -> Secret:
    parse_token_entries(var, value)
    return Secret(value.strip())


def _secret(var: str, value: str) -> Secret:
    return Secret(value.strip())


def _amqp_url(var: str, value: str) -> SecretUrl:
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise SettingsError(
            f"{var}={str(SecretUrl(url))!r}: expected amqp://user:password@host:port/vhost "
            "such as amqp://guest:guest@127.0.0.1:5672/"
        )
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise SettingsError(f"{var}={str(SecretUrl(url))!r}: the port is not a number") from None
    return SecretUrl(url)


def _binding_keys(var: str, value: str) -> str:
    """Comma-separated AMQP topic binding patterns (``user.*,order.#``)."""
    keys = [k.strip() for k in value.split(",") if k.strip()]
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-*#")
    if not keys or any(set(k) - allowed for k in keys):
        raise SettingsError(
            f"{var}={value!r}: expected comma-separated binding patterns such as user.*,order.*"
        )
    return ",".join(dict.fromkeys(keys))


ALL_PROJECTIONS = "all"
"""EVENTIDE_PROJECTIONS value naming every declared projection (agents/)."""


def _projections(var: str, value: str) -> str:
    """A comma-separated list of projection names, or ``all``.

    Which names exist is declared by the projections themselves (agents/);
    the app factory checks the list against them at start-up.
    """
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if not names or not all(n.replace("_", "").replace("-", "").isalnum() for n in names):
        raise SettingsError(
            f"{var}={value!r}: expected {ALL_PROJECTIONS} or a comma-separated list of "
            "projection names such as orders,customers"
        )
    return ",".join(dict.fromkeys(names))


PARSE = "parse"
"""Key of a setting's parser in its dataclass field's metadata."""


def setting(
    default: Any = MISSING, parse: Parser = _str, *, factory: Callable[[], Any] | None = None
) -> Any:
    """A settings field: its default and the parser of its ``EVENTIDE_*`` variable.

    The parser takes (variable name, raw text) and returns the value or raises
    :class:`SettingsError` naming the variable; keeping it on the field keeps
    every setting's type, default, parser and documentation in one place.
    """
    if factory is not None:
        return field(default_factory=factory, metadata={PARSE: parse})
    return field(default=default, metadata={PARSE: parse})


def _heap(var: str, value: str) -> str:
    v = value.strip().lower()
    if not (v[:-1].isdigit() and v[-1] in "mg"):
        raise SettingsError(f"{var}={value!r}: expected a Java heap size such as 512m or 1g")
    return v
