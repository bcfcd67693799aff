"""Where the KEK comes from: the environment, a file, or a generated development file."""

from __future__ import annotations

import pytest

from schemas.exceptions import DataKeyNotFoundError, DecryptionError, KekError
from schemas.personal import new_kek_line
from streams.keys import load_keks
from streams.settings import Settings
from streams.views import http_status


def test_a_development_kek_is_generated_once_and_shared(tmp_path):
    settings = Settings.from_env({"EVENTIDE_STATE_DIR": str(tmp_path)})
    first = load_keks(settings)
    path = tmp_path / "pii-kek"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_keks(settings).current == first.current  # the same file, read again


def test_the_environment_wins_and_is_never_printed(tmp_path):
    entries = f"{new_kek_line('new')},{new_kek_line('old')}"
    env = {"EVENTIDE_STATE_DIR": str(tmp_path), "EVENTIDE_PII_KEK": entries}
    settings = Settings.from_env(env)
    ring = load_keks(settings)
    assert ring.current.kek_id == "new" and set(ring.by_id) == {"new", "old"}
    assert not (tmp_path / "pii-kek").exists()
    assert str(settings.pii_kek) == "***" and entries not in repr(settings)
    assert settings.to_env()["EVENTIDE_PII_KEK"] == entries  # a child process needs it


def test_a_missing_kek_file_names_the_setting(tmp_path):
    env = {"EVENTIDE_PII_KEK_FILE": str(tmp_path / "nope")}
    with pytest.raises(KekError, match=r"EVENTIDE_PII_KEK_FILE .*nope.*no such file"):
        load_keks(Settings.from_env(env))


def test_the_worker_answers_503_while_a_key_is_not_read_and_500_when_refused():
    assert http_status(DataKeyNotFoundError("no data key 1 for customer 'c-1'")) == 503
    assert http_status(DecryptionError("email of customer 'c-1': refused")) == 500
