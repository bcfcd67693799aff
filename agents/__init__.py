"""Faust agents, one module each, registered explicitly by the app factory."""

from . import orders

__all__ = ["orders"]
