"""Model resolution: which provider answers, and with which upstream model id."""

from __future__ import annotations

from dataclasses import dataclass

from streamgw.config import Config, ProviderConfig, RouteConfig
from streamgw.errors import InvalidRequest, NotFound
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


class Router:
    """Resolves ``"provider/model"``, the ``provider`` hint, and bare names from ``models`` lists."""

    def __init__(self, config: Config) -> None:
        self._providers = config.providers
        self._routes = {
            name: Plan(tuple(self._target(t) for t in route.targets), route) for name, route in config.routes.items()
        }
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
        return Plan((self.resolve(model, hint),))

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
        raise NotFound(
            f"model {model!r} is not routed by this gateway: use \"provider/model\" or a route "
            f"(providers: {', '.join(sorted(self._providers))}; routes: {', '.join(sorted(self._routes)) or 'none'})",
            param="model",
            code="model_not_found",
        )

    def listed_models(self) -> list[tuple[str, str]]:
        """``(id, owner)`` for ``GET /v1/models``."""
        out: list[tuple[str, str]] = []
        for provider in self._providers.values():
            local = local_providers().get(provider.type)
            if local is not None:  # answers any model id: list the one it is known by
                out.append((f"{provider.name}/{local.listed_model}", provider.name))
            out += [(f"{provider.name}/{m}", provider.name) for m in provider.models]
        out += [(name, "route") for name in self._routes]
        return out
