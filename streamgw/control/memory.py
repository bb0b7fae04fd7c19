"""The memory backend: one process's state (``[control] backend = "memory"``); a limit is then per worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from streamgw.control.base import (
    Charge,
    Check,
    UsageCounts,
    UsageKey,
    UsageRow,
    Verdict,
    charged_tat,
    evaluate,
)


class MemoryControl:
    """Dicts; every operation is synchronous inside, so it is atomic under trio."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.rates: dict[str, float] = {}
        self.leases: dict[str, dict[str, float]] = {}
        self.counters: dict[str, tuple[float, float]] = {}  # name -> (value, expires at)
        self.rows: dict[UsageKey, UsageCounts] = {}

    def _live(self, name: str, now: float) -> dict[str, float]:
        leases = self.leases.setdefault(name, {})
        for lease in [lease for lease, expires in leases.items() if expires <= now]:
            del leases[lease]
        return leases

    def _counter(self, name: str, now: float) -> float:
        value, expires = self.counters.get(name, (0.0, 0.0))
        return value if expires > now else 0.0

    async def admit(self, checks: Sequence[Check], commit: bool = True) -> list[Verdict]:
        now = self._clock()
        verdicts: list[Verdict] = []
        new_rates: dict[str, float] = {}
        for check in checks:
            verdict, tat = evaluate(check, now, self.rates.get(check.name), len(self._live(check.name, now)),
                                    self._counter(check.name, now))
            verdicts.append(verdict)
            if tat is not None:
                new_rates[check.name] = tat
        if commit and all(v.allowed for v in verdicts):
            self.rates.update(new_rates)
            for check in checks:
                if check.kind == "streams":
                    self.leases[check.name][check.lease] = now + check.ttl
        return verdicts

    async def settle(self, charges: Sequence[Charge]) -> None:
        now = self._clock()
        for charge in charges:
            if charge.kind == "tokens":
                self.rates[charge.name] = charged_tat(self.rates.get(charge.name), now, charge.amount, charge.limit)
            elif charge.kind == "add":
                self.counters[charge.name] = (self._counter(charge.name, now) + charge.amount, now + charge.ttl)
            elif charge.kind == "release":
                self.leases.get(charge.name, {}).pop(charge.lease, None)

    async def refresh(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        now = self._clock()
        for name, lease in leases:
            live = self._live(name, now)
            if lease in live:
                live[lease] = now + ttl

    async def add_usage(self, rows: dict[UsageKey, UsageCounts]) -> None:
        for key, counts in rows.items():
            self.rows.setdefault(key, UsageCounts()).add(counts)

    async def usage(self, start: str, end: str, key: str | None = None,
                    tenant: str | None = None) -> list[UsageRow]:
        out = []
        for row_key, counts in sorted(self.rows.items()):
            if start <= row_key[0] <= end and key in (None, row_key[1]) and tenant in (None, row_key[2]):
                copy = UsageCounts()
                copy.add(counts)
                out.append(UsageRow(row_key, copy))
        return out

    async def maintain(self) -> None:
        """Nothing to do: expired state is dropped as it is met (memory) or by its TTL (redis)."""

    async def aclose(self) -> None:
        return None
