"""Engine fixtures: mock upstreams served in the test's trio run, and config builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from streamgw.config import Config, ProviderConfig, RouteConfig, Secret, Timeouts
from streamgw.testing.chat_mock import ChatCompletionsMock


class Upstream:
    """A mock Chat Completions upstream running in the test's nursery."""

    def __init__(self, mock: ChatCompletionsMock, port: int) -> None:
        self.mock = mock
        self.port = port

    def provider(self, name: str, **overrides: Any) -> ProviderConfig:
        base = ProviderConfig(name=name, type="chat", base_url=f"http://127.0.0.1:{self.port}/v1",
                              api_key=Secret("sk-upstream-test-key"))
        return replace(base, **overrides)

    def models_seen(self) -> list[str]:
        return [req.json()["model"] for req in self.mock.requests]


@pytest.fixture
async def upstream(nursery: Any) -> AsyncIterator[Upstream]:
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    yield Upstream(mock, port)


def make_config(
    providers: list[ProviderConfig], routes: list[RouteConfig] = (), **timeouts: float  # type: ignore[assignment]
) -> Config:
    """A config with these providers and routes; timeouts override the defaults."""
    return Config(
        providers={p.name: p for p in providers},
        routes={r.name: r for r in routes},
        timeouts=replace(Timeouts(), **timeouts),
    )
