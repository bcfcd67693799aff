"""The composition root: the ``eventide`` CLI, the app wiring and operator tools.

It is the only package that knows every other one: it builds the Faust app
from the projections declared in ``agents/`` and the runtime in ``streams/``,
and runs the command API from ``api/``. Nothing below imports it.
"""
