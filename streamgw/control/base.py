"""What the control backends share: the checks a request passes, the charges it leaves, usage rows.

A backend (SQLite, Redis, memory) keeps four kinds of state, each under a name the limiter builds:

* **rates** (``requests``, ``tokens`` checks): one number per name, the GCRA "theoretical arrival
  time" ``tat``.  A limit of L per minute is a bucket of L that refills continuously (L per 60 s):
  ``tat - now`` is how much of the minute is in use.  A request is admitted when
  ``max(tat, now) + 60/L - now <= 60`` and moves ``tat`` by ``60/L``; tokens are admitted while
  ``tat - now < 60`` (fewer than L tokens counted) and charged when the response ends
  (``tat = max(tat, now) + tokens * 60/L``), so a response that used more than was left pushes
  ``tat`` past the window and the next request waits until it is paid back.
* **leases** (``streams``): the live leases of a name, each with an expiry; a request is admitted
  while fewer than the limit are live and takes one, which the gateway refreshes while the request
  runs and releases when it ends.  A crashed worker's leases expire by themselves.
* **counters** (``budget``): a number per name and budget period (the name holds the UTC day or
  month), admitted while below the limit, added to when a response ends; expired after the period.
* **usage**: counts per day x key x tenant x model x provider x upstream model.

``admit`` evaluates every check of a request and commits all of them or none, atomically across
processes (one SQLite transaction, one Redis script).  ``evaluate`` and ``charge`` are the rules,
written once here for SQLite and memory; the Redis script (``streamgw.control.redis``) is the same
arithmetic in Lua, and ``tests/control`` runs one suite against all three backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: what every backend raises when it cannot be reached or answered badly (within ``[control] timeout``): the
#: same 503 ``control_unavailable`` the managed keys raise, so a caller that does not catch it answers 503
from streamgw.errors import ControlUnavailable

#: the rate window, seconds
WINDOW = 60.0
#: floating-point slack when comparing times
EPSILON = 1e-9

#: the dimensions of a usage row, in order
USAGE_DIMENSIONS = ("day", "key", "tenant", "model", "provider", "upstream_model")
#: its counters, in order (``cost_usd`` is a float, the rest are integers)
USAGE_COUNTERS = ("requests", "completed", "incomplete", "failed", "input_tokens", "cached_tokens",
                  "output_tokens", "reasoning_tokens", "cost_usd")

UsageKey = tuple[str, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Check:
    """One limit a request must pass.

    ``kind``: ``requests`` | ``tokens`` (per minute), ``streams`` (concurrent, takes lease ``lease``
    for ``ttl`` seconds) or ``budget`` (a counter below ``limit``; ``ttl``: seconds until the period
    ends, which is when the counter expires and what a refused request is told to wait).
    """

    kind: str
    name: str
    limit: float
    lease: str = ""
    ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A check's outcome: allowed, what is left, seconds until fully reset, seconds to wait if refused."""

    allowed: bool
    remaining: float
    reset: float
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Charge:
    """What an ended request leaves: ``tokens`` (``amount`` tokens into the rate ``name`` of ``limit``
    per minute), ``add`` (``amount`` onto counter ``name``, which expires ``ttl`` seconds from now) or
    ``release`` (lease ``lease`` of ``name``)."""

    kind: str
    name: str
    amount: float = 0.0
    limit: float = 0.0
    lease: str = ""
    ttl: float = 0.0


@dataclass(slots=True)
class UsageCounts:
    """The counters of one usage row (see ``USAGE_COUNTERS``)."""

    requests: int = 0
    completed: int = 0
    incomplete: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: UsageCounts) -> None:
        """Add ``other`` into this one."""
        for name in USAGE_COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self) -> list[float]:
        """The counters in ``USAGE_COUNTERS`` order."""
        return [getattr(self, name) for name in USAGE_COUNTERS]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One aggregated usage row as read back."""

    key: UsageKey
    counts: UsageCounts = field(default_factory=UsageCounts)


class ControlBackend(Protocol):
    """Shared state of limits, budgets and usage (``streamgw.control.open_control`` picks one)."""

    name: str

    async def admit(self, checks: Sequence[Check], commit: bool = True) -> list[Verdict]:
        """Evaluate ``checks`` at the backend's time; commit them all when every one passes (and ``commit``)."""
        ...

    async def settle(self, charges: Sequence[Charge]) -> None:
        """Apply the charges of ended requests (atomically each)."""
        ...

    async def refresh(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        """Extend live leases ``(name, lease)`` to ``ttl`` seconds from now (a lease already gone stays gone)."""
        ...

    async def add_usage(self, rows: dict[UsageKey, UsageCounts]) -> None:
        """Add aggregated usage."""
        ...

    async def usage(self, start: str, end: str, key: str | None = None,
                    tenant: str | None = None) -> list[UsageRow]:
        """Usage rows of the days ``start``..``end`` (``YYYY-MM-DD``, inclusive), optionally of one key / tenant."""
        ...

    async def maintain(self) -> None:
        """Housekeeping, about once a second (SQLite: checkpoint the WAL, drop expired rows; off the event loop)."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


# --- the rules, for backends that hold their state in Python -----------------------------------------


def evaluate(check: Check, now: float, rate: float | None = None, live: int = 0,
             counter: float = 0.0) -> tuple[Verdict, float | None]:
    """A check against its state: ``rate`` (the name's ``tat``), ``live`` (leases), ``counter``.

    Returns the verdict and, for an allowed ``requests`` check, the new ``tat`` to commit.
    """
    kind, limit = check.kind, check.limit
    if kind in ("requests", "tokens"):
        step = WINDOW / limit
        base = max(rate if rate is not None else now, now)
        if kind == "requests":
            new = base + step
            if new - now <= WINDOW + EPSILON:
                return Verdict(True, math.floor((WINDOW - (new - now)) / step + EPSILON), new - now), new
            return Verdict(False, 0, base - now, new - WINDOW - now), None
        used = base - now
        if used < WINDOW - EPSILON:
            return Verdict(True, max(0, math.floor(limit - used / step + EPSILON)), used), None
        return Verdict(False, 0, used, used - WINDOW + step), None
    if kind == "streams":
        if live < limit:
            return Verdict(True, limit - live - 1, 0.0), None
        return Verdict(False, 0, 0.0, 1.0), None
    if counter < limit:
        return Verdict(True, limit - counter, check.ttl), None
    return Verdict(False, 0, check.ttl, check.ttl), None


def charged_tat(rate: float | None, now: float, amount: float, limit: float) -> float:
    """The rate's ``tat`` after ``amount`` tokens were used."""
    return max(rate if rate is not None else now, now) + amount * WINDOW / limit


__all__ = [
    "EPSILON",
    "USAGE_COUNTERS",
    "USAGE_DIMENSIONS",
    "WINDOW",
    "Charge",
    "Check",
    "ControlBackend",
    "ControlUnavailable",
    "UsageCounts",
    "UsageKey",
    "UsageRow",
    "Verdict",
    "charged_tat",
    "evaluate",
]
