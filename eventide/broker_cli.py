"""``eventide broker``: the development Kafka broker, or a cluster of several."""

from __future__ import annotations

import sys

import click

from streams.exceptions import BrokerError

from .clicommon import fail_cleanly as _fail_cleanly
from .clicommon import settings as _settings
from .tools import devbroker, devcluster, devsecurity


@click.group()
def broker() -> None:
    """Control the development Kafka broker (KRaft, from Maven Central jars)."""


@broker.command("install")
@_fail_cleanly
def broker_install() -> None:
    """Resolve the Kafka jars with Maven (done by `start` when needed)."""

    click.echo(f"jars in {devbroker.install(click.echo)}")


@broker.command("start")
@click.option(
    "--secure",
    is_flag=True,
    help="A SASL_SSL listener (SCRAM-SHA-512, the CA of `broker certs`), deny-by-default "
    "ACLs and one user per role (admin, worker, relay); prints what to export.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, devcluster.MAX_NODES),
    default=None,
    help="1: the single dev broker (default); 3 or more: a cluster on loopback, node i on "
    "EVENTIDE_BROKER_URL's port + i - 1, replication factor 3, min.insync.replicas 2.",
)
@click.option(
    "--node",
    type=int,
    default=None,
    help="(Re)start only this node (1..n) of the cluster, e.g. after `broker kill`.",
)
@click.option(
    "--heap",
    default=None,
    help=f"Java heap (-Xmx) of each cluster node [default: {devcluster.DEFAULT_HEAP}]; "
    "the single broker takes EVENTIDE_BROKER_HEAP.",
)
@_fail_cleanly
def broker_start(secure: bool, nodes: int | None, node: int | None, heap: str | None) -> None:
    """Start the broker (or cluster) in the background; return once it answers."""

    s = _settings()
    if node is not None or (nodes or 1) > 1:
        if secure:
            raise BrokerError("--secure runs one broker; the dev cluster is plaintext")
        cluster = devcluster.DevCluster.from_settings(s, nodes=nodes, heap=heap)
        if node is not None:
            cluster.start_node(node, click.echo)
        else:
            cluster.start(click.echo)
        return
    devbroker.start(s, click.echo, secure=secure)


@broker.command("certs")
@_fail_cleanly
def broker_certs() -> None:
    """Make the secured dev broker's CA, certificates and role passwords (once).

    They go to <EVENTIDE_STATE_DIR>/kafka-secrets (private); `broker start
    --secure` makes them too when missing.
    """

    s = _settings()
    where = devsecurity.make_secrets(s, click.echo)
    click.echo(f"CA: {where.ca}; broker keystore: {where.keystore}")
    click.echo(devsecurity.exports(s, where))


@broker.command("stop")
@click.option("--node", type=int, default=None, help="Stop only this node of the cluster.")
@_fail_cleanly
def broker_stop(node: int | None) -> None:
    """Stop the broker (or every node of the cluster) started by `eventide broker start`."""

    s = _settings()
    if node is not None or devcluster.DevCluster.exists(s):
        cluster = devcluster.DevCluster.from_settings(s)
        if node is not None:
            cluster.stop_node(node, click.echo)
            return
        if cluster.stop(click.echo):
            return
    devbroker.stop(s, click.echo)


@broker.command("kill")
@click.option("--node", type=int, required=True, help="The node (1..n) to kill.")
@_fail_cleanly
def broker_kill(node: int) -> None:
    """Kill one node of the cluster with SIGKILL (kill -9), as a crash would;
    `broker start --node N` restarts it."""

    s = _settings()
    if not devcluster.DevCluster.exists(s):
        raise BrokerError(
            f"no dev cluster on port {s.broker_port}: `eventide broker start --nodes 3`"
        )
    devcluster.DevCluster.from_settings(s).kill(node, click.echo)


@broker.command("status")
@_fail_cleanly
def broker_status() -> None:
    """Say whether the dev broker (or each node of the cluster) runs and answers;
    exit 1 unless all do."""

    s = _settings()
    if devcluster.DevCluster.exists(s):
        cluster = devcluster.DevCluster.from_settings(s)
        states = cluster.status()
        for st in states:
            state = "up" if st.up else "down"
            running = f"pid {st.pid}" if st.pid else "not running"
            member = "in the cluster" if st.in_cluster else "not in the cluster"
            click.echo(f"node {st.node}: {state} on {st.address} ({running}, {member})")
        if not all(st.up for st in states):
            sys.exit(1)
        return
    pid, answering = devbroker.status(s)
    where = s.bootstrap_servers[0]
    if answering:
        click.echo(f"broker up on {where}" + (f" (pid {pid})" if pid else " (not ours)"))
    else:
        click.echo(f"broker down on {where}" + (f" (pid {pid} not answering)" if pid else ""))
        sys.exit(1)
