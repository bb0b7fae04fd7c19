"""Native Responses request builder: the client's body goes up as sent, minus ``provider``."""

from __future__ import annotations

import json
from typing import Any

from streamgw.config import ProviderConfig, Secret
from streamgw.core.blobs import encode_blob
from streamgw.core.request import parse_request
from streamgw.providers.base import UpstreamRequest
from streamgw.providers.openai_responses import DIALECT, build_request

KEY = "sk-test-0123456789abcdef"


def provider(key: str = KEY, headers: tuple[tuple[str, str], ...] = ()) -> ProviderConfig:
    return ProviderConfig(name="oai", type="openai", base_url="https://upstream.test/v1/", api_key=Secret(key),
                          headers=headers)


def upstream(raw: bytes, prov: ProviderConfig | None = None, model: str = "gpt-5-mini") -> UpstreamRequest:
    return build_request(parse_request(raw), prov or provider(), model)


def sent(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(upstream(json.dumps(body).encode(), **kwargs).body)
    return result


def test_envelope_and_headers() -> None:
    up = upstream(b'{"model":"oai/gpt-5-mini","input":"hi"}')
    assert (up.method, up.url) == ("POST", "https://upstream.test/v1/responses")
    assert up.headers == {
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "accept": "text/event-stream",
        "accept-encoding": "identity",
    }
    assert up.body == b'{"model":"gpt-5-mini","input":"hi","stream":true}'
    assert KEY not in repr(up)


def test_provider_headers_are_added_and_no_key_means_no_authorization() -> None:
    up = upstream(b'{"model":"m","input":"hi"}', provider("", headers=(("OpenAI-Project", "proj_1"),)))
    assert up.headers["openai-project"] == "proj_1" and "authorization" not in up.headers


def test_every_field_is_kept_unknown_ones_too_and_provider_is_stripped() -> None:
    body = {
        "model": "oai/gpt-5-mini",
        "provider": "oai",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                  {"type": "item_reference", "id": "msg_123"}],
        "instructions": "Be brief.",
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]},
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}, "verbosity": "low"},
        "previous_response_id": "resp_abc",
        "prompt_cache_retention": "24h",
        "context_management": [{"type": "compaction", "compact_threshold": 1000}],
        "x_future_field": {"nested": [1, 2.5, None, "é"]},
        "metadata": {"k": "v"},
        "store": False,
    }
    out = sent(body)
    expected = {key: value for key, value in body.items() if key != "provider"}
    assert out == {**expected, "model": "gpt-5-mini", "stream": True}
    assert list(out) == [*list(expected), "stream"]  # the client's order, model replaced in place


def test_the_upstream_always_streams_and_stream_options_follow_the_client() -> None:
    options = {"include_obfuscation": False}
    streamed = sent({"model": "m", "input": "x", "stream": True, "stream_options": options})
    assert streamed["stream"] is True and streamed["stream_options"] == options
    plain = sent({"model": "m", "input": "x", "stream": False, "stream_options": options})
    assert plain["stream"] is True and "stream_options" not in plain
    assert sent({"model": "m", "input": "x"})["stream"] is True


def test_model_is_the_route_model_and_non_ascii_stays_literal() -> None:
    up = upstream('{"model":"fast","input":"héllo 👋"}'.encode(), model="gpt-5-nano-2025-08-07")
    assert json.loads(up.body)["model"] == "gpt-5-nano-2025-08-07"
    assert "héllo 👋".encode() in up.body


def test_dialect_build_request_ignores_assets() -> None:
    req = parse_request(b'{"model":"m","input":[{"role":"user","content":[{"type":"input_image",'
                        b'"image_url":"https://example.test/cat.png"}]}]}')
    up = DIALECT.build_request(req, provider(), "gpt-5", {"https://example.test/cat.png": ("image/png", "AAAA")})
    assert json.loads(up.body)["input"][0]["content"][0]["image_url"] == "https://example.test/cat.png"
    assert b"AAAA" not in up.body


def test_reasoning_items_minted_for_other_providers_are_left_out() -> None:
    own = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-openai-own"}
    foreign = {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "t"}],
               "encrypted_content": encode_blob("claude", {"sig": "x", "thinking": "t"})}
    user = {"role": "user", "content": "hi"}
    out = sent({"model": "m", "input": [user, own, foreign, {"type": "reasoning", "id": "rs_3", "summary": []}]})
    assert out["input"] == [user, own, {"type": "reasoning", "id": "rs_3", "summary": []}]
    untouched = {"model": "gpt-5-mini", "input": [user, own]}
    assert upstream(json.dumps(untouched).encode()).body == json.dumps(
        {**untouched, "stream": True}, separators=(",", ":")).encode()
