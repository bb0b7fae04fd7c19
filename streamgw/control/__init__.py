"""Shared control state: rate limits, budgets and usage (``[control]``), below the engine.

``open_control`` picks the backend ``Config.control_backend`` names; ``UsageWriter`` is the
background writer of usage rows.  The limiter that builds checks from a caller's key lives in
``streamgw.engine.limits``.
"""

from __future__ import annotations

from streamgw.config import Config
from streamgw.control.base import ControlBackend, ControlUnavailable
from streamgw.control.memory import MemoryControl


def open_control(config: Config) -> ControlBackend:
    """The backend of ``config`` (nothing is connected or created yet: that happens on first use)."""
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
