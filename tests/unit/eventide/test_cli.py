import asyncio

import pytest
from click.testing import CliRunner

from eventide.cli import main
from streams.exceptions import BrokerError
from streams.settings import Settings
from streams.topics import ensure_topics


def test_bad_setting_fails_at_start_with_the_variable_name():
    result = CliRunner().invoke(main, ["worker"], env={"EVENTIDE_PARTITIONS": "many"})
    assert result.exit_code == 2
    assert "eventide: error: EVENTIDE_PARTITIONS='many': expected an integer" in result.output


def test_settings_command_prints_what_is_in_effect():
    result = CliRunner().invoke(main, ["settings"], env={"EVENTIDE_WEB_PORT": "7123"})
    assert result.exit_code == 0
    assert "EVENTIDE_WEB_PORT=7123" in result.output.splitlines()
    assert "EVENTIDE_PARTITIONS=8" in result.output.splitlines()


def test_unreachable_broker_is_a_clear_error():
    settings = Settings.from_env({"EVENTIDE_BROKER_URL": "kafka://127.0.0.1:9"})
    with pytest.raises(BrokerError, match=r"cannot reach Kafka at kafka://127.0.0.1:9 \(EVENTIDE"):
        asyncio.run(ensure_topics(settings))
