"""The Eventide runtime: settings, topic catalogue, the batch projection engine,
failure routing, outputs, metrics and the worker's HTTP views.

Importing this package loads no Kafka or Faust client: the engine and the views
are imported from their modules (``streams.engine``, ``streams.views``).
"""

from .exceptions import (
    BrokerError,
    KafkaAuthorizationError,
    KafkaSecurityError,
    RebuildError,
    RecordKeyError,
    SettingsError,
    TopicConfigError,
)
from .kafka_security import KafkaSecurity
from .setting_types import SecretText, SecretUrl
from .settings import Settings
from .tokens import Secret

__all__ = [
    "BrokerError",
    "KafkaAuthorizationError",
    "KafkaSecurity",
    "KafkaSecurityError",
    "RebuildError",
    "RecordKeyError",
    "Secret",
    "SecretText",
    "SecretUrl",
    "Settings",
    "SettingsError",
    "TopicConfigError",
]
