"""The cases of the matrix, most valuable first, and those that cannot run here."""

from __future__ import annotations

from collections.abc import Callable

from . import cases, cluster, disk, network, relay
from .harness import Case, Outcome

CASES: dict[str, tuple[str, Callable[[Case], Outcome], dict[str, str]]] = {
    "kill": ("kill -9 of the worker at random moments, x10 (x2 short)", cases.kills, {}),
    "slow-kill": ("kill -9 in the middle of an event that takes 4 s", cases.slow_kill, {}),
    "churn": ("a second worker joins and leaves (SIGTERM) x20 (x3 short)", cases.churn, {}),
    "churn-standby": (
        "the same, both workers with a standby replica",
        cases.churn,
        {"EVENTIDE_STANDBY_REPLICAS": "1"},
    ),
    "sst-corrupt": (
        "kill -9, the largest .sst of the busiest orders store truncated to half, restart",
        lambda c: cases.damaged_sst(c, "corrupt"),
        {},
    ),
    "sst-delete": (
        "kill -9, the largest .sst of the busiest orders store deleted, restart",
        lambda c: cases.damaged_sst(c, "delete"),
        {},
    ),
    "offset-reset": (
        "the worker stopped, its group's offsets reset to 0, restarted: everything replays",
        cases.offset_reset,
        {},
    ),
    "bad-keys": (
        "order.placed records with no key and under another order's key, for real customers",
        cases.bad_keys,
        {},
    ),
    "compaction": (
        "kill -9, the stores wiped, restore from changelogs compacting every second",
        cases.compaction,
        {},
    ),
    "relay-kill": (
        "kill -9 of the outbox relay x5 (x2 short) while 30 order lifecycles/s come in "
        "through the command API; published events counted by event id",
        relay.relay_kill,
        {},
    ),
    "partition-stall": (
        "the worker's connections to the broker stall (no byte moves) for 20 s (8 s short)",
        lambda c: network.partition(c, "stall"),
        {},
    ),
    "partition-drop": (
        "the worker's connections to the broker are cut and refused for 20 s (8 s short)",
        lambda c: network.partition(c, "drop"),
        {},
    ),
    "disk-full": (
        "the stores' filesystem (a 64 MB tmpfs) filled up for 15 s (6 s short), then freed",
        disk.disk_full,
        {},
    ),
    "leader-kill": (
        "three-broker cluster: kill -9 of the node leading the most order-events partitions, "
        "restarted after 15 s (6 s short)",
        cluster.leader_kill,
        {},
    ),
    "cluster-restart": (
        "three-broker cluster: every node stopped and started again",
        cluster.cluster_restart,
        {},
    ),
}
"""Name → (what happens, the case, EVENTIDE_* overrides of its workers)."""

UNAVAILABLE: dict[str, str] = {}
"""Name → why the case cannot run on this machine (listed in the report, not run)."""
