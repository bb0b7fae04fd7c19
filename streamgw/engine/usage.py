"""Usage accounting: every ended request becomes a usage row (day x key x tenant x model x provider x
upstream model) handed to the ``UsageWriter``, which writes it off the request path.

Recorded for every request that reached the lifecycle or was refused with a known caller: its
key's name (``""``: anonymous), its tenant's name (``""``: a key that is its own tenant), the model
asked (``""`` when it named no model the gateway routes, so junk names cannot grow the table), the
provider and upstream model that served it, whether it completed, ended incomplete, or failed
(any error, a refusal, or the client leaving), its tokens, and its cost when ``[prices]`` prices it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from streamgw.config import Price
from streamgw.control.base import UsageCounts, UsageKey
from streamgw.control.usage import UsageWriter
from streamgw.engine.lifecycle import RequestEntry
from streamgw.engine.limits import cost_of, tokens_of


def usage_key(entry: RequestEntry, now: float) -> UsageKey:
    """The row an ended request counts into."""
    caller = entry.caller
    policy = caller.key if caller is not None else None
    tenant = policy.tenant if policy is not None else (caller.tenant if caller is not None else "")
    model = entry.model if entry.label != "none" else ""
    return (datetime.fromtimestamp(now, UTC).date().isoformat(), policy.name if policy is not None else "",
            tenant[2:] if tenant.startswith("t:") else "", model[:256], entry.provider, entry.upstream_model[:256])


def usage_counts(entry: RequestEntry, prices: Sequence[Price]) -> UsageCounts:
    """One request's counters."""
    input_tokens, cached, output, reasoning = tokens_of(entry.usage)
    ok = entry.error is None and entry.finished
    completed = ok and entry.terminal == "completed"
    incomplete = ok and entry.terminal == "incomplete"
    return UsageCounts(requests=1, completed=int(completed), incomplete=int(incomplete),
                       failed=int(not (completed or incomplete)), input_tokens=input_tokens, cached_tokens=cached,
                       output_tokens=output, reasoning_tokens=reasoning, cost_usd=cost_of(prices, entry) or 0.0)


class UsageObserver:
    """The ``RequestObserver`` that accounts usage (synchronous: it only adds to pending rows)."""

    __slots__ = ("_clock", "prices", "writer")

    def __init__(self, writer: UsageWriter, prices: Sequence[Price] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.prices = tuple(prices)
        self._clock = clock

    def opened(self, entry: RequestEntry) -> None:
        """Nothing to do until it ends."""

    def ended(self, entry: RequestEntry) -> None:
        """Add the request's usage to its row."""
        if entry.caller is None:
            return  # nobody we know (a bad key)
        self.writer.add(usage_key(entry, self._clock()), usage_counts(entry, self.prices))
