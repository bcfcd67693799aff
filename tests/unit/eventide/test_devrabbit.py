"""The dev RabbitMQ node's private directory, node name and ports."""

from __future__ import annotations

from pathlib import Path

from eventide.tools import devrabbit
from streams.settings import Settings


def _paths(tmp_path: Path, url: str) -> devrabbit.RabbitPaths:
    settings = Settings.from_env(
        {"EVENTIDE_RABBITMQ_URL": url, "EVENTIDE_STATE_DIR": str(tmp_path)}
    )
    return devrabbit.paths_for(settings)


def test_each_port_has_its_own_directory_node_and_ports(tmp_path: Path) -> None:
    dev = _paths(tmp_path, "amqp://guest:guest@127.0.0.1:5672/")
    test = _paths(tmp_path, "amqp://guest:guest@127.0.0.1:35672/")
    assert dev.home == tmp_path.resolve() / "rabbitmq-5672"
    assert (dev.node, dev.epmd_port, dev.dist_port) == ("eventide-5672@localhost", 5673, 25672)
    assert (test.node, test.epmd_port, test.dist_port) == (
        "eventide-35672@localhost",
        35673,
        55672,
    )
    assert _paths(tmp_path, "amqp://h:50000/").dist_port == 30000  # stays below 65536


def test_the_node_reads_nothing_of_the_system_node(tmp_path: Path) -> None:
    paths = _paths(tmp_path, "amqp://guest:guest@127.0.0.1:35672/")
    env = paths.environment()
    assert env["HOME"] == str(paths.home)  # the Erlang cookie is private to the node
    assert env["ERL_EPMD_PORT"] == "35673"
    assert env["RABBITMQ_NODENAME"] == "eventide-35672@localhost"
    for var in (
        "RABBITMQ_CONF_ENV_FILE",
        "RABBITMQ_CONFIG_FILE",
        "RABBITMQ_ENABLED_PLUGINS_FILE",
        "RABBITMQ_MNESIA_BASE",
        "RABBITMQ_LOG_BASE",
        "RABBITMQ_PID_FILE",
    ):
        assert env[var].startswith(str(paths.home)), var
