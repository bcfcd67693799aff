import pytest
from click.testing import CliRunner

from api.store import PostgresStore, SqliteStore, store_for
from eventide.cli import main
from streams.exceptions import SettingsError
from streams.settings import Settings


def test_database_defaults_to_sqlite_under_the_state_dir(tmp_path):
    store = store_for(Settings.from_env({"EVENTIDE_STATE_DIR": str(tmp_path)}))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "outbox.sqlite3"
    url = f"sqlite://{tmp_path / 'x.db'}"
    explicit = store_for(Settings.from_env({"EVENTIDE_DATABASE_URL": url}))
    assert isinstance(explicit, SqliteStore) and explicit.path == tmp_path / "x.db"


def test_postgres_password_is_never_printed():
    url = "postgresql://app:s3cret@db:5432/eventide"
    settings = Settings.from_env({"EVENTIDE_DATABASE_URL": url})
    assert isinstance(store_for(settings), PostgresStore)
    assert settings.database_url.reveal() == url
    assert "s3cret" not in str(settings.database_url) + repr(settings)
    result = CliRunner().invoke(main, ["settings"], env={"EVENTIDE_DATABASE_URL": url})
    assert "EVENTIDE_DATABASE_URL=postgresql://app:***@db:5432/eventide" in result.output
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("EVENTIDE_DATABASE_URL", "mysql://x:pw@h/db", "expected sqlite:///path or postgresql"),
        ("EVENTIDE_API_RELAY", "maybe", "EVENTIDE_API_RELAY='maybe': expected true or false"),
        ("EVENTIDE_RELAY_BATCH_SIZE", "0", "EVENTIDE_RELAY_BATCH_SIZE=0: expected 1..100000"),
        ("EVENTIDE_API_PORT", "http", "EVENTIDE_API_PORT='http': expected an integer"),
    ],
)
def test_bad_api_settings_name_the_variable(var, value, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert message in str(info.value)
    assert "pw" not in str(info.value)
