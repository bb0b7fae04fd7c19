"""The per-phase timer of the first event: ``[logging] phases`` (``STREAMGW_LOG_PHASES``) adds ``phases_ms`` to
the request log; ``bench/ttfe.py --phases`` takes the median of each step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.ttfe import mock_model, phase_medians
from streamgw.app.requestlog import PHASES
from streamgw.config import ConfigError
from streamgw.config_loader import load_config
from streamgw.testing.chat_mock import ChatCompletionsMock, parse_model
from streamgw.testing.process import start_gateway, stop_process
from streamgw.testing.server import serving_in_thread

Json = dict[str, object]


def test_off_by_default_on_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[logging]\nphases = true\n")
    assert load_config(None, env={}).logging.phases is False
    assert load_config(path, env={}).logging.phases is True
    assert load_config(path, env={"STREAMGW_LOG_PHASES": "off"}).logging.phases is False
    assert load_config(None, env={"STREAMGW_LOG_PHASES": "1"}).logging.phases is True
    path.write_text('[logging]\nphases = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"STREAMGW_LOG_PHASES": "maybe"})
    text = str(info.value)
    assert "[logging] phases" in text and "STREAMGW_LOG_PHASES: must be 1 or 0" in text


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str, Path]]:
    """Two gateways on one mock: one timing the phases, one not; their URLs and JSON request logs."""
    mock = ChatCompletionsMock()
    tmp = tmp_path_factory.mktemp("phases")
    with serving_in_thread(lambda: mock.handle, stats=mock.stats) as port:
        procs, found = [], []
        try:
            for name, phases in (("on", "true"), ("off", "false")):
                log = tmp / f"{name}.jsonl"
                config = tmp / f"{name}.toml"
                config.write_text(f'[logging]\nformat = "json"\nfile = "{log}"\nphases = {phases}\n\n'
                                  f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{port}/v1"\n')
                proc, url = start_gateway(config, tmp / f"{name}.log")
                procs.append(proc)
                found += [url, log]
            yield found[0], found[1], found[2], found[3]
        finally:
            for proc in procs:
                stop_process(proc)


def _lines(log: Path, prefix: str, count: int = 0) -> list[Json]:
    """The log's records whose request id starts with ``prefix``; waits (a little) for ``count`` of them: a line
    is written once the last byte went out, which may be just after the client read it."""
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        found = [r for r in records if str(r["request_id"]).startswith(prefix)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_streamed_requests_log_every_phase_in_order_adding_up_to_the_first_write(
        logged: tuple[str, Path, str, Path]) -> None:
    url, log, off_url, off_log = logged
    body = {"model": "mock/text:tokens=5", "input": "hi", "stream": True}
    with httpx.Client(timeout=30) as client:
        for i in range(5):
            for base in (url, off_url):
                answer = client.post(base + "/v1/responses", json=body, headers={"x-request-id": f"ttfe-{i}"})
                assert answer.status_code == 200 and "response.completed" in answer.text
        answer = client.post(url + "/v1/responses", json={**body, "stream": False}, headers={"x-request-id": "json-0"})
        assert answer.status_code == 200
    records = _lines(log, "ttfe-", 5)
    assert len(records) == 5
    for record in records:
        phases = record["phases_ms"]
        assert isinstance(phases, dict) and list(phases) == list(PHASES)  # every step, in order
        assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
        assert phases["intake"] > 0  # hypercorn's share: from the read that completed the head to the application
        ttfe = record["ttfe_ms"]
        assert isinstance(ttfe, float) and ttfe > 0
        assert sum(phases.values()) == pytest.approx(ttfe, abs=0.06 + 0.001 * len(phases))  # ttfe_ms has 0.1 ms
    (json_record,) = _lines(log, "json-", 1)
    json_phases = json_record["phases_ms"]
    assert isinstance(json_phases, dict)
    assert json_phases["write"] is None and json_phases["upstream"] is not None  # nothing streamed: no first write
    assert all("phases_ms" not in r for r in _lines(off_log, "", 5))  # off: no field (and no timestamps taken)
    medians = phase_medians(log.read_text().splitlines())
    assert set(medians) == {*PHASES, "ttfe_ms", "sum"}
    assert medians["sum"] == pytest.approx(sum(medians[p] or 0 for p in PHASES))
    assert all((medians[p] or 0) >= 0 for p in PHASES) and medians["ttfe_ms"] is not None


def test_phase_medians_on_synthetic_lines() -> None:
    lines = [json.dumps({"request_id": f"ttfe-{i}", "ttfe_ms": 1.0 + i,
                         "phases_ms": {"parse": 0.1 * (i + 1), "upstream": 0.5, "write": None}}) for i in range(3)]
    lines += ["not json", json.dumps({"request_id": "warm-1", "ttfe_ms": 99.0, "phases_ms": {"parse": 50.0}})]
    found = phase_medians(lines)
    assert found["parse"] == 0.2 and found["upstream"] == 0.5 and found["write"] is None
    assert found["ttfe_ms"] == 2.0 and found["sum"] == 0.7


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs two CPUs")
def test_ttfe_pin_puts_the_servers_and_the_client_on_different_cpus(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "bench" / "ttfe.py"
    done = subprocess.run([sys.executable, str(script), "--requests", "3", "--tokens", "2", "--store", "none", "--pin"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert report["pinned"] is True
    assert report["cpus"] == {"client": [second], "mock": [second], "gateway": [first], "bare": [first]}
    assert report["gateway_ms"]["p50"] > 0 and report["bare_ms"]["p50"] > 0


def test_ttfe_s_mock_model_paces_the_tokens_when_asked() -> None:
    assert mock_model(20) == "text:tokens=20"
    assert mock_model(20, 0.001) == "text:tokens=20,token_delay=0.001"
    assert parse_model(mock_model(5, 0.25)) == ("text", {"tokens": 5, "token_delay": 0.25})  # as the mock reads it
