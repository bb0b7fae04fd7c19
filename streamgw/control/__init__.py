"""The control plane's shared state (``[control]``): managed keys, and the limits, budgets and usage of keys.

It lives in one backend that every worker and instance shares (``Config.control_backend``): an
SQLite file for the workers of one machine, Redis across machines, or memory for one process.
``open_control`` picks the limits-and-usage backend; ``UsageWriter`` (``streamgw.control.usage``) is the
background writer of usage rows; the limiter that builds checks from a caller's key lives in
``streamgw.engine.limits``.
"""

from __future__ import annotations

from streamgw.config import Config
from streamgw.control.base import ControlBackend, ControlUnavailable
from streamgw.control.memory import MemoryControl


def open_control(config: Config) -> ControlBackend:
    """The limits-and-usage backend of ``config`` (nothing is connected or created yet: that happens on first use)."""
    backend, where, prefix = config.control_backend()
    timeout = config.control.timeout
    if backend == "redis":
        from streamgw.control.redis import RedisControl

        return RedisControl(where, key_prefix=prefix, timeout=timeout)
    if backend == "sqlite":
        from streamgw.control.sqlite import SQLiteControl

        return SQLiteControl(where, timeout=timeout)
    return MemoryControl()


__all__ = ["ControlBackend", "ControlUnavailable", "open_control"]
