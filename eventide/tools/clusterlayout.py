"""Where the nodes of a dev cluster listen, and what the cluster reports: pure
values, no process or network (devcluster.py runs the nodes)."""

from __future__ import annotations

from dataclasses import dataclass

from streams.exceptions import BrokerError

HOST = "127.0.0.1"
CONTROLLER_OFFSET = 10
"""Node i's controller listens on ``base + CONTROLLER_OFFSET + i - 1``."""
MAX_NODES = CONTROLLER_OFFSET - 1
DEFAULT_HEAP = "512m"
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2


@dataclass(frozen=True)
class ClusterLayout:
    """Where the nodes of a cluster listen."""

    base_port: int
    """Kafka port of node 1; node i serves on ``base_port + i - 1``."""
    nodes: int = 3
    """Number of nodes, each a broker and a controller (node ids 1..nodes)."""

    @property
    def node_ids(self) -> range:
        """The node ids, 1..nodes."""
        return range(1, self.nodes + 1)

    def broker_port(self, node: int) -> int:
        """The Kafka (PLAINTEXT) port of ``node``."""
        self.check_node(node)
        return self.base_port + node - 1

    def controller_port(self, node: int) -> int:
        """The KRaft controller port of ``node``."""
        self.check_node(node)
        return self.base_port + CONTROLLER_OFFSET + node - 1

    def address(self, node: int) -> str:
        """``host:port`` of ``node``'s Kafka listener."""
        return f"{HOST}:{self.broker_port(node)}"

    @property
    def ports(self) -> list[int]:
        """Every port the cluster listens on (brokers, then controllers)."""
        return [self.broker_port(n) for n in self.node_ids] + [
            self.controller_port(n) for n in self.node_ids
        ]

    @property
    def bootstrap_servers(self) -> list[str]:
        """Every node's ``host:port``."""
        return [self.address(n) for n in self.node_ids]

    @property
    def broker_url(self) -> str:
        """EVENTIDE_BROKER_URL naming every node (a client still bootstraps with one down)."""
        return "kafka://" + ";".join(self.bootstrap_servers)

    def check_node(self, node: int) -> None:
        """Raise :class:`BrokerError` unless ``node`` is one of this cluster's ids."""
        if node not in self.node_ids:
            raise BrokerError(f"no node {node}: the cluster has nodes 1 to {self.nodes}")


@dataclass(frozen=True)
class NodeStatus:
    """What one node is doing."""

    node: int
    """Node id (1..n)."""
    address: str
    """``host:port`` of its Kafka listener."""
    pid: int | None
    """Pid of its Java process, None when not running."""
    answering: bool
    """It answers a metadata request on its own port."""
    in_cluster: bool
    """The cluster lists it among its live brokers (registered, not fenced)."""

    @property
    def up(self) -> bool:
        """Running, answering and a live member of the cluster."""
        return self.pid is not None and self.answering and self.in_cluster


@dataclass(frozen=True)
class PartitionState:
    """Leader and replicas of one partition, from the cluster's metadata."""

    leader: int | None
    """Node id of the leader; None while the partition has none."""
    replicas: tuple[int, ...]
    """Node ids holding a replica."""
    isr: tuple[int, ...]
    """Node ids in the in-sync replica set."""
