"""Personal fields: AES-GCM envelope encryption, key rotation, crypto-shredding."""

from __future__ import annotations

import pytest

from schemas.exceptions import DataKeyNotFoundError, DecryptionError, KekError
from schemas.personal import (
    DataKey,
    KekRing,
    KeyRing,
    is_encrypted,
    key_record,
    parse_token,
    personal_fields,
)
from schemas.registry import Registry
from tests.fixtures.keys import kek, memory_keys


def test_user_created_marks_email_and_name_personal():
    fields = personal_fields((e.name, e.payload) for e in Registry.load())
    assert fields["user.created"] == ("email", "name", "address")
    assert "order.placed" not in fields


async def test_round_trip_through_the_wrapped_key_of_another_process():
    writer = memory_keys(kek_1 := kek("k1"))
    key = await writer.key_for("c-1")
    token = key.encrypt("email", "ann@example.com")
    assert is_encrypted(token) and "ann" not in token
    assert parse_token(token)[0] == key.key_id
    # A reader holding the same KEK, fed the keys topic's records, decrypts it.
    reader = KeyRing(KekRing([kek_1]))
    for _, k, w in writer.ring.records():
        reader.apply(f"c-1/{k}".encode(), key_record(kek_1, writer.ring.data_key("c-1", k), "t")[1])
        assert w["kek"] == "k1"
    shown, forgotten = reader.reveal("c-1", {"email": token, "name": "plain"}, ("email", "name"))
    assert (shown, forgotten) == ({"email": "ann@example.com", "name": "plain"}, False)
    assert await writer.key_for("c-1") == key  # one key per customer, reused


def test_a_value_under_another_key_customer_or_field_is_refused_clearly():
    key = DataKey.generate("c-1")
    token = key.encrypt("email", "ann@example.com")
    other = DataKey("c-1", key.key_id, DataKey.generate("c-1").secret)
    with pytest.raises(DecryptionError, match="does not authenticate under data key"):
        other.decrypt("email", token)
    with pytest.raises(DecryptionError, match="does not authenticate"):
        DataKey("c-2", key.key_id, key.secret).decrypt("email", token)  # moved customer
    with pytest.raises(DecryptionError, match="does not authenticate"):
        key.decrypt("name", token)  # moved field
    with pytest.raises(DecryptionError, match=f"encrypted with data key {key.key_id}"):
        DataKey.generate("c-1").decrypt("email", token)
    wrapped = kek("k1").wrap(key)
    with pytest.raises(DecryptionError, match="does not unwrap with KEK 'k1'"):
        kek("k1").unwrap("c-1", key.key_id, wrapped)  # same id, other secret
    with pytest.raises(KekError, match=r"wrapped by KEK 'old'.*does not hold"):
        KekRing([kek("new")]).unwrap("c-1", key.key_id, "old", wrapped)


@pytest.mark.parametrize("from_end", [3, 30, 50])  # tag, ciphertext, nonce
def test_tampered_ciphertext_is_refused(from_end):
    key = DataKey.generate("c-1")
    token = key.encrypt("email", "ann@example.com")
    position = len(token) - from_end
    flipped = "A" if token[position] != "A" else "B"
    tampered = token[:position] + flipped + token[position + 1 :]
    with pytest.raises(DecryptionError, match=r"does not authenticate.*refused"):
        key.decrypt("email", tampered)
    with pytest.raises(DecryptionError, match="not a pii:v1"):
        key.decrypt("email", "pii:v1:only-two:parts")


async def test_kek_rotation_keeps_old_events_readable():
    old, new = kek("2026-01"), kek("2026-07")
    before = memory_keys(old)
    key = await before.key_for("c-1")
    token = key.encrypt("email", "ann@example.com")
    published = [(f"c-1/{k}".encode(), w) for _, k, w in before.ring.records()]
    # Rotation: the new KEK first, the old one still held to unwrap.
    during = memory_keys(new, old)
    for k, w in published:
        during.ring.apply(k, key_record(old, before.ring.data_key("c-1", key.key_id), "t")[1])
        assert w["kek"] == "2026-01"
    assert await during.rotate() == 1
    assert await during.rotate() == 0  # nothing left to re-wrap
    # Afterwards a process with the new KEK only reads the compacted topic.
    (_, key_id, rewrapped), *_ = during.ring.records()
    assert rewrapped["kek"] == "2026-07"
    after = KeyRing(KekRing([new]))
    after.apply(
        f"c-1/{key_id}".encode(),
        key_record(new, during.ring.data_key("c-1", key_id), "t")[1],
    )
    assert after.reveal("c-1", {"email": token}, ("email",))[0] == {"email": "ann@example.com"}


async def test_a_forgotten_customer_shows_no_personal_field():
    keys = memory_keys()
    token = (await keys.key_for("c-1")).encrypt("email", "ann@example.com")
    assert await keys.forget("c-1") == 1
    assert keys.ring.is_forgotten("c-1") and keys.ring.key_ids("c-1") == []
    shown = keys.ring.reveal("c-1", {"email": token, "name": "plaintext"}, ("email", "name"))
    assert shown == ({"email": None, "name": None}, True)
    with pytest.raises(DataKeyNotFoundError, match="forgotten"):
        keys.ring.data_key("c-1", parse_token(token)[0])


def test_a_key_not_read_yet_is_retriable():
    ring = KeyRing(KekRing([kek()]))
    token = DataKey.generate("c-9").encrypt("email", "x@example.com")
    with pytest.raises(DataKeyNotFoundError) as caught:
        ring.reveal("c-9", {"email": token}, ("email",))
    assert caught.value.retriable


def test_a_malformed_kek_names_the_setting():
    with pytest.raises(KekError, match="EVENTIDE_PII_KEK: expected entries <kekId>:<base64"):
        KekRing.parse("k1:tooshort", "EVENTIDE_PII_KEK")
    ring = KekRing.parse("# comment\nnew:" + "A" * 43 + "=\nold:" + "B" * 43 + "=", "file")
    assert ring.current.kek_id == "new" and set(ring.by_id) == {"new", "old"}
