"""Stored responses on every dialect, end to end: gateway process, mock upstreams, the official openai SDK.

For each dialect: create (non-streamed and streamed), GET, input_items, continue with
``previous_response_id`` (checking what the upstream received: the whole prior turn, tool
calls and their outputs, reasoning signatures), DELETE, then GET and chaining give 404.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from streamgw.testing import anthropic_mock, gemini_mock
from streamgw.testing.anthropic_mock import AnthropicMock
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.gemini_mock import GeminiMock
from streamgw.testing.ollama_mock import OllamaMock
from streamgw.testing.process import stop_process
from streamgw.testing.responses_mock import ResponsesMock
from streamgw.testing.server import MockRequest

from .conftest import Gateway
from .store_support import start_store_gateway

KEY = "upstream-store-e2e-credential"
THOUGHT = "".join(f"think{i} " for i in range(5))
WEATHER_TOOL: Any = {
    "type": "function", "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@dataclass
class Stack:
    """The gateway and every mock upstream, by provider name."""

    gateway: Gateway
    mocks: dict[str, Any]

    def client(self) -> openai.OpenAI:
        return self.gateway.client()

    def sent(self, provider: str, marker: str) -> dict[str, Any]:
        """The last upstream request of ``provider`` whose body contains ``marker``."""
        requests: list[MockRequest] = self.mocks[provider].requests
        for req in reversed(requests):
            if marker.encode() in req.body:
                body: dict[str, Any] = req.json()
                return body
        raise AssertionError(f"{provider} received no request containing {marker!r}")


def config(ports: dict[str, int], db: str) -> str:
    return f"""
[store]
backend = "sqlite"
path = "{db}"

[providers.mock]
type = "chat"
base_url = "http://127.0.0.1:{ports['mock']}/v1"
api_key = "{KEY}"

[providers.claude]
type = "anthropic"
base_url = "http://127.0.0.1:{ports['claude']}"
api_key = "{KEY}"

[providers.gem]
type = "gemini"
base_url = "http://127.0.0.1:{ports['gem']}"
api_key = "{KEY}"

[providers.llama]
type = "ollama"
base_url = "http://127.0.0.1:{ports['llama']}"

[providers.oai]
type = "openai"
base_url = "http://127.0.0.1:{ports['oai']}/v1"
api_key = "{KEY}"

[providers.oai2]
type = "openai"
base_url = "http://127.0.0.1:{ports['oai']}/v1"
api_key = "{KEY}"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mocks: dict[str, Any] = {
        "mock": ChatCompletionsMock(api_key=KEY), "claude": AnthropicMock(api_key=KEY),
        "gem": GeminiMock(api_key=KEY), "llama": OllamaMock(), "oai": ResponsesMock(api_key=KEY),
    }
    tmp = tmp_path_factory.mktemp("store-dialects")
    with mocks["mock"].serving_in_thread() as p1, mocks["claude"].serving_in_thread() as p2, \
            mocks["gem"].serving_in_thread() as p3, mocks["llama"].serving_in_thread() as p4, \
            mocks["oai"].serving_in_thread() as p5:
        ports = {"mock": p1, "claude": p2, "gem": p3, "llama": p4, "oai": p5}
        gateway = start_store_gateway(config(ports, str(tmp / "store.db")), tmp)
        try:
            yield Stack(gateway, {**mocks, "oai2": mocks["oai"]})
        finally:
            gateway.close_clients()
            assert stop_process(gateway.process) == 0
    assert (tmp / "store.db").exists()


DIALECTS = ["mock", "claude", "gem", "llama", "oai"]


@pytest.mark.parametrize("provider", DIALECTS)
def test_create_get_chain_delete(stack: Stack, provider: str) -> None:
    client = stack.client()
    marker = f"{provider}-first-turn"
    first = client.responses.create(model=f"{provider}/text:tokens=2", input=marker, instructions="rules-one")
    fetched = client.responses.retrieve(first.id)
    assert fetched.id == first.id and fetched.status == "completed" and fetched.output_text == first.output_text
    [item] = client.responses.input_items.list(first.id).data
    assert item.type == "message" and item.id.startswith("msg_")
    assert item.content[0].text == marker  # type: ignore[union-attr]

    events = list(client.responses.create(model=f"{provider}/text:tokens=3", input=f"{provider}-second-turn",
                                          instructions="rules-two", previous_response_id=first.id, stream=True))
    final = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type == "response.completed" and final.previous_response_id == first.id
    stored = client.responses.retrieve(final.id)
    assert stored.status == "completed" and stored.output_text == final.output_text
    assert stored.instructions == "rules-two"
    items = list(client.responses.input_items.list(final.id, order="asc"))
    assert [i.type for i in items] == ["message"] * 3
    assert [getattr(i, "role", None) for i in items] == ["user", "assistant", "user"]

    sent = json.dumps(stack.sent(provider, f"{provider}-second-turn"))
    if provider == "oai":  # the upstream stored the first turn: it gets the id, not the history
        body = stack.sent(provider, f"{provider}-second-turn")
        assert body["previous_response_id"] == first.id and marker not in sent
    else:
        assert marker in sent and first.output_text in sent
    assert "rules-two" in sent and "rules-one" not in sent, "instructions are not inherited"

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as chained:
        client.responses.create(model=f"{provider}/text", input="again", previous_response_id=first.id)
    assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert client.responses.retrieve(final.id).output_text == final.output_text, "later turns stay"


def call_output(first: Any, marker: str) -> Any:
    call = next(item for item in first.output if item.type == "function_call")
    return call, [{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"m": marker})}]


def test_chat_tool_round_trip(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="mock/tool", input="chat-tool weather?", tools=[WEATHER_TOOL])
    call, output = call_output(first, "chat-tool-result")
    client.responses.create(model="mock/text:tokens=1", input=output, previous_response_id=first.id,
                            tools=[WEATHER_TOOL])
    messages = stack.sent("mock", "chat-tool-result")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.arguments}
    assert messages[2]["tool_call_id"] == call.call_id and "chat-tool-result" in messages[2]["content"]


def test_ollama_tool_round_trip(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="llama/tool", input="ollama-tool weather?", tools=[WEATHER_TOOL])
    call, output = call_output(first, "ollama-tool-result")
    client.responses.create(model="llama/text:tokens=1", input=output, previous_response_id=first.id,
                            tools=[WEATHER_TOOL])
    messages = stack.sent("llama", "ollama-tool-result")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2]["tool_call_id"] == call.call_id


def test_anthropic_thinking_and_tool_round_trip(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="claude/thinking-tool", input="claude-tool weather?",
                                    reasoning={"effort": "medium"}, tools=[WEATHER_TOOL])
    call, output = call_output(first, "claude-tool-result")
    second = client.responses.create(model="claude/text:tokens=1", input=output, previous_response_id=first.id,
                                     reasoning={"effort": "medium"}, tools=[WEATHER_TOOL])
    assert second.status == "completed"  # the mock refuses a thinking block without its signature
    messages = stack.sent("claude", "claude-tool-result")["messages"]
    assistant, results = messages[1], messages[2]
    assert [block["type"] for block in assistant["content"]] == ["thinking", "tool_use"]
    assert assistant["content"][0] == {"type": "thinking", "thinking": THOUGHT,
                                       "signature": anthropic_mock.signature_for(THOUGHT)}
    assert assistant["content"][1]["id"] == call.call_id
    assert results["content"][0]["tool_use_id"] == call.call_id


def test_gemini_signature_round_trip(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="gem/sig-required", input="gem-tool weather in Paris?",
                                    tools=[WEATHER_TOOL], reasoning={"effort": "low"})
    _, output = call_output(first, "gem-tool-result")
    second = client.responses.create(model="gem/sig-required", input=output, previous_response_id=first.id,
                                     tools=[WEATHER_TOOL])
    assert second.output_text == "The weather is fine."  # the mock refuses a call without its signature
    contents = stack.sent("gem", "gem-tool-result")["contents"]
    assert contents[1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                     "thoughtSignature": gemini_mock.signature_for("get_weather", {"city": "Paris"})}]
    assert contents[2]["parts"][0]["functionResponse"]["name"] == "get_weather"


def test_native_tool_round_trip_forwards_the_id(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="oai/tool", input="oai-tool weather?", tools=[WEATHER_TOOL])
    _, output = call_output(first, "oai-tool-result")
    second = client.responses.create(model="oai/text:tokens=1", input=output, previous_response_id=first.id,
                                     tools=[WEATHER_TOOL])
    body = stack.sent("oai", "oai-tool-result")
    assert body["previous_response_id"] == first.id and body["input"] == output
    assert client.responses.retrieve(second.id).previous_response_id == first.id


def test_native_rebuilds_a_chain_it_does_not_hold(stack: Stack) -> None:
    """Anthropic served the first turn: the native upstream gets the history, without Anthropic's blob."""
    client = stack.client()
    first = client.responses.create(model="claude/thinking:tokens=1", input="cross-native first",
                                    reasoning={"effort": "low"})
    client.responses.create(model="oai/text:tokens=1", input="cross-native second", previous_response_id=first.id)
    body = stack.sent("oai", "cross-native second")
    assert "previous_response_id" not in body
    assert [item.get("type") for item in body["input"]] == ["message", "message", "message"]
    assert all("id" not in item for item in body["input"]), "no id the upstream never minted"
    assert "gw1:" not in json.dumps(body) and anthropic_mock.signature_for(THOUGHT) not in json.dumps(body)


def test_another_native_upstream_gets_the_history_too(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="oai/text:tokens=1", input="native-swap first")
    client.responses.create(model="oai2/text:tokens=1", input="native-swap second", previous_response_id=first.id)
    body = stack.sent("oai2", "native-swap second")
    assert "previous_response_id" not in body
    assert body["input"][0]["content"][0]["text"] == "native-swap first"
    assert body["input"][1]["role"] == "assistant" and "id" not in body["input"][1]


def test_chaining_across_providers_drops_the_other_providers_blobs(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="claude/thinking:tokens=1", input="cross-gem first",
                                    reasoning={"effort": "low"})
    assert first.output[0].type == "reasoning"
    second = client.responses.create(model="gem/text:tokens=1", input="cross-gem second",
                                     previous_response_id=first.id)
    assert second.status == "completed"
    body = stack.sent("gem", "cross-gem second")
    assert anthropic_mock.signature_for(THOUGHT) not in json.dumps(body)
    texts = [part.get("text") for content in body["contents"] for part in content["parts"]]
    assert texts[0] == "cross-gem first" and texts[-1] == "cross-gem second"
    assert first.output_text in texts


def test_item_reference_resolves_from_the_store(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="mock/text:tokens=2", input="ref-source")
    message = first.output[0]
    follow_up: Any = [{"type": "item_reference", "id": message.id}, {"role": "user", "content": "ref-follow-up"}]
    client.responses.create(model="claude/text:tokens=1", input=follow_up)
    messages = stack.sent("claude", "ref-follow-up")["messages"]
    assert messages[0] == {"role": "assistant", "content": [{"type": "text", "text": first.output_text}]}
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="mock/text", input=[{"type": "item_reference", "id": "msg_nope"}])
    assert missing.value.body["param"] == "input[0].id"  # type: ignore[index]


def test_the_store_endpoints_need_the_gateway_key(stack: Stack) -> None:
    first = stack.client().responses.create(model="mock/text:tokens=1", input="auth-check")
    for method, path in (("GET", ""), ("GET", "/input_items"), ("DELETE", "")):
        answer = httpx.request(method, f"{stack.gateway.url}/v1/responses/{first.id}{path}", timeout=10)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
    assert stack.client().responses.retrieve(first.id).id == first.id
