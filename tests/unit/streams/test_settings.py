from pathlib import Path

import pytest

from streams.exceptions import SettingsError
from streams.settings import Settings


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.partitions == 8
    assert s.web_port == 6066
    assert s.data_dir == Path(".eventide/data")
    assert s.kafka_client == "aiokafka"


def test_environment_overrides_defaults():
    s = Settings.from_env(
        {
            "EVENTIDE_BROKER_URL": "kafka://10.0.0.1:9093;10.0.0.2:9093",
            "EVENTIDE_PARTITIONS": "12",
            "EVENTIDE_WEB_PORT": "7000",
            "EVENTIDE_LOG_LEVEL": "DEBUG",
            "EVENTIDE_TOPIC_PREFIX": "t1-",
        }
    )
    assert s.bootstrap_servers == ["10.0.0.1:9093", "10.0.0.2:9093"]
    assert s.broker_port == 9093
    assert s.partitions == 12
    assert s.web_url == "http://127.0.0.1:7000"
    assert s.log_level == "debug"
    assert s.topic("order-events") == "t1-order-events"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("EVENTIDE_PARTITIONS", "eight", "EVENTIDE_PARTITIONS='eight': expected an integer"),
        ("EVENTIDE_PARTITIONS", "0", "EVENTIDE_PARTITIONS=0: expected 1..1024"),
        ("EVENTIDE_WEB_PORT", "70000", "EVENTIDE_WEB_PORT=70000: expected 1..65535"),
        ("EVENTIDE_LOG_LEVEL", "loud", "EVENTIDE_LOG_LEVEL='loud': expected one of"),
        ("EVENTIDE_BROKER_URL", "http://h:1", "scheme must be kafka://"),
        ("EVENTIDE_BROKER_URL", "kafka://nohost", "'nohost' is not host:port"),
        ("EVENTIDE_APP_ID", "my app", "EVENTIDE_APP_ID='my app'"),
        ("EVENTIDE_BROKER_HEAP", "lots", "EVENTIDE_BROKER_HEAP='lots'"),
        ("EVENTIDE_DATA_DIR", " ", "EVENTIDE_DATA_DIR is set but empty"),
        ("EVENTIDE_PROJECTIONS", " , ", "EVENTIDE_PROJECTIONS=' , ': expected all or a comma"),
        ("EVENTIDE_PROJECTIONS", "orders;customers", "EVENTIDE_PROJECTIONS='orders;customers'"),
        (
            "EVENTIDE_KAFKA_CLIENT",
            "kafka-python",
            "EVENTIDE_KAFKA_CLIENT='kafka-python': expected one of confluent, aiokafka",
        ),
    ],
)
def test_bad_values_fail_naming_the_variable(var, value, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert message in str(info.value)


def test_settings_are_frozen():
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.partitions = 3  # type: ignore[misc]


def test_to_env_reproduces_the_settings_with_secrets_in_clear():
    s = Settings.from_env(
        {
            "EVENTIDE_PARTITIONS": "3",
            "EVENTIDE_DATABASE_URL": "postgresql://u:s3cret@127.0.0.1:5432/db",
        }
    )
    env = s.to_env()
    assert env["EVENTIDE_DATABASE_URL"] == "postgresql://u:s3cret@127.0.0.1:5432/db"
    assert Settings.from_env(env) == s


def test_projections_default_to_all_and_parse_names():
    assert Settings.from_env({}).projection_names is None  # every declared projection
    s = Settings.from_env({"EVENTIDE_PROJECTIONS": " Customers, orders "})
    assert s.projection_names == ("customers", "orders")
    assert Settings.from_env(s.to_env()).projection_names == ("customers", "orders")
