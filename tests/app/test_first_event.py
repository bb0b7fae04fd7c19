"""The way to the first event: no wait and no trip through the scheduler that the request does not need.

The ASGI side of these tests is a trio memory channel, as hypercorn's trio worker hands the application
its ``receive``; the messages are the ones hypercorn puts there (the body, then an empty closing one).
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from streamgw.app.routes import create_app
from streamgw.app.streaming import BodyBudget, _Claim, _read_body
from streamgw.config import Config, ProviderConfig, Secret, StoreConfig
from streamgw.core.request import parse_request
from streamgw.engine.lifecycle import ANONYMOUS, LiveResponse, RequestEntry, open_response
from streamgw.errors import InvalidRequest
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import post_sse, running_gateway

BODY = b'{"model":"m","input":"hi","stream":true}'


def _scope(length: int | None) -> dict[str, object]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "http_version": "1.1", "headers": headers}


async def test_a_body_already_queued_is_read_without_a_checkpoint_or_the_closing_message() -> None:
    """hypercorn queues ``more_body: True`` with the bytes, then an empty closing message: with a
    Content-Length the body is whole at its last byte, and what is queued is taken at once."""
    send, receive = trio.open_memory_channel[dict[str, object]](math.inf)
    send.send_nowait({"type": "http.request", "body": BODY, "more_body": True})  # the closing one is not here yet
    claim = _Claim(BodyBudget(0), {})
    with trio.fail_after(5), trio.testing.assert_no_checkpoints():
        body = await _read_body(_scope(len(BODY)), receive.receive, 1 << 20, 10.0, claim)
    assert body == BODY
    assert claim.held == len(BODY)


async def test_a_body_in_parts_and_a_chunked_one_still_wait_for_the_rest() -> None:
    for length in (len(BODY), None):  # Content-Length, and chunked (the end is the closing message)
        send, receive = trio.open_memory_channel[dict[str, object]](math.inf)
        send.send_nowait({"type": "http.request", "body": BODY[:10], "more_body": True})

        async def rest(send: trio.MemorySendChannel[dict[str, object]] = send) -> None:
            await trio.sleep(0.01)
            await send.send({"type": "http.request", "body": BODY[10:], "more_body": True})
            await send.send({"type": "http.request", "body": b"", "more_body": False})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rest)
            with trio.fail_after(5):
                body = await _read_body(_scope(length), receive.receive, 1 << 20, 10.0, _Claim(BodyBudget(0), {}))
        assert body == BODY


async def test_a_client_gone_while_its_body_was_queued_is_still_seen() -> None:
    from streamgw.app.streaming import _ClientGone

    send, receive = trio.open_memory_channel[dict[str, object]](math.inf)
    send.send_nowait({"type": "http.request", "body": BODY[:5], "more_body": True})
    send.send_nowait({"type": "http.disconnect"})
    with pytest.raises(_ClientGone):
        await _read_body(_scope(len(BODY)), receive.receive, 1 << 20, 10.0, _Claim(BodyBudget(0), {}))


class _Timeline:
    """A request observer that notes, when it hears of an opened response, whether its first events were out."""

    def __init__(self) -> None:
        self.opened: list[bool] = []
        self.ended: list[str] = []

    def opened_(self, entry: RequestEntry) -> None:
        self.opened.append(entry.first_write_at is not None)

    def ended_(self, entry: RequestEntry) -> None:
        self.ended.append(entry.terminal)


class _Observer:
    def __init__(self, timeline: _Timeline) -> None:
        self.opened = timeline.opened_
        self.ended = timeline.ended_


async def _gateway_on_a_mock(nursery: trio.Nursery, store: str) -> tuple[Config, QuartTrio]:
    """A Chat Completions mock served in ``nursery``, and an app (with ``store``) in front of it as provider ``up``."""
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    config = Config(providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                                    api_key=Secret("sk-upstream-test-key"))},
                    store=StoreConfig(backend=store))
    return config, create_app(config)


async def test_observers_hear_of_an_opened_response_after_its_first_events_went_out(nursery: trio.Nursery) -> None:
    config, app = await _gateway_on_a_mock(nursery, "none")
    timeline = _Timeline()
    app.extensions["streamgw"].observers.add(_Observer(timeline))
    async with running_gateway(config, app) as gw_port:
        for stream in (True, False):
            result = await post_sse(gw_port, {"model": "up/text:tokens=3", "input": "hi", "stream": stream})
            assert result.status == 200
    # streamed: after the first write; not streamed: nothing was written before the whole answer
    assert timeline.opened == [True, False]
    assert timeline.ended == ["completed", "completed"]


def test_parse_request_shares_no_mutable_default_and_names_a_bom() -> None:
    """``parse_request`` reuses its immutable defaults and one JSON decoder: each request still owns its
    ``metadata``, and a body with a byte-order mark gets what ``json.loads`` says of it."""
    first, second = parse_request(BODY), parse_request(BODY)
    first.metadata["k"] = "v"
    assert second.metadata == {} and parse_request(BODY).metadata == {}
    with pytest.raises(InvalidRequest, match="Unexpected UTF-8 BOM"):
        parse_request(b"\xef\xbb\xbf" + BODY)


async def test_the_store_bookkeeping_of_a_request_naming_nothing_stored_waits_for_its_first_events(
        nursery: trio.Nursery) -> None:
    """Its input items get their ids (and the recorder its expansion) after the first delivery; what is stored,
    and a request that continues it, are as before."""
    config, app = await _gateway_on_a_mock(nursery, "memory")
    gw = app.extensions["streamgw"]
    async with running_gateway(config, app) as gw_port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}") as client:
        ids: list[str] = []
        for previous in (None, "first"):
            body: dict[str, object] = {"model": "up/text:tokens=3", "input": "hi", "stream": True}
            if previous is not None:
                body["previous_response_id"] = ids[0]
            live = open_response(gw.responses, ANONYMOUS, parse_request(json.dumps(body).encode()), door="sse",
                                 request_id=f"req-{len(ids)}")
            expanded_at_first_delivery: list[bool] = []

            async def deliver(events: list[object], seen: list[bool] = expanded_at_first_delivery,
                              live: LiveResponse = live) -> None:
                if not seen:
                    seen.append(live.expansion is not None)

            async with live:
                await live.stream(deliver)
            ids.append(str(live.run.emitter.response["id"]) if live.run else "")
            # made before the run only when there was something to look up
            assert expanded_at_first_delivery == [previous is not None]
        items = (await client.get(f"/v1/responses/{ids[1]}/input_items", params={"order": "asc"})).json()["data"]
    assert [item["type"] for item in items] == ["message", "message", "message"]  # hi, the answer, hi
    assert all(isinstance(item["id"], str) and item["id"] for item in items)
