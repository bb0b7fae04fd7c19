"""The load generator against the real gateway process, over HTTP/1.1 and HTTP/2 (h2c prior knowledge)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bench.loadgen import PhaseSpec, TargetSpec, run_phases
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.process import start_gateway, stop_process
from streamgw.testing.server import serving_in_thread


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mock = ChatCompletionsMock()
    tmp = tmp_path_factory.mktemp("bench-gw")
    with serving_in_thread(lambda: mock.handle, stats=mock.stats) as port:
        config = Path(tmp / "gw.toml")
        config.write_text(f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{port}/v1"\n')
        proc, url = start_gateway(config, tmp / "gw.log")
        try:
            yield url
        finally:
            stop_process(proc)


@pytest.mark.parametrize("http2", [False, True])
def test_streams_through_the_gateway(gateway_url: str, http2: bool) -> None:
    body = json.dumps({"model": "mock/text:tokens=5", "input": "hi", "stream": True})
    target = TargetSpec("gateway", gateway_url + "/v1/responses", body, http2=http2)
    plain = json.dumps({"model": "mock/text:tokens=5", "input": "hi"})
    non_streamed = TargetSpec("json", gateway_url + "/v1/responses", plain, stream=False, http2=http2)
    phases = [PhaseSpec("streams", (target,), 4, requests=3, sample_streams=4),
              PhaseSpec("json", (non_streamed,), 2, requests=2, sample_streams=2)]
    streams, bodies = trio.run(run_phases, phases)
    tally = streams["targets"][0]
    assert tally["errors"] == {}
    assert len(tally["records"]["start"]) == 12
    assert min(tally["records"]["events"]) >= 10  # lifecycle events plus five deltas
    assert tally["invariants"] == {"checked": 4, "failures": []}
    assert bodies["targets"][0]["errors"] == {}
    assert bodies["targets"][0]["invariants"] == {"checked": 2, "failures": []}


def test_workers_alternate_between_http1_and_http2_targets(gateway_url: str) -> None:
    body = json.dumps({"model": "mock/text:tokens=3", "input": "hi", "stream": True})
    h2 = TargetSpec("h2", gateway_url + "/v1/responses", body, http2=True)
    h1 = TargetSpec("h1", gateway_url + "/v1/responses", body)
    (phase,) = trio.run(run_phases, [PhaseSpec("mixed", (h2, h1), 3, requests=4)])
    for tally in phase["targets"]:
        assert tally["errors"] == {} and len(tally["records"]["start"]) == 6
