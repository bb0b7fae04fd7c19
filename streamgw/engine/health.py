"""Per-endpoint health: in-flight counts, consecutive failures and cooldown.

An endpoint is one provider key (a provider with several ``api_keys`` has several).
Cooldown is time-based and recovers on its own; it only ever reorders a route's
targets, so a route never rejects a request without trying something.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import trio

from streamgw.config import ProviderConfig, Secret


@dataclass(slots=True)
class Endpoint:
    """One provider key as the router sees it."""

    provider: str
    index: int
    key: Secret
    in_flight: int = 0
    failures: int = 0  # consecutive
    cooled_until: float = 0.0

    def cooling(self, now: float) -> bool:
        """True while this endpoint sits out its cooldown."""
        return now < self.cooled_until


class Health:
    """All endpoints' state, shared by every request of one gateway process."""

    def __init__(self, clock: Callable[[], float] = trio.current_time,
                 on_cooldown: Callable[[str], None] | None = None) -> None:
        """``on_cooldown``: called with the provider's name each time one of its keys enters a cooldown."""
        self._clock = clock
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._on_cooldown = on_cooldown

    def endpoints(self, provider: ProviderConfig) -> list[Endpoint]:
        """The endpoints (keys) of ``provider``, created on first use."""
        found = self._endpoints.get(provider.name)
        if found is None:
            keys = (provider.api_key, *provider.extra_keys)
            found = [Endpoint(provider.name, i, key) for i, key in enumerate(keys)]
            self._endpoints[provider.name] = found
        return found

    def pick(self, provider: ProviderConfig) -> Endpoint:
        """The key to use now: not cooling if possible, then least in flight."""
        candidates = self.endpoints(provider)
        if len(candidates) == 1:  # one key (nearly every provider): no choice to make
            return candidates[0]
        now = self._clock()
        warm = [e for e in candidates if not e.cooling(now)] or candidates
        return min(warm, key=lambda e: (e.in_flight, e.failures, e.cooled_until, e.index))

    def cooling(self, provider: ProviderConfig) -> bool:
        """True when every key of ``provider`` is cooling down."""
        now = self._clock()
        return all(e.cooling(now) for e in self.endpoints(provider))

    def cooled_until(self, provider: ProviderConfig) -> float:
        """When the first key of ``provider`` comes back."""
        return min(e.cooled_until for e in self.endpoints(provider))

    def success(self, endpoint: Endpoint) -> None:
        """The endpoint answered: it is healthy again."""
        endpoint.failures = 0
        endpoint.cooled_until = 0.0

    def failure(self, endpoint: Endpoint, threshold: int, seconds: float) -> None:
        """The endpoint failed; after ``threshold`` in a row it cools down for ``seconds``."""
        endpoint.failures += 1
        if threshold and endpoint.failures >= threshold:
            now = self._clock()
            if not endpoint.cooling(now) and self._on_cooldown is not None:
                self._on_cooldown(endpoint.provider)
            endpoint.cooled_until = now + seconds

    def with_key(self, provider: ProviderConfig, endpoint: Endpoint) -> ProviderConfig:
        """``provider`` set to send ``endpoint``'s key."""
        if endpoint.index == 0:
            return provider
        return replace(provider, api_key=endpoint.key)

    def order(self, providers: Sequence[ProviderConfig]) -> list[int]:
        """Indices of ``providers``: warm ones first (stable), then cooling ones by recovery time."""
        warm = [i for i, p in enumerate(providers) if not self.cooling(p)]
        cold = sorted((i for i, p in enumerate(providers) if self.cooling(p)),
                      key=lambda i: self.cooled_until(providers[i]))
        return warm + cold
