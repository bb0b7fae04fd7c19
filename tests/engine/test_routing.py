"""``Router``: a model's single-target plan is made once and kept (bounded); routes and errors as before."""

from __future__ import annotations

import pytest

from streamgw.config import Config, ProviderConfig, RouteConfig
from streamgw.engine import routing
from streamgw.engine.routing import Router
from streamgw.errors import NotFound


def _router() -> Router:
    providers = {name: ProviderConfig(name=name, type="chat", base_url="http://127.0.0.1:1/v1", models=models)
                 for name, models in (("a", ("known",)), ("b", ()))}
    return Router(Config(providers=providers, routes={"r": RouteConfig("r", ("a/x", "b/y"))}))


def test_a_models_plan_is_made_once_and_kept_per_model_and_hint() -> None:
    router = _router()
    first = router.plan("a/m")
    assert router.plan("a/m") is first
    assert [(t.provider.name, t.model) for t in first.targets] == [("a", "m")] and first.route is None
    hinted = router.plan("m", "b")
    assert hinted is not first and [(t.provider.name, t.model) for t in hinted.targets] == [("b", "m")]
    assert router.plan("m", "b") is hinted
    assert [(t.provider.name, t.model) for t in router.plan("known").targets] == [("a", "known")]
    assert router.plan("r").route is not None and router.plan("r") is router.plan("r")


def test_an_unknown_model_is_refused_every_time_and_not_kept() -> None:
    router = _router()
    for _ in range(2):
        with pytest.raises(NotFound):
            router.plan("nope/m")
    assert ("nope/m", None) not in router._plans


def test_the_kept_plans_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "_PLANS_MAX", 8)
    router = _router()
    plans = [router.plan(f"a/m{i}") for i in range(20)]
    assert len(router._plans) <= 8
    assert [p.targets[0].model for p in plans] == [f"m{i}" for i in range(20)]
    assert router.plan("a/m19") is plans[19]  # the newest are still there


def test_a_long_model_name_is_resolved_but_not_kept() -> None:
    router = _router()
    model = "a/" + "x" * 300
    assert router.plan(model).targets[0].model == "x" * 300
    assert router._plans == {}
