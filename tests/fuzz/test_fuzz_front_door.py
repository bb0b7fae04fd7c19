"""Fuzz the HTTP front door of a real gateway process with junk, over raw sockets and via httpx.

Properties, for every generated request: the gateway never answers 5xx, never hangs (an
answer, or the connection closed, within ``ANSWER_WITHIN`` seconds of the client finishing
its side), and a normal request still works afterwards.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from streamgw.testing.process import start_gateway, stop_process

from .strategies import budget, json_trees, to_json
from .test_fuzz_request import request_bodies

GATEWAY_KEY = "sk-gw-fuzz-key-0123456789"
ANSWER_WITHIN = 5.0
CONFIG = f"""
[server]
max_body_bytes = 65536

[auth]
keys = ["{GATEWAY_KEY}"]

[providers.demo]
type = "demo"
first_token_delay = 0.0
tokens_per_second = 100000
"""


@dataclass
class Gateway:
    url: str
    host: str
    port: int
    log: Path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("fuzz-gateway")
    (tmp / "streamgw.toml").write_text(CONFIG)
    proc, url = start_gateway(tmp / "streamgw.toml", tmp / "gateway.log")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        yield Gateway(url, host, int(port), tmp / "gateway.log")
    finally:
        assert stop_process(proc) == 0, "the gateway must exit cleanly after the fuzz"


# --- what a client may send ----------------------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PRI", "post", "G\x00T"]
PATHS = ["/v1/responses", "/v1/responses/resp_x", "/v1/responses/resp_x/input_items", "/v1/models", "/healthz",
         "/readyz", "/metrics", "/", "*", "/v1/responses?stream=true", "/v1/responses/%00", "/v1//responses",
         "/v1/responses/" + "a" * 5000, "/../../etc/passwd", "http://evil.test/v1/responses", "/v1/responses/\xff"]
token = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"), min_size=1,
                max_size=20)
header_value = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=60)
AUTH = f"Bearer {GATEWAY_KEY}"
COMMON_HEADERS = st.sampled_from([
    ("authorization", AUTH), ("authorization", "Bearer wrong"), ("authorization", "Basic x"),
    ("content-type", "application/json"), ("content-type", "text/plain"), ("content-type", "application/json; a"),
    ("accept", "text/event-stream"), ("transfer-encoding", "chunked"), ("transfer-encoding", "gzip, chunked"),
    ("content-length", "-1"), ("content-length", "99999999999999999999"), ("content-length", "1, 2"),
    ("content-length", "0"), ("expect", "100-continue"), ("connection", "close"), ("connection", "upgrade"),
    ("upgrade", "websocket"), ("upgrade", "h2c"), ("content-encoding", "gzip"), ("host", ""),
])  # fmt: skip

class Blob(bytes):
    """A big body with a short repr (hypothesis prints every failing example)."""

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes: {bytes(self[:40])!r}...)"


BIG = [Blob(b"[" * 50_000), Blob(b'{"model":"demo/d","input":"' + b"x" * 70_000 + b'"}'), Blob(b"{" * 100_000)]
bodies = st.one_of(request_bodies(), json_trees().map(to_json), st.binary(max_size=300),
                   st.sampled_from([b"", b"{}", *BIG]))


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Bytes of one HTTP/1.1 request, valid-shaped or not; and whether it is a HEAD."""
    method = draw(st.sampled_from(METHODS) | token)
    path = draw(st.sampled_from(PATHS) | token.map(lambda t: "/" + t))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", ""]))
    headers = [("host", "gw"), ("authorization", AUTH)] if draw(st.booleans()) else []
    headers += draw(st.lists(COMMON_HEADERS | st.tuples(token, header_value), max_size=6))
    body = draw(bodies)
    if draw(st.booleans()):
        headers.append(("content-length", str(len(body) + draw(st.sampled_from([0, 0, -1, 1, 100])))))
    line_end = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    head = f"{method} {path} {version}".rstrip() + line_end
    head += "".join(f"{name}: {value}{line_end}" for name, value in headers) + line_end
    return Blob(head.encode("latin-1") + body), method.upper() == "HEAD"


# --- the client side -----------------------------------------------------------------------------

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def _answered(received: bytes, head_request: bool) -> bool:
    """True once ``received`` holds one whole HTTP/1.1 response (head and its full body)."""
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    status = _STATUS.match(head)
    lowered = head.lower()
    if head_request or status is None or status.group(1) in (b"101", b"204", b"304"):
        return True
    length = re.search(rb"\r\ncontent-length: *(\d+)", lowered)
    if length is not None:
        return len(body) >= int(length.group(1))
    if b"\r\ntransfer-encoding: chunked" in lowered:
        return body.endswith(b"0\r\n\r\n")
    return False  # delimited by the close


def raw_exchange(gw: Gateway, data: bytes, head_request: bool = False) -> tuple[int | None, bytes]:
    """Send ``data``, half-close, read one whole response or up to the close: (status or None, bytes).

    The half-close tells the server no more bytes come, so a request promising more is over.
    Raises ``TimeoutError`` if the server neither answers nor closes in time (a hang).  (After an
    answer the connection may idle until the keep-alive timeout, e.g. after a refused ``Upgrade``.)
    """
    with socket.create_connection((gw.host, gw.port), timeout=ANSWER_WITHIN) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already refused and closed (EPIPE, ECONNRESET, ENOTCONN): read what it said
        received = bytearray()
        while not _answered(received, head_request):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # closed after the answer while our unread request bytes were still queued
            except TimeoutError as hang:
                raise TimeoutError(f"no answer, no close in {ANSWER_WITHIN} s; got {bytes(received[:300])!r}") from hang
            if not chunk:
                break
            received += chunk
    match = _STATUS.match(received)
    return (int(match.group(1)) if match else None), bytes(received)


def check_still_serving(gw: Gateway) -> None:
    """A normal request after the junk: the gateway is alive and answers it properly."""
    answer = httpx.post(gw.url + "/v1/responses", json={"model": "demo/demo", "input": "ping"},
                        headers={"authorization": AUTH}, timeout=ANSWER_WITHIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"


_TRANSFER_CODING = re.compile(rb"(?im)^transfer-encoding:")


def check_status(status: int | None, request: bytes, answer: bytes) -> None:
    note(f"answer: {answer[:600]!r}")
    if status == 501 and _TRANSFER_CODING.search(request):
        return  # h11's answer to a transfer coding it does not implement (RFC 9112 §6.1): correct
    assert status is None or status < 500, f"HTTP {status}"


@budget(80)
@given(raw_requests())
def test_raw_socket_junk(gateway: Gateway, request: tuple[bytes, bool]) -> None:
    data, head_request = request
    note(f"request: {data[:600]!r}")
    started = time.monotonic()
    try:
        status, answer = raw_exchange(gateway, data, head_request)
    except TimeoutError:
        note(f"gateway log tail: {gateway.log.read_text(errors='replace')[-2000:]}")
        raise
    note(f"answered in {time.monotonic() - started:.2f} s")
    check_status(status, data, answer)
    check_still_serving(gateway)


@budget(60)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.sampled_from([p for p in PATHS if p.isascii() and p.startswith("/v1")]),
       body=bodies, stream=st.booleans(), auth=st.booleans())
def test_httpx_junk(gateway: Gateway, method: str, path: str, body: bytes, stream: bool, auth: bool) -> None:
    headers = {"content-type": "application/json"}
    if auth:
        headers["authorization"] = AUTH
    if stream:
        headers["accept"] = "text/event-stream"
    note(f"{method} {path} {body[:600]!r}")
    with httpx.Client(timeout=ANSWER_WITHIN) as client:
        answer = client.request(method, gateway.url + path, content=body, headers=headers)
    check_status(answer.status_code, body, answer.content)
    if answer.status_code >= 400:
        error = answer.json()["error"]  # every error is the OpenAI envelope
        assert set(error) >= {"message", "type", "param", "code"}, error
    check_still_serving(gateway)


@budget(40)
@given(body=request_bodies())
def test_generated_requests_stream_properly(gateway: Gateway, body: bytes) -> None:
    """A request the parser accepts and routes to the demo gets a whole stream, or a clean 4xx."""
    with httpx.Client(timeout=ANSWER_WITHIN) as client:
        answer = client.post(gateway.url + "/v1/responses", content=body,
                             headers={"authorization": AUTH, "content-type": "application/json"})
    check_status(answer.status_code, body, answer.content)
    check_still_serving(gateway)
