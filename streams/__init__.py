"""The Eventide runtime: settings, app factory, topics, dev broker, CLI."""

from .app import EventideApp, create_app
from .exceptions import BrokerError, EventideError, SettingsError, TopicConfigError
from .settings import Settings

__all__ = [
    "BrokerError",
    "EventideApp",
    "EventideError",
    "Settings",
    "SettingsError",
    "TopicConfigError",
    "create_app",
]
