"""Personal data in events: which fields are personal, and their encryption.

A field of a payload schema marked ``"personal": true`` (``email`` and
``name`` of ``user.created``) is written as ciphertext: AES-256-GCM envelope
encryption with a *data key* per customer, itself wrapped (AES-256-GCM) by a
*key-encryption key* (KEK). Pure logic, no Kafka: :mod:`streams.keys` keeps
the wrapped keys on a compacted topic and feeds them to a :class:`KeyRing`.

The ciphertext is a string in the same field, so the Avro and JSON schemas
still hold::

    pii:v1:<keyId>:<nonce>:<ciphertext>

``keyId`` names the customer's data key (16 hex digits), ``nonce`` (12 bytes)
and ``ciphertext`` (with its 16-byte GCM tag) are unpadded base64url. The
additional authenticated data is ``<customerId>/<field>``: a value moved to
another customer or field does not decrypt. The KEK is not named in the
value but in the wrapped data key's record (``kek``): rotating the KEK
re-wraps the data keys and leaves every published event as it is.

A value that does not start with ``pii:v1:`` is plaintext, as older
producers publish it: accepted and shown as it is (it cannot be shredded).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .exceptions import (
    DataKeyNotFoundError,
    DecryptionError,
    KekError,
    KeyRecordError,
)

PERSONAL = "personal"
"""The attribute that marks a payload field as personal in a ``.avsc`` file."""
TOKEN_PREFIX = "pii:v1:"
"""How every encrypted value starts (format version 1)."""
FORGOTTEN = "forgotten"
"""The key id of a customer's *forgotten* marker on the keys topic."""
KEY_BYTES = 32
NONCE_BYTES = 12


def personal_fields(
    payloads: Iterable[tuple[str, Mapping[str, Any]]],
) -> dict[str, tuple[str, ...]]:
    """Event name → names of its personal top-level payload fields (any version)."""
    found: dict[str, list[str]] = {}
    for name, payload in payloads:
        for f in payload.get("fields", ()):
            if f.get(PERSONAL) is True and f["name"] not in found.setdefault(name, []):
                found[name].append(f["name"])
    return {name: tuple(names) for name, names in found.items() if names}


def is_encrypted(value: object) -> bool:
    """Whether ``value`` is an encrypted personal value (else plaintext or absent)."""
    return isinstance(value, str) and value.startswith(TOKEN_PREFIX)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key_id() -> str:
    """A fresh data-key id: 16 hex digits."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class DataKey:
    """A customer's data key, unwrapped (kept in memory only)."""

    customer_id: str
    """The customer whose personal fields it encrypts."""
    key_id: str
    """Its id, written in every value it encrypts."""
    secret: bytes = field(repr=False)
    """The 32 AES-256 key bytes."""

    @classmethod
    def generate(cls, customer_id: str) -> DataKey:
        """A new random data key for ``customer_id``."""
        return cls(customer_id, new_key_id(), AESGCM.generate_key(bit_length=256))

    def encrypt(self, field_name: str, plaintext: str) -> str:
        """``plaintext`` as a ``pii:v1:`` value bound to this customer and field."""
        nonce = os.urandom(NONCE_BYTES)
        aad = f"{self.customer_id}/{field_name}".encode()
        sealed = AESGCM(self.secret).encrypt(nonce, plaintext.encode(), aad)
        return f"{TOKEN_PREFIX}{self.key_id}:{_b64(nonce)}:{_b64(sealed)}"

    def decrypt(self, field_name: str, token: str) -> str:
        """The plaintext of ``token``; :class:`DecryptionError` when it was made with
        another key, for another customer or field, or altered."""
        key_id, nonce, sealed = parse_token(token)
        if key_id != self.key_id:
            raise DecryptionError(
                f"{field_name}: encrypted with data key {key_id}, not {self.key_id} "
                f"of customer {self.customer_id!r}"
            )
        aad = f"{self.customer_id}/{field_name}".encode()
        try:
            return AESGCM(self.secret).decrypt(nonce, sealed, aad).decode()
        except (InvalidTag, UnicodeDecodeError) as exc:
            raise DecryptionError(
                f"{field_name} of customer {self.customer_id!r}: the ciphertext does not "
                f"authenticate under data key {key_id} (altered, or moved from another "
                "customer or field); refused"
            ) from exc


def parse_token(token: str) -> tuple[str, bytes, bytes]:
    """(key id, nonce, ciphertext) of a ``pii:v1:`` value; :class:`DecryptionError`
    naming what is malformed."""
    parts = token[len(TOKEN_PREFIX) :].split(":") if is_encrypted(token) else []
    if len(parts) != 3:
        raise DecryptionError(f"not a pii:v1:<keyId>:<nonce>:<ciphertext> value: {token[:40]!r}")
    try:
        nonce, sealed = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError(f"malformed base64 in encrypted value {token[:40]!r}") from exc
    if len(nonce) != NONCE_BYTES or len(sealed) < 16:
        raise DecryptionError(f"encrypted value {token[:40]!r} is truncated")
    return parts[0], nonce, sealed


@dataclass(frozen=True)
class Kek:
    """A key-encryption key: wraps and unwraps data keys."""

    kek_id: str
    """Its id (the KEK version), written in every data-key record it wraps."""
    secret: bytes = field(repr=False)
    """The 32 AES-256 key bytes."""

    def wrap(self, key: DataKey) -> str:
        """``key`` wrapped: unpadded base64url of nonce + ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        aad = f"{key.customer_id}/{key.key_id}/{self.kek_id}".encode()
        return _b64(nonce + AESGCM(self.secret).encrypt(nonce, key.secret, aad))

    def unwrap(self, customer_id: str, key_id: str, wrapped: str) -> DataKey:
        """The data key ``wrapped`` holds; :class:`DecryptionError` with another KEK."""
        try:
            raw = _unb64(wrapped)
            nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
            aad = f"{customer_id}/{key_id}/{self.kek_id}".encode()
            secret = AESGCM(self.secret).decrypt(nonce, sealed, aad)
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionError(
                f"data key {key_id} of customer {customer_id!r} does not unwrap with KEK "
                f"{self.kek_id!r}: wrong KEK, or the record was altered"
            ) from exc
        return DataKey(customer_id, key_id, secret)


class KekRing:
    """The KEKs a process holds: the current one wraps, any of them unwraps."""

    def __init__(self, keks: list[Kek]) -> None:
        if not keks:
            raise KekError("no key-encryption key given")
        ids = [k.kek_id for k in keks]
        if len(set(ids)) != len(ids):
            raise KekError(f"KEK ids must be unique, got {ids}")
        self.current = keks[0]
        """The KEK new and rotated data keys are wrapped with."""
        self.by_id = {k.kek_id: k for k in keks}

    @classmethod
    def parse(cls, text: str, where: str) -> KekRing:
        """KEKs from ``id:base64`` entries, comma- or line-separated, the current
        one first (``#`` starts a comment line). ``where`` names the source in errors."""
        keks = []
        for raw in text.replace(",", "\n").splitlines():
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            kek_id, sep, b64 = entry.partition(":")
            try:
                secret = base64.b64decode(b64.strip(), validate=True) if sep else b""
            except (binascii.Error, ValueError):
                secret = b""
            if not kek_id.strip() or len(secret) != KEY_BYTES:
                raise KekError(
                    f"{where}: expected entries <kekId>:<base64 of 32 random bytes>, got "
                    f"{kek_id.strip()[:20]!r}:... (make one with: eventide keys new-kek <id>)"
                )
            keks.append(Kek(kek_id.strip(), secret))
        if not keks:
            raise KekError(f"{where}: no KEK entry (<kekId>:<base64 of 32 bytes>)")
        return cls(keks)

    def unwrap(self, customer_id: str, key_id: str, kek_id: str, wrapped: str) -> DataKey:
        """Unwrap with the KEK the record names; :class:`KekError` when it is not held."""
        kek = self.by_id.get(kek_id)
        if kek is None:
            raise KekError(
                f"data key {key_id} of customer {customer_id!r} is wrapped by KEK {kek_id!r}, "
                f"which this process does not hold (it has {', '.join(self.by_id)}): add it "
                "to EVENTIDE_PII_KEK(_FILE) after the current one, or run `eventide keys rotate` "
                "where it is held"
            )
        return kek.unwrap(customer_id, key_id, wrapped)


def new_kek_line(kek_id: str) -> str:
    """A KEK entry ``<kekId>:<base64 of 32 random bytes>``."""
    return f"{kek_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def key_record(kek: Kek, key: DataKey, created_at: str) -> tuple[bytes, bytes]:
    """(Kafka key, value) of a wrapped data key on the keys topic."""
    value = {
        "customerId": key.customer_id,
        "keyId": key.key_id,
        "kek": kek.kek_id,
        "wrapped": kek.wrap(key),
        "createdAt": created_at,
    }
    return f"{key.customer_id}/{key.key_id}".encode(), orjson.dumps(value)


def forgotten_record(customer_id: str, at: str) -> tuple[bytes, bytes]:
    """(Kafka key, value) of the marker that a customer's keys were destroyed."""
    value = {"customerId": customer_id, FORGOTTEN: True, "at": at}
    return f"{customer_id}/{FORGOTTEN}".encode(), orjson.dumps(value)


@dataclass
class _Customer:
    wrapped: dict[str, dict[str, Any]] = field(default_factory=dict)
    """key id → its record (kek, wrapped), in the order they were published."""
    forgotten: bool = False


class KeyRing:
    """The wrapped data keys of the keys topic, and the unwrapped ones in use.

    Fed with the topic's records in order (:meth:`apply`); a tombstone drops a
    key and its unwrapped copy, a *forgotten* marker flags the customer.
    Unwrapped keys are cached in memory, never written anywhere.
    """

    def __init__(self, keks: KekRing) -> None:
        self.keks = keks
        self._customers: dict[str, _Customer] = {}
        self._unwrapped: dict[tuple[str, str], DataKey] = {}

    def __len__(self) -> int:
        return sum(len(c.wrapped) for c in self._customers.values())

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the keys topic; :class:`KeyRecordError` if malformed."""
        if key is None:
            raise KeyRecordError("a keys-topic record without a key")
        customer_id, sep, key_id = key.decode("utf-8", "replace").rpartition("/")
        if not sep or not customer_id:
            raise KeyRecordError(f"keys-topic key {key!r} is not <customerId>/<keyId>")
        entry = self._customers.setdefault(customer_id, _Customer())
        if key_id == FORGOTTEN:
            entry.forgotten = value is not None
            return
        if value is None:
            entry.wrapped.pop(key_id, None)
            self._unwrapped.pop((customer_id, key_id), None)
            return
        try:
            record = orjson.loads(value)
            wrapped = {"kek": str(record["kek"]), "wrapped": str(record["wrapped"])}
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise KeyRecordError(f"keys-topic record {key!r} is not a wrapped key: {exc}") from exc
        entry.wrapped[key_id] = wrapped
        entry.forgotten = False  # a key published after the marker starts afresh
        self._unwrapped.pop((customer_id, key_id), None)

    def is_forgotten(self, customer_id: str) -> bool:
        """Whether ``eventide forget`` destroyed this customer's keys."""
        entry = self._customers.get(customer_id)
        return entry is not None and entry.forgotten

    def key_ids(self, customer_id: str) -> list[str]:
        """The customer's live data keys, oldest first."""
        entry = self._customers.get(customer_id)
        return [] if entry is None else list(entry.wrapped)

    def customers(self) -> list[str]:
        """Every customer with a live key or a forgotten marker."""
        return list(self._customers)

    def records(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(customer, key id, {kek, wrapped}) of every live key."""
        return [(c, k, dict(w)) for c, e in self._customers.items() for k, w in e.wrapped.items()]

    def data_key(self, customer_id: str, key_id: str) -> DataKey:
        """The unwrapped data key; :class:`DataKeyNotFoundError` when the topic has
        none by that id (forgotten, or not read yet)."""
        found = self._unwrapped.get((customer_id, key_id))
        if found is not None:
            return found
        entry = self._customers.get(customer_id)
        record = None if entry is None else entry.wrapped.get(key_id)
        if entry is None or record is None or entry.forgotten:
            raise DataKeyNotFoundError(
                f"no data key {key_id} for customer {customer_id!r}"
                + (": the customer was forgotten" if entry is not None and entry.forgotten else "")
            )
        found = self.keks.unwrap(customer_id, key_id, record["kek"], record["wrapped"])
        self._unwrapped[(customer_id, key_id)] = found
        return found

    def current_key(self, customer_id: str) -> DataKey | None:
        """The customer's newest live data key, or None."""
        ids = self.key_ids(customer_id)
        if not ids or self.is_forgotten(customer_id):
            return None
        return self.data_key(customer_id, ids[-1])

    def reveal(
        self, customer_id: str, values: Mapping[str, Any], names: Iterable[str]
    ) -> tuple[dict[str, Any], bool]:
        """Those of the ``names`` fields that ``values`` has, in clear, and whether the
        customer is forgotten (then each of them is None, plaintext ones too).

        Raises :class:`DataKeyNotFoundError` when a value's key is not (yet)
        known and the customer is not forgotten, :class:`DecryptionError` when
        a value does not authenticate."""
        present = [n for n in names if n in values]
        if self.is_forgotten(customer_id):
            return dict.fromkeys(present), True
        shown: dict[str, Any] = {}
        for n in present:
            value = values[n]
            if isinstance(value, str) and is_encrypted(value):
                key_id = parse_token(value)[0]
                value = self.data_key(customer_id, key_id).decrypt(n, value)
            shown[n] = value
        return shown, False
