"""The Kafka clients' log lines: one per cause per interval, with a count."""

from __future__ import annotations

import logging

from streams.logthrottle import ThrottleFilter, install_log_throttle


def test_one_line_per_cause_per_interval_with_the_count_of_the_others(caplog):
    now = [0.0]
    throttle = ThrottleFilter(interval=10, clock=lambda: now[0])
    log = logging.getLogger("aiokafka.test-throttle")
    log.addFilter(throttle)
    try:
        with caplog.at_level(logging.INFO, logger="aiokafka.test-throttle"):
            for second in range(25):
                now[0] = float(second)
                for node in range(100):
                    log.error("Unable connect to node with id %s: %s", node, "refused")
                log.warning("Marking the coordinator dead (node %s)", 1)
    finally:
        log.removeFilter(throttle)
    lines = [r.getMessage() for r in caplog.records]
    refused = [line for line in lines if line.startswith("Unable connect")]
    assert refused == [
        "Unable connect to node with id 0: refused",
        "Unable connect to node with id 0: refused (999 more like this in the last 10s not logged)",
        "Unable connect to node with id 0: refused (999 more like this in the last 10s not logged)",
    ]
    assert len([line for line in lines if line.startswith("Marking")]) == 3  # its own cause


def test_installed_on_the_kafka_clients_loggers_only():
    import aiokafka.conn  # noqa: F401  (creates its logger)

    throttle = install_log_throttle(5.0)
    try:
        assert throttle in logging.getLogger("aiokafka.conn").filters
        assert throttle in logging.getLogger("aiokafka").filters
        assert throttle not in logging.getLogger("streams.engine").filters
    finally:
        for name in list(logging.root.manager.loggerDict):
            logging.getLogger(name).removeFilter(throttle)
