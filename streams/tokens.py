"""Bearer tokens of the HTTP servers as configured: entries and the secret type.

Tokens are configured by their SHA-256 only (EVENTIDE_HTTP_TOKENS, a file of
the same entries); the token a client sends (EVENTIDE_HTTP_TOKEN) is held as a
:class:`Secret`, never printed. streams/httpaccess.py applies them to requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .exceptions import SettingsError


@dataclass(frozen=True)
class Secret:
    """A secret text (a token, a list of token hashes): never printed."""

    value: str
    """The text as configured; read it with :meth:`reveal`."""

    def reveal(self) -> str:
        """The text itself, for the code that needs it only."""
        return self.value

    def __bool__(self) -> bool:
        return bool(self.value)

    def __str__(self) -> str:
        return "***" if self.value else ""

    def __repr__(self) -> str:
        return f"Secret({str(self)!r})"


ROLES = ("read", "write", "admin")
"""HTTP roles, each implying those before it: read (GET queries), write (commands),
admin (``/admin/*``)."""
PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TokenEntry:
    """One accepted bearer token: who presents it and what it may do."""

    principal: str
    """Name of the client (a service, an operator): the audit log's ``principal``."""
    role: str
    """``read``, ``write`` or ``admin``."""
    sha256: str
    """Lower-case hex SHA-256 of the token (the token itself is never configured)."""


def parse_token_entries(source: str, text: str) -> list[TokenEntry]:
    """Parse ``principal:role:sha256hex`` entries, separated by commas or new lines
    (``#`` starts a comment); raise :class:`SettingsError` naming ``source``."""
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    items = [i.strip() for line in lines for i in line.split(",") if i.strip()]
    for n, item in enumerate(items, 1):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) == 4 and parts[2].lower() == "sha256":
            parts = [parts[0], parts[1], parts[3]]
        shown = f"{source}: entry {n} ({':'.join(parts[:2])}:…)"
        if len(parts) != 3:
            raise SettingsError(
                f"{source}: entry {n} is not principal:role:sha256hex "
                "(make one with `eventide http-token <principal> <role>`)"
            )
        principal, role, digest = parts[0], parts[1].lower(), parts[2].lower()
        if not PRINCIPAL_RE.match(principal):
            raise SettingsError(
                f"{shown}: principal {principal!r} must be 1-64 letters, digits and ._@-"
            )
        if role not in ROLES:
            raise SettingsError(f"{shown}: role {parts[1]!r} is not one of {', '.join(ROLES)}")
        if not SHA256_RE.match(digest):
            raise SettingsError(
                f"{shown}: the hash must be the 64 hex digits of the token's SHA-256 "
                "(the token itself does not belong here)"
            )
        if digest in seen:
            raise SettingsError(f"{shown}: the same token hash is listed twice")
        seen.add(digest)
        entries.append(TokenEntry(principal, role, digest))
    return entries
