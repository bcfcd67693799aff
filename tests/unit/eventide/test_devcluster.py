"""The dev cluster's layout, configuration and refusals (no broker started)."""

import json

import pytest
from click.testing import CliRunner

from eventide.cli import main
from eventide.tools.devcluster import ClusterLayout, DevCluster
from streams.exceptions import BrokerError


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


def test_layout_puts_brokers_from_the_base_port_and_controllers_ten_above():
    layout = ClusterLayout(19210, 3)
    assert layout.bootstrap_servers == ["127.0.0.1:19210", "127.0.0.1:19211", "127.0.0.1:19212"]
    assert [layout.controller_port(n) for n in layout.node_ids] == [19220, 19221, 19222]
    assert layout.broker_url == "kafka://127.0.0.1:19210;127.0.0.1:19211;127.0.0.1:19212"
    assert sorted(layout.ports) == [19210, 19211, 19212, 19220, 19221, 19222]
    with pytest.raises(BrokerError, match="no node 4: the cluster has nodes 1 to 3"):
        layout.broker_port(4)


def test_every_node_is_a_voter_with_production_replication(tmp_path):
    cluster = DevCluster(19210, tmp_path)
    node2 = props(cluster.server_properties(2))
    assert node2["node.id"] == "2"
    assert node2["process.roles"] == "broker,controller"
    assert node2["controller.quorum.voters"] == (
        "1@127.0.0.1:19220,2@127.0.0.1:19221,3@127.0.0.1:19222"
    )
    assert node2["listeners"] == "PLAINTEXT://127.0.0.1:19211,CONTROLLER://127.0.0.1:19221"
    assert node2["log.dirs"] == str(tmp_path.resolve() / "kafka-cluster-19210" / "node-2" / "data")
    assert node2["default.replication.factor"] == "3"
    assert node2["min.insync.replicas"] == "2"
    assert node2["unclean.leader.election.enable"] == "false"
    assert node2["offsets.topic.replication.factor"] == "3"
    assert node2["transaction.state.log.replication.factor"] == "3"
    assert node2["transaction.state.log.min.isr"] == "2"


def test_a_cluster_has_three_nodes_or_more(tmp_path):
    with pytest.raises(BrokerError, match="3 to 9 nodes, not 2"):
        DevCluster(19210, tmp_path, nodes=2)


def test_storage_of_another_node_count_is_refused(tmp_path):
    home = tmp_path.resolve() / "kafka-cluster-19210"
    home.mkdir()
    (home / "cluster.json").write_text(json.dumps({"nodes": 5, "heap": "512m"}))
    with pytest.raises(BrokerError, match="belongs to a 5-node cluster; start it with --nodes 5"):
        DevCluster(19210, tmp_path, nodes=3).start(echo=lambda _: None)


def run(tmp_path, *args: str):
    env = {"EVENTIDE_BROKER_URL": "kafka://127.0.0.1:19210", "EVENTIDE_STATE_DIR": str(tmp_path)}
    return CliRunner().invoke(main, ["broker", *args], env=env)


def test_kill_without_a_cluster_says_how_to_start_one(tmp_path):
    result = run(tmp_path, "kill", "--node", "2")
    assert result.exit_code == 2
    assert "no dev cluster on port 19210: `eventide broker start --nodes 3`" in result.output


def test_the_cluster_is_not_secured(tmp_path):
    result = run(tmp_path, "start", "--nodes", "3", "--secure")
    assert result.exit_code == 2
    assert "--secure runs one broker; the dev cluster is plaintext" in result.output
