"""Transport failures end to end: each way an upstream connection can fail reaches the client as one envelope.

The gateway runs as a real process; every provider points at a loopback port that fails in
one way (``streamgw.testing.faults``).  Before the first byte a failure is an HTTP error
envelope (502, or 504 for a timeout) with a stable ``code`` and a message that says what
went wrong, for the JSON and the SSE form alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from streamgw.testing.faults import Fault, FaultServer, unresponsive_port
from streamgw.testing.process import free_port, start_gateway, stop_process

from .conftest import GATEWAY_KEY, UPSTREAM_KEY

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}


@dataclass
class Case:
    """A provider that fails one way, and what the client must see."""

    provider: str
    scheme: str
    status: int
    code: str
    #: text the message must contain: the cause, in words an operator can act on
    says: str


CASES = [
    Case("refused", "http", 502, "upstream_unreachable", "ConnectError"),
    Case("hangs", "http", 504, "upstream_timeout", "ConnectTimeout"),
    Case("nottls", "https", 502, "upstream_unreachable", "SSL"),
    Case("eof", "http", 502, "upstream_connection_error", "without sending a response"),
    Case("malformed", "http", 502, "upstream_connection_error", "RemoteProtocolError"),
    Case("reset", "http", 502, "server_error", "ReadError"),
]


def _config(ports: dict[str, int]) -> str:
    providers = "".join(
        f"""
[providers.{case.provider}]
type = "chat"
base_url = "{case.scheme}://127.0.0.1:{ports[case.provider]}/v1"
api_key = "{UPSTREAM_KEY}"
[providers.{case.provider}.timeouts]
connect = 0.5
"""
        for case in CASES
    )
    return f'[auth]\nkeys = ["{GATEWAY_KEY}"]\n{providers}'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("transport-failures")
    with ExitStack() as stack:
        ports = {
            "refused": free_port(),
            "hangs": stack.enter_context(unresponsive_port()),
            "nottls": stack.enter_context(FaultServer(Fault.NOT_TLS)).port,
            "eof": stack.enter_context(FaultServer(Fault.EOF_BEFORE_HEAD)).port,
            "malformed": stack.enter_context(FaultServer(Fault.MALFORMED_HEAD)).port,
            "reset": stack.enter_context(FaultServer(Fault.RESET_MID_BODY)).port,
        }
        config = tmp / "streamgw.toml"
        config.write_text(_config(ports))
        proc, url = start_gateway(config, tmp / "gateway.log")
        try:
            yield url
        finally:
            assert stop_process(proc) == 0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.provider)
@pytest.mark.parametrize("stream", [False, True])
def test_transport_failure_before_the_first_byte_is_one_envelope(gateway: str, case: Case, stream: bool) -> None:
    response = httpx.post(gateway + "/v1/responses", headers=AUTH, timeout=20,
                          json={"model": f"{case.provider}/m", "input": "x", "stream": stream})
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "provider_error"
    assert error["code"] == case.code
    assert case.says in error["message"]
    assert f"upstream {case.provider!r}" in error["message"] or case.code == "server_error"
    assert UPSTREAM_KEY not in response.text
