"""Stored responses outlive the process (SQLite) and are shared by several gateways (Redis).

Each test starts its own gateway process(es) with its own ``[store]``; the Redis test starts
a real ``redis-server`` (Debian's, installed by ``.ci/run``) and two gateways that share it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseFunctionToolCall

from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.process import stop_process
from streamgw.testing.redis_server import require_redis, running_redis

from .conftest import Gateway
from .store_support import start_store_gateway

WEATHER_TOOL: FunctionToolParam = {"type": "function", "name": "get_weather", "parameters": None, "strict": None}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ChatCompletionsMock]:
    mock = ChatCompletionsMock()
    with mock.serving_in_thread() as port:
        mock.port = port  # type: ignore[attr-defined]
        yield mock


def providers(upstream: ChatCompletionsMock) -> str:
    return f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{upstream.port}/v1"\n'  # type: ignore[attr-defined]


def sent(upstream: ChatCompletionsMock, marker: str) -> str:
    return next(req.body.decode() for req in reversed(upstream.requests) if marker.encode() in req.body)


def stop(gateway: Gateway) -> None:
    gateway.close_clients()
    code = stop_process(gateway.process)
    assert code == 0, f"the gateway must exit cleanly on SIGTERM (got {code}):\n{gateway.log.read_text()}"


def test_sqlite_responses_survive_a_restart(upstream: ChatCompletionsMock, tmp_path: Path) -> None:
    db = tmp_path / "data" / "streamgw.db"
    db.parent.mkdir()
    store = f'[store]\nbackend = "sqlite"\npath = "{db}"\n\n'
    first = start_store_gateway(store + providers(upstream), tmp_path, "first")
    try:
        client = first.client()
        plain = client.responses.create(model="mock/text:tokens=2", input="restart-one")
        events = list(client.responses.create(model="mock/text:tokens=2", input="restart-streamed", stream=True))
        streamed = events[-1].response  # type: ignore[union-attr]
    finally:
        stop(first)
    assert db.exists(), "the file is created on first start"
    second = start_store_gateway(store + providers(upstream), tmp_path, "second")
    try:
        client = second.client()
        try:
            assert client.responses.retrieve(plain.id).output_text == plain.output_text
            assert client.responses.retrieve(streamed.id).status == "completed"
        except (AssertionError, openai.APIError) as failure:
            logs = "\n".join(g.log.read_text() for g in (first, second))
            raise AssertionError(f"{failure}\n{logs}") from failure
        follow = client.responses.create(model="mock/text:tokens=1", input="restart-two",
                                         previous_response_id=plain.id)
        assert follow.status == "completed"
        assert "restart-one" in sent(upstream, "restart-two")
    finally:
        stop(second)


def test_two_gateways_share_one_redis(upstream: ChatCompletionsMock, tmp_path: Path) -> None:
    require_redis()
    with running_redis() as url:
        store = f'[store]\nbackend = "redis"\nurl = "{url}"\n\n'
        one = start_store_gateway(store + providers(upstream), tmp_path, "one")
        two = start_store_gateway(store + providers(upstream), tmp_path, "two")
        try:
            a, b = one.client(), two.client()
            events = list(a.responses.create(model="mock/tool", input="redis-first weather?", stream=True,
                                              tools=[WEATHER_TOOL]))
            first = events[-1].response  # type: ignore[union-attr]
            call = first.output[0]
            assert isinstance(call, ResponseFunctionToolCall)
            again = b.responses.retrieve(first.id).output[0]
            assert isinstance(again, ResponseFunctionToolCall) and again.call_id == call.call_id
            second = b.responses.create(
                model="mock/text:tokens=1", previous_response_id=first.id,
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "redis-result"}],
            )
            messages = json.loads(sent(upstream, "redis-result"))["messages"]
            assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
            assert "redis-first" in json.dumps(messages[0])
            third = a.responses.create(model="mock/text:tokens=1", input="redis-third",
                                       previous_response_id=second.id)
            assert third.status == "completed" and "redis-result" in sent(upstream, "redis-third")
            assert [i.type for i in a.responses.input_items.list(third.id, order="asc")] == [
                "message", "function_call", "function_call_output", "message", "message"]
            b.responses.delete(first.id)
            with pytest.raises(openai.NotFoundError):
                a.responses.retrieve(first.id)
        finally:
            stop(one)
            stop(two)
