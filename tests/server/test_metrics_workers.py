"""Metrics that add up: with ``--workers 2`` every scrape of ``/metrics`` counts every worker's requests.

A real ``streamgw serve --workers 2`` process with a JSON request log in a file: N requests on
fresh connections spread over both workers (the log's ``worker`` field says which), then every
scrape, whichever worker answers it, shows exactly N; every log line is whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h11
import httpx
import trio

from streamgw.testing.harness import RawClient
from streamgw.testing.process import stop_process

from .drain_support import config_text, get, start_serve, upstream_port

__all__ = ["upstream_port"]  # the fixture, used by name

N = 40


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    found = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
            found += float(match[2])
    return found


async def post_streams(client: RawClient, count: int) -> None:
    """``count`` streamed requests one after the other on ``client``'s keep-alive connection."""
    body = {"model": "mock/text:tokens=3", "input": "hi", "stream": True}
    for _ in range(count):
        await client.send_json("/v1/responses", body)
        assert (await client.response_head()).status_code == 200
        data = b""
        while not isinstance(event := await client.next_event(), h11.EndOfMessage):
            data += event.data if isinstance(event, h11.Data) else b""
        assert b"response.completed" in data
        client.conn.start_next_cycle()


async def scrape(client: RawClient) -> str:
    """``GET /metrics`` on ``client``'s connection (its worker)."""
    request = h11.Request(method="GET", target="/metrics", headers=[("host", "gateway")])
    await client.stream.send_all(client.conn.send(request) + client.conn.send(h11.EndOfMessage()))
    await client.response_head()
    body = b""
    while not isinstance(event := await client.next_event(), h11.EndOfMessage):
        body += event.data if isinstance(event, h11.Data) else b""
    client.conn.start_next_cycle()
    return body.decode()


async def test_every_scrape_counts_every_workers_requests(tmp_path: Path, upstream_port: int) -> None:
    log = tmp_path / "requests.log"
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, config_text(upstream_port, drain_timeout=2),
                                       "--workers", "2", "--log-format", "json", "--log-file", str(log))
    try:
        found: dict[int, RawClient] = {}  # one keep-alive connection to each worker, by pid
        with trio.fail_after(15):
            while len(found) < 2:
                client = await RawClient.connect(gw.port)
                pid = (await get(client, "/readyz"))[1]["pid"]
                if pid in found:
                    await client.aclose()
                else:
                    found[pid] = client
        async with trio.open_nursery() as nursery:
            for client in found.values():
                nursery.start_soon(post_streams, client, N // 2)
        with trio.fail_after(10):  # the last lines follow the clients' last bytes
            while True:
                if len(log.read_text().splitlines()) >= N:
                    break
                await trio.sleep(0.02)
        scrapes: list[tuple[int, str]] = []
        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=30) as http:
            for pid, client in found.items():
                for _ in range(5):
                    scrapes.append((pid, await scrape(client)))
            for _ in range(10):
                scrapes.append((0, (await http.get(gw.url + "/metrics")).text))
        lines = [json.loads(line) for line in log.read_text().splitlines()]  # whole lines only
        responses = [line for line in lines if line["kind"] == "response"]
        assert len(responses) == N and all(line["terminal"] == "completed" for line in responses)
        assert {line["worker"] for line in responses} == set(found), "both workers served requests"
        for _, text in scrapes:
            assert total(text, "streamgw_requests_total", provider="mock", status="200") == N
            assert total(text, "streamgw_responses_total", terminal="completed") == N
            assert total(text, "streamgw_attempts_total", outcome="served") == N
            assert total(text, "streamgw_tokens_total", type="output") == 3 * N
            assert total(text, "streamgw_added_time_to_first_event_seconds_count") == N
            assert total(text, "streamgw_streams_in_flight") == 0
        for client in found.values():
            await client.aclose()
    finally:
        await trio.to_thread.run_sync(stop_process, gw.proc)
