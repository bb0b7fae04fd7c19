"""Model resolution: which provider answers, and with which upstream model id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from streamgw.config import Config, ProviderConfig, RouteConfig
from streamgw.errors import GatewayError, InvalidRequest, NotFound
from streamgw.providers.registry import local_providers


@dataclass(frozen=True, slots=True)
class Target:
    """One provider and the model id to send it."""

    provider: ProviderConfig
    model: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request's ``model`` resolved to: one target, or a route's targets and strategy."""

    targets: tuple[Target, ...]
    route: RouteConfig | None = None


#: how many single-target plans a router keeps, and the longest model name (with its hint) it keeps one for:
#: the names are the client's, and a kept plan holds its name
_PLANS_MAX = 1024
_PLAN_NAME_MAX = 256


class Router:
    """Resolves ``"provider/model"``, the ``provider`` hint, and bare names from ``models`` lists."""

    def __init__(self, config: Config) -> None:
        self._providers = config.providers
        self._routes = {
            name: Plan(tuple(self._target(t) for t in route.targets), route) for name, route in config.routes.items()
        }
        #: single-target plans made so far, by model and hint (a plan depends on the config alone); the names are
        #: the clients', so the store starts over when full
        self._plans: dict[tuple[str, str | None], Plan] = {}
        self._bare: dict[str, ProviderConfig] = {}
        for provider in config.providers.values():
            for model in provider.models:
                self._bare.setdefault(model, provider)

    def _target(self, spec: str) -> Target:
        name, _, model = spec.partition("/")
        return Target(self._providers[name], model)

    def plan(self, model: str, hint: str | None = None) -> Plan:
        """A route named ``model`` (unless a ``provider`` hint is given), else a single target."""
        if hint is None and model in self._routes:
            return self._routes[model]
        key = (model, hint)
        plan = self._plans.get(key)
        if plan is None:
            plan = Plan((self.resolve(model, hint),))  # (an unknown model raises: nothing kept)
            if len(model) + len(hint or "") <= _PLAN_NAME_MAX:
                if len(self._plans) >= _PLANS_MAX:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def resolve(self, model: str, hint: str | None = None) -> Target:
        """The target for a request's ``model`` and optional ``provider`` hint."""
        if hint is not None:
            provider = self._providers.get(hint)
            if provider is None:
                raise NotFound(f"unknown provider {hint!r}", param="provider", code="provider_not_found")
            prefix = hint + "/"
            return Target(provider, model.removeprefix(prefix))
        if model in self._bare:
            return Target(self._bare[model], model)
        name, sep, rest = model.partition("/")
        if sep:
            provider = self._providers.get(name)
            if provider is not None:
                if not rest:
                    raise InvalidRequest("model id after the provider name is empty", param="model")
                return Target(provider, rest)
        raise self.unknown(model)

    def unknown(self, model: str, *, listing: bool = True) -> NotFound:
        """The 404 of a model that is not routed; ``listing``: it names the providers and routes there are."""
        routes = ", ".join(sorted(self._routes)) or "none"
        where = (f"(providers: {', '.join(sorted(self._providers))}; routes: {routes})" if listing
                 else "(GET /v1/models lists the models this key may use)")
        return NotFound(f"model {model!r} is not routed by this gateway: use \"provider/model\" or a route {where}",
                        param="model", code="model_not_found")

    def plan_for(self, model: str, hint: str | None, allowed: Sequence[str]) -> Plan:
        """``plan``, for a key that may use only the models matching the patterns ``allowed`` (``()``: all).

        A model outside them is refused with the very 404 of a model that does not exist, and so is
        any name that matches none of them: the answer never tells a key what exists beyond its reach.
        The names checked are what the client asked for (a route's name, a configured model's bare
        name, ``provider/model``; with a ``provider`` hint, ``hint/model``) and, for a single
        target, the ``provider/model`` it resolved to.
        """
        if not allowed:
            return self.plan(model, hint)
        asked = [model] if hint is None else [f"{hint}/{model.removeprefix(hint + '/')}"]
        try:
            plan = self.plan(model, hint)
        except GatewayError:
            if _matches(allowed, asked):
                raise
            raise self.unknown(model, listing=False) from None
        if plan.route is None:
            target = plan.targets[0]
            asked.append(f"{target.provider.name}/{target.model}")
        if not _matches(allowed, asked):
            raise self.unknown(model, listing=False)
        return plan

    def listed_models(self, allowed: Sequence[str] = ()) -> list[tuple[str, str]]:
        """``(id, owner)`` for ``GET /v1/models``: only those a key whose patterns are ``allowed`` may use."""
        out: list[tuple[str, str]] = []
        for provider in self._providers.values():
            local = local_providers().get(provider.type)
            if local is not None:  # answers any model id: list the one it is known by
                out.append((f"{provider.name}/{local.listed_model}", provider.name))
            out += [(f"{provider.name}/{m}", provider.name) for m in provider.models]
        out += [(name, "route") for name in self._routes]
        if not allowed:
            return out
        return [(mid, owner) for mid, owner in out if _matches(allowed, self._names_of(mid, owner))]

    def _names_of(self, listed: str, owner: str) -> list[str]:
        """The names a listed model may be asked by: its id, and its bare name when that routes to it."""
        if owner == "route":
            return [listed]
        bare = listed.removeprefix(owner + "/")
        routed = self._bare.get(bare)
        return [listed, bare] if routed is not None and routed.name == owner and bare not in self._routes else [listed]


def _matches(patterns: Sequence[str], names: Sequence[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns for name in names)
