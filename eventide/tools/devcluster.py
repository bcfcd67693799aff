"""A Kafka cluster of several brokers on loopback, for development and fault tests.

``eventide broker start --nodes 3`` runs three combined broker+controller
nodes (KRaft, a static quorum of all of them) of the dev broker's jars
(devbroker.py). With a base port B (the port of EVENTIDE_BROKER_URL), node
``i`` (1, 2, 3) serves Kafka on ``B + i - 1`` and its controller on
``B + 10 + i - 1``; base 19210 gives brokers 19210-19212 and controllers
19220-19222. The cluster's files live under
``<state_dir>/kafka-cluster-<B>/``: ``cluster.json`` (node count, heap,
cluster id) and ``node-<i>/`` (storage, server.properties, broker.log,
broker.pid) per node.

Replication as a production cluster has it: ``default.replication.factor=3``,
``min.insync.replicas=2``, unclean leader election off, and the internal topics
(consumer offsets, transaction state) with three replicas and a minimum ISR of
2. Topics Eventide creates take ``EVENTIDE_REPLICATION_FACTOR`` (3 with
:meth:`DevCluster.client_settings`) and inherit the cluster's
``min.insync.replicas``. A write with acks=all therefore survives one node
down, and is refused (NOT_ENOUGH_REPLICAS) with two down.

Memory: each node runs with a small Java heap (``-Xmx512m`` by default, the
``heap`` argument, ``--heap`` on the command line): three JVMs share the machine.

The API a fault test calls (all blocking; from async code use
``asyncio.to_thread``, or await :meth:`DevCluster.partitions`)::

    cluster = DevCluster(base_port=19210, state_dir=Path(".eventide"))
    cluster.start()                        # all nodes; returns once all are in the cluster
    settings = cluster.client_settings()   # broker URL of all nodes, replication factor 3
    node = cluster.leader_of("orders", 0)  # node id (1..n) leading a partition, or None
    cluster.kill(node)                     # kill -9
    cluster.start_node(node)               # restart; returns once it is back in the cluster
    cluster.status()                       # NodeStatus per node
    cluster.stop()                         # every node (SIGTERM, then SIGKILL)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from streams.exceptions import BrokerError
from streams.settings import Settings

from . import devbroker
from .devbroker import BrokerPaths

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
CONTROLLER_OFFSET = 10
"""Node i's controller listens on ``base + CONTROLLER_OFFSET + i - 1``."""
MAX_NODES = CONTROLLER_OFFSET - 1
DEFAULT_HEAP = "512m"
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2


def _say(text: str) -> None:
    print(text, flush=True)


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


class DevCluster:
    """A cluster of ``nodes`` combined broker+controller nodes on loopback."""

    def __init__(
        self,
        base_port: int,
        state_dir: Path,
        nodes: int = 3,
        heap: str = DEFAULT_HEAP,
        partitions: int = 8,
        start_timeout: float = 120.0,
    ) -> None:
        if not 3 <= nodes <= MAX_NODES:
            raise BrokerError(f"a dev cluster has 3 to {MAX_NODES} nodes, not {nodes}")
        self.layout = ClusterLayout(base_port, nodes)
        self.home = state_dir.resolve() / f"kafka-cluster-{base_port}"
        self.heap = heap
        self.topic_partitions = partitions
        self.start_timeout = start_timeout

    @classmethod
    def from_settings(
        cls, settings: Settings, nodes: int | None = None, heap: str | None = None
    ) -> DevCluster:
        """The cluster based on EVENTIDE_BROKER_URL's first port under EVENTIDE_STATE_DIR;
        ``nodes``/``heap`` None: those it was made with (3 and 512m for a new one)."""
        state_dir = settings.state_dir
        saved = _read_json(state_dir.resolve() / f"kafka-cluster-{settings.broker_port}")
        return cls(
            settings.broker_port,
            state_dir,
            nodes=nodes or int(saved.get("nodes", 3)),
            heap=heap or str(saved.get("heap", DEFAULT_HEAP)),
            partitions=settings.partitions,
            start_timeout=max(settings.broker_start_timeout, 120.0),
        )

    @staticmethod
    def exists(settings: Settings) -> bool:
        """Whether a cluster was made on EVENTIDE_BROKER_URL's port under EVENTIDE_STATE_DIR."""
        home = settings.state_dir.resolve() / f"kafka-cluster-{settings.broker_port}"
        return (home / "cluster.json").exists()

    # -- files -------------------------------------------------------------

    @property
    def manifest(self) -> Path:
        """``cluster.json``: node count, heap and cluster id."""
        return self.home / "cluster.json"

    def paths(self, node: int) -> BrokerPaths:
        """The files of ``node``."""
        self.layout.check_node(node)
        return BrokerPaths(self.home / f"node-{node}")

    def server_properties(self, node: int) -> str:
        """The KRaft configuration of ``node``."""
        lay = self.layout
        port, controller = lay.broker_port(node), lay.controller_port(node)
        voters = ",".join(f"{n}@{HOST}:{lay.controller_port(n)}" for n in lay.node_ids)
        return "\n".join(
            [
                "# Generated by `eventide broker start --nodes`; edits are overwritten.",
                "process.roles=broker,controller",
                f"node.id={node}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
                f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={self.paths(node).data}",
                f"num.partitions={self.topic_partitions}",
                "auto.create.topics.enable=false",
                # Replication as in production: one node may fail without losing a write.
                f"default.replication.factor={REPLICATION_FACTOR}",
                f"min.insync.replicas={MIN_INSYNC_REPLICAS}",
                "unclean.leader.election.enable=false",
                f"offsets.topic.replication.factor={REPLICATION_FACTOR}",
                "offsets.topic.num.partitions=8",
                f"transaction.state.log.replication.factor={REPLICATION_FACTOR}",
                f"transaction.state.log.min.isr={MIN_INSYNC_REPLICAS}",
                f"share.coordinator.state.topic.replication.factor={REPLICATION_FACTOR}",
                f"share.coordinator.state.topic.min.isr={MIN_INSYNC_REPLICAS}",
                "group.initial.rebalance.delay.ms=0",
                # Three JVMs on a small machine: few threads each.
                "num.network.threads=2",
                "num.io.threads=2",
                "num.replica.fetchers=1",
                "background.threads=2",
                "log.cleaner.threads=1",
                "log.retention.hours=168",
                "",
            ]
        )

    def _prepare(self, echo: Callable[[str], None]) -> None:
        """Write the manifest and configurations; format the nodes never formatted."""
        saved = _read_json(self.home)
        if saved and int(saved["nodes"]) != self.layout.nodes:
            raise BrokerError(
                f"the storage in {self.home} belongs to a {saved['nodes']}-node cluster; "
                f"start it with --nodes {saved['nodes']}, or delete that folder to start afresh"
            )
        cluster_id = str(saved.get("cluster_id") or devbroker.new_cluster_id())
        self.home.mkdir(parents=True, exist_ok=True)
        manifest = {"nodes": self.layout.nodes, "heap": self.heap, "cluster_id": cluster_id}
        self.manifest.write_text(json.dumps({**manifest, "base_port": self.layout.base_port}))
        devbroker.install(echo)
        for node in self.layout.node_ids:
            paths = self.paths(node)
            paths.home.mkdir(parents=True, exist_ok=True)
            paths.config.write_text(self.server_properties(node))
            if not (paths.data / "meta.properties").exists():
                devbroker.format_storage(paths, echo, cluster_id=cluster_id)

    # -- processes ---------------------------------------------------------

    def pid(self, node: int) -> int | None:
        """The pid of ``node``'s running Java process, else None."""
        return devbroker.running_pid(self.paths(node))

    def start(self, echo: Callable[[str], None] = _say) -> None:
        """Start every node that is not running; return once every node is a live
        member of the cluster, or raise :class:`BrokerError` with the log's last lines."""
        self._prepare(echo)
        launched = {n: p for n in self.layout.node_ids if (p := self._launch(n, echo))}
        self._wait(self.layout.node_ids, launched, echo)
        echo(f"cluster of {self.layout.nodes} nodes up; connect with:")
        echo(f"export EVENTIDE_BROKER_URL='{self.layout.broker_url}'")
        echo(f"export EVENTIDE_REPLICATION_FACTOR={REPLICATION_FACTOR}")

    def start_node(self, node: int, echo: Callable[[str], None] = _say) -> None:
        """(Re)start one node; return once it is a live member of the cluster again."""
        if not self.manifest.exists():
            raise BrokerError(f"no cluster in {self.home}: `eventide broker start --nodes 3` first")
        self._prepare(echo)
        proc = self._launch(node, echo)
        self._wait([node], {node: proc} if proc else {}, echo)

    def _launch(self, node: int, echo: Callable[[str], None]) -> subprocess.Popen[bytes] | None:
        """Start ``node`` unless it runs; None when it already ran."""
        paths = self.paths(node)
        pid = self.pid(node)
        if pid is not None:
            echo(f"node {node} already running (pid {pid}) on {self.layout.address(node)}")
            return None
        if _answers(self.layout.address(node), 1.0):
            raise BrokerError(
                f"another process already serves Kafka on {self.layout.address(node)}; "
                "stop it or choose another base port (EVENTIDE_BROKER_URL)"
            )
        proc = devbroker.launch(paths, self.heap, initial_heap="128m")
        echo(
            f"node {node} starting on {self.layout.address(node)} (pid {proc.pid}, -Xmx{self.heap})"
        )
        return proc

    def _wait(
        self,
        nodes: Iterable[int],
        launched: dict[int, subprocess.Popen[bytes]],
        echo: Callable[[str], None],
    ) -> None:
        """Wait until every node of ``nodes`` answers and is a live member."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        waiting = set(nodes)
        while waiting:
            for node in sorted(waiting):
                if node in launched and launched[node].poll() is not None:
                    log = self.paths(node).log
                    raise BrokerError(
                        f"node {node} exited during start-up; last lines of {log}:\n"
                        f"{devbroker.tail(log)}"
                    )
            members = asyncio.run(self._live_members())
            for node in sorted(waiting):
                if node in members and _answers(self.layout.address(node), 2.0):
                    waiting.discard(node)
                    echo(f"node {node} up in {time.monotonic() - started:.1f}s")
            if not waiting:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- node {n}: {self.paths(n).log}\n{devbroker.tail(self.paths(n).log, 10)}"
                    for n in sorted(waiting)
                )
                raise BrokerError(
                    f"nodes {sorted(waiting)} did not join the cluster within "
                    f"{self.start_timeout:.0f}s:\n{logs}"
                )
            time.sleep(0.5)

    def kill(self, node: int, echo: Callable[[str], None] = _say) -> int:
        """``kill -9`` ``node``; return its pid. :class:`BrokerError` if it does not run."""
        pid = self.pid(node)
        if pid is None:
            raise BrokerError(f"node {node} is not running")
        os.kill(pid, signal.SIGKILL)
        devbroker.reap(pid)
        while _alive(pid):
            time.sleep(0.05)
        echo(f"node {node} (pid {pid}) killed")
        return pid

    def stop_node(self, node: int, echo: Callable[[str], None] = _say, grace: float = 30.0) -> bool:
        """Stop ``node`` cleanly (SIGTERM: controlled shutdown); False if it was not running."""
        pid = self.pid(node)
        if pid is None:
            echo(f"node {node} is not running")
            return False
        clean = devbroker.terminate(pid, grace)
        self.paths(node).pid.unlink(missing_ok=True)
        echo(
            f"node {node} (pid {pid}) stopped" + ("" if clean else f" (killed after {grace:.0f}s)")
        )
        return True

    def stop(self, echo: Callable[[str], None] = _say, grace: float = 30.0) -> bool:
        """Stop every node (SIGTERM to all, SIGKILL after ``grace``); False if none ran."""
        pids = {n: p for n in self.layout.node_ids if (p := self.pid(n)) is not None}
        if not pids:
            echo(f"no node of the cluster in {self.home} is running")
            return False
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for node, pid in pids.items():
            clean = devbroker.terminate(pid, grace)
            self.paths(node).pid.unlink(missing_ok=True)
            echo(f"node {node} (pid {pid}) stopped" + ("" if clean else " (killed)"))
        return True

    # -- metadata ----------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        """The state of every node."""
        members = asyncio.run(self._live_members())
        return [
            NodeStatus(
                node=n,
                address=self.layout.address(n),
                pid=self.pid(n),
                answering=_answers(self.layout.address(n), 2.0),
                in_cluster=n in members,
            )
            for n in self.layout.node_ids
        ]

    def client_settings(self, base: Settings | None = None) -> Settings:
        """``base`` (or the defaults) pointed at every node, replication factor 3."""
        return replace(
            base or Settings(),
            broker_url=self.layout.broker_url,
            replication_factor=REPLICATION_FACTOR,
        )

    async def partitions(self, topic: str) -> dict[int, PartitionState]:
        """Leader, replicas and ISR of each partition of ``topic``, from the first
        node that answers. Raises :class:`BrokerError` if no node answers or the
        topic does not exist."""
        meta = await self._metadata([topic])
        if meta is None:
            raise BrokerError(
                f"no node of the cluster answers ({', '.join(self.layout.bootstrap_servers)})"
            )
        [found] = meta["topics"]
        if found["error_code"] != 0:
            raise BrokerError(f"no metadata for topic {topic!r} (error {found['error_code']})")
        return {
            p["partition"]: PartitionState(
                leader=p["leader"] if p["leader"] >= 0 else None,
                replicas=tuple(p["replicas"]),
                isr=tuple(p["isr"]),
            )
            for p in found["partitions"]
        }

    def partition(self, topic: str, partition: int) -> PartitionState:
        """Leader, replicas and ISR of one partition."""
        return asyncio.run(self.partitions(topic))[partition]

    def leader_of(self, topic: str, partition: int) -> int | None:
        """The node id leading ``topic``/``partition``, None while it has no leader."""
        return self.partition(topic, partition).leader

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = 60.0, every: float = 0.5
    ) -> float:
        """Poll ``check`` until true; return the seconds it took, or raise
        :class:`BrokerError` naming ``what`` after ``timeout`` seconds."""
        started = time.monotonic()
        while True:
            with contextlib.suppress(BrokerError, OSError):
                if check():
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise BrokerError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)

    async def _live_members(self) -> set[int]:
        """Node ids the cluster lists as live brokers (empty when none answers)."""
        meta = await self._metadata([])
        return set() if meta is None else {int(b["node_id"]) for b in meta["brokers"]}

    async def _metadata(self, topics: list[str]) -> dict[str, Any] | None:
        """A metadata response from the first node that answers, else None."""
        for address in self.layout.bootstrap_servers:
            meta = await _ask_metadata(address, topics, 2.0)
            if meta is not None:
                return meta
        return None


async def _ask_metadata(address: str, topics: list[str], timeout: float) -> dict[str, Any] | None:
    """The metadata response of the node at ``address`` itself, None when it
    does not answer (refused, timed out, still starting)."""
    host, port = address.rsplit(":", 1)
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                client_id="eventide-devcluster",
                request_timeout_ms=int(timeout * 1000),
            ),
            timeout,
        )
    except (TimeoutError, OSError, KafkaError):
        return None
    try:
        request = MetadataRequest(topics, allow_auto_topic_creation=False)
        response = await asyncio.wait_for(conn.send(request), timeout)
    except (TimeoutError, OSError, KafkaError):
        return None
    finally:
        conn.close()
    return dict(response.to_object())


def _answers(address: str, timeout: float) -> bool:
    """Whether the node at ``address`` answers a metadata request itself."""
    return asyncio.run(_ask_metadata(address, [], timeout)) is not None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _read_json(home: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((home / "cluster.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
