from tables.store import PartitionStore
from tables.transaction import Transaction

RETRY = b"\x00retry:"


def test_prefix_presence_follows_writes_and_survives_reopening(tmp_path):
    store = PartitionStore(tmp_path / "p0")
    assert not store.has_prefix(RETRY)
    tx = Transaction(store)
    tx.set(b"o-1", {"status": "pending"})
    assert not tx.may_have(RETRY)  # only entity keys written: lookups may be skipped
    tx.set(RETRY + b"o-1", {"next": 1, "head": 0, "count": 1})
    assert tx.may_have(RETRY)
    child = Transaction(store, tx)  # the next batch, before its parent is written
    assert child.may_have(RETRY)
    assert child.get(RETRY + b"o-1") == {"next": 1, "head": 0, "count": 1}
    tx.commit()
    assert store.has_prefix(RETRY)
    store.close()

    reopened = PartitionStore(tmp_path / "p0")
    assert reopened.has_prefix(RETRY)
    assert not reopened.has_prefix(b"\x00other:")
    assert reopened.get(RETRY + b"o-1") == {"next": 1, "head": 0, "count": 1}
    reopened.close()


def test_changelog_style_writes_mark_the_prefix_present(tmp_path):
    store = PartitionStore(tmp_path / "p1")
    assert not store.has_prefix(RETRY)  # remembered as absent...
    store.write({RETRY + b"o-9": b'{"next":1,"head":0,"count":1}'}, {"t": 3})
    assert store.has_prefix(RETRY)  # ...until a write brings one in
    assert store.offset("t") == 3
    store.close()
