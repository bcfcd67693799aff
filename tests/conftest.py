"""Shared fixtures; per-area fixture modules are loaded as plugins."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.cluster",
    "tests.fixtures.postgres",
    "tests.fixtures.rabbitmq",
    "tests.fixtures.secure_broker",
    "tests.fixtures.worker",
]
