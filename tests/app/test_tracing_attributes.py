"""How a request becomes span attributes and a status (``streamgw.app.tracing``), case by case."""

from __future__ import annotations

from typing import Any

import pytest

from streamgw.app.tracing import _add_usage, _provider_attributes, _server_error, _winner
from streamgw.config import ProviderConfig
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import RequestEntry
from streamgw.errors import InvalidRequest, UpstreamError


@pytest.mark.parametrize(("type_", "name", "url", "expected"), [
    ("openai", "oai", "https://api.openai.com/v1", {"gen_ai.provider.name": "openai", "streamgw.provider": "oai",
                                                    "server.address": "api.openai.com", "server.port": 443}),
    ("anthropic", "anthropic", "http://10.0.0.7:8081", {"gen_ai.provider.name": "anthropic",
                                                        "server.address": "10.0.0.7", "server.port": 8081}),
    ("gemini", "gem", "https://generativelanguage.googleapis.com",
     {"gen_ai.provider.name": "gcp.gemini", "streamgw.provider": "gem",
      "server.address": "generativelanguage.googleapis.com", "server.port": 443}),
    ("chat", "groq", "https://api.groq.com/openai/v1", {"gen_ai.provider.name": "groq",
                                                        "server.address": "api.groq.com", "server.port": 443}),
    ("demo", "demo", "", {"gen_ai.provider.name": "demo"}),
])
def test_provider_attributes(type_: str, name: str, url: str, expected: dict[str, Any]) -> None:
    assert _provider_attributes(ProviderConfig(name=name, type=type_, base_url=url)) == expected


def test_usage_counts_and_only_nonzero_details() -> None:
    found: dict[str, Any] = {}
    _add_usage(found, {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42,
                       "input_tokens_details": {"cached_tokens": 4}, "output_tokens_details": {"reasoning_tokens": 0}})
    assert found == {"gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 30,
                     "gen_ai.usage.cache_read.input_tokens": 4}
    odd: dict[str, Any] = {}
    _add_usage(odd, {"input_tokens": True, "output_tokens": "7", "input_tokens_details": None})
    assert odd == {}


def entry(**fields: Any) -> RequestEntry:
    return RequestEntry("req_1", "sse", None, 0.0, **fields)


def attempt(outcome: str, first_delta: bool = True) -> AttemptRecord:
    return AttemptRecord("p", "m", 0.0, first_delta_at=0.1 if first_delta else None, ended=0.2, outcome=outcome)


def test_the_server_spans_error_and_status() -> None:
    assert _server_error(entry(status=200, finished=True, terminal="completed", first_delta_at=0.1), None) is None
    assert _server_error(entry(status=404, error=InvalidRequest("x", code="nope")), None) == ("nope", False)
    assert _server_error(entry(status=502, error=UpstreamError("x", code="upstream_5xx")), None) == \
        ("upstream_5xx", True)
    # failed after the 200: the stream ended in response.failed
    assert _server_error(entry(status=200, error=UpstreamError("x", code="upstream_idle_timeout"),
                               first_delta_at=0.1), None) == ("upstream_idle_timeout", True)
    failed = attempt("server_error")
    assert _server_error(entry(status=200, finished=True, terminal="failed", first_delta_at=0.1), failed) == \
        ("server_error", True)
    assert _server_error(entry(status=200, first_delta_at=0.1, ended_at=0.3), attempt("cancelled")) == \
        ("client_disconnected", True)
    assert _server_error(entry(status=0, ended_at=0.3), None) == ("client_disconnected", True)  # before any answer


def test_the_winner_is_the_attempt_that_served_not_a_hedge_that_lost() -> None:
    lost, won, failed = attempt("lost"), attempt("served"), attempt("upstream_5xx", first_delta=False)
    assert _winner(entry(attempts=[failed, lost, won])) is won
    assert _winner(entry(attempts=[failed])) is None


def test_the_span_resource_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter groups every span by its resource: the SDK's hash serialises all its attributes each time."""
    from opentelemetry.sdk import resources

    from streamgw.app.tracing import _Resource

    plain = resources.Resource({"service.name": "streamgw", "host.name": "h"})
    ours = _Resource(plain)
    assert ours == plain and hash(ours) == hash(plain) and ours.attributes == plain.attributes

    def no_json(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(resources, "dumps", no_json)
    assert hash(ours) == hash(ours)
    assert {ours: 1}[ours] == 1
