"""Client connections against a real ``streamgw serve`` process: descriptors, the connection cap,
``EMFILE``, request bodies (timeout, bytes in flight) and requests framed twice.

Loopback only.  Plain blocking sockets, so that each test says byte for byte what the client does.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest

from streamgw.testing.process import free_port, start_gateway, stop_process

from .drain_support import Served

KEY = "sk-gw-conns-test"
AUTH = f"Authorization: Bearer {KEY}\r\n"


class Gateway(Served):
    """A ``streamgw serve`` process, seen from its descriptors and raw sockets."""

    def fds(self) -> int:
        """Open file descriptors of the gateway process."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


Start = Callable[..., Gateway]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Start]:
    """Start ``streamgw serve`` with ``[server]`` settings (and optionally under ``prefix``); stopped after the test."""
    started: list[Gateway] = []

    def start(server: str = "", prefix: list[str] | None = None) -> Gateway:
        config = tmp_path / f"gw{len(started)}.toml"
        config.write_text(f"""
[server]
{server}
[auth]
keys = ["{KEY}"]
[store]
backend = "none"
[providers.demo]
type = "demo"
first_token_delay = 0
tokens_per_second = 100000
""")
        log = tmp_path / f"gw{len(started)}.log"
        port = free_port()
        proc, _ = start_gateway(config, log, port=port, prefix=prefix)
        gw = Gateway(proc, port, log)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        stop_process(gw.proc)


def answered(gw: Gateway, timeout: float = 2.0) -> float:
    """Seconds a fresh ``GET /healthz`` took to be answered 200 (fails after ``timeout``)."""
    started = time.monotonic()
    response = httpx.get(gw.url + "/healthz", timeout=timeout)
    assert response.status_code == 200
    return time.monotonic() - started


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length body: status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds (nothing more to read)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def post_head(length: int | None, path: str = "/v1/responses") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n{framing}\r\n").encode()


def json_body(size: int) -> bytes:
    """A valid request for the demo model, ``size`` bytes long."""
    start = b'{"model":"demo/demo","input":"'
    end = b'"}'
    return start + b"x" * (size - len(start) - len(end)) + end


# ---------------------------------------------------------------------------- descriptors and the cap


def test_connect_and_close_probes_leave_no_descriptors_behind(gateway: Start) -> None:
    gw = gateway()
    answered(gw)
    baseline = gw.fds()
    for _ in range(3000):
        socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
    assert answered(gw) < 2.0
    # Before the fix each probe held its socket in CLOSE-WAIT for the 75 s keep-alive timeout.
    assert wait_for(lambda: gw.fds() <= baseline + 5, 5), f"{gw.fds()} fds open, {baseline} before the probes"
    assert "Traceback" not in gw.log_text()


def test_a_client_that_half_closes_an_idle_connection_is_closed_at_once(gateway: Start) -> None:
    gw = gateway()
    with gw.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.shutdown(socket.SHUT_WR)  # idle between requests, and the client says it is done
        assert closed_by_server(sock, 2.0)


def test_at_max_connections_the_longest_idle_connections_are_closed(gateway: Start) -> None:
    gw = gateway("max_connections = 20")
    answered(gw)
    baseline = gw.fds()
    idle = [gw.connect() for _ in range(50)]  # connected, never a byte sent
    try:
        # The newest 20 stay; the 30 oldest are closed as newer ones are accepted.
        assert answered(gw, timeout=5) < 2.0
        assert wait_for(lambda: gw.fds() <= baseline + 21, 5), f"{gw.fds()} fds, baseline {baseline}"
        closed = [closed_by_server(sock, 0.2) for sock in idle]
        assert sum(closed) >= 30, f"{sum(closed)} of 50 idle connections closed"
        assert not any(closed[-15:]), "the newest connections should have been kept"
    finally:
        for sock in idle:
            sock.close()
    text = gw.log_text()
    assert "Traceback" not in text
    assert text.count("max_connections (20) reached") <= 2, text  # once per 10 s, not per connection


def test_the_connection_that_fills_the_last_slot_is_not_closed_before_it_speaks(gateway: Start) -> None:
    """At ``max_connections`` the longest-idle connection is closed for a connection that waits, not for one that
    may come: the newest connection, accepted into the last slot and silent for a moment (a client slow to send
    its request), was closed at once while no other client waited."""
    gw = gateway("max_connections = 3\nbody_timeout = 30")
    answered(gw)
    busy = []
    try:
        for _ in range(2):
            sock = gw.connect()
            sock.sendall(post_head(100)[:-2] + b"Expect: 100-continue\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 100 ")
            busy.append(sock)
        last = gw.connect()
        busy.append(last)
        time.sleep(0.5)  # accepted, then silent
        last.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(last)[0] == 200
        assert "closing the longest-idle connection" not in gw.log_text()
    finally:
        for sock in busy:
            sock.close()


def test_at_max_connections_with_every_connection_busy_new_ones_wait(gateway: Start) -> None:
    gw = gateway("max_connections = 3\nbody_timeout = 30")
    answered(gw)
    busy = []
    try:
        for _ in range(3):  # a request each, its body still to come: none of them may be closed
            sock = gw.connect()
            busy.append(sock)
            sock.sendall(post_head(100)[:-2] + b"Expect: 100-continue\r\n\r\n")
            # hypercorn answers 100 once it has the request (and so knows the connection is busy)
            assert sock.recv(1000).startswith(b"HTTP/1.1 100 ")
            sock.sendall(b'{"model":')
        with pytest.raises(httpx.TimeoutException):  # waits in the listen backlog
            httpx.get(gw.url + "/healthz", timeout=1.0)
        busy[0].close()  # a slot frees up
        assert answered(gw, timeout=3) < 3
        for sock in busy[1:]:
            sock.settimeout(0.1)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # still open, still waiting for its answer
    finally:
        for sock in busy:
            sock.close()  # also when an assertion failed: a socket left to the garbage collector fails a later test
    assert "Traceback" not in gw.log_text()


def _flood(gw: Gateway, count: int) -> list[socket.socket]:
    """``count`` connections held open, as fast as they are made (some may be refused or reset)."""
    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=2))
        except OSError:
            pass
    return held


def test_accept_failing_with_emfile_is_logged_once_per_interval_and_recovers(gateway: Start) -> None:
    # A cap above what 128 descriptors allow, so that accept() itself runs out.
    gw = gateway("max_connections = 1000", prefix=["prlimit", "--nofile=128:128"])
    answered(gw)
    held = _flood(gw, 300)
    try:
        time.sleep(2.0)  # the accept loop keeps hitting EMFILE for a while
        text = gw.log_text()
        assert "Too many open files" in text  # it did run out
    finally:
        for sock in held:
            sock.close()
    assert wait_for(lambda: _answers(gw), 5), gw.log_text()
    text = gw.log_text()
    assert text.count("accept() failed") <= 2, text
    assert "Traceback" not in text


def test_the_automatic_cap_keeps_accept_away_from_emfile(gateway: Start) -> None:
    gw = gateway(prefix=["prlimit", "--nofile=128:128"])  # max_connections = 0: derived from 128
    assert "accepting up to 48 client connections" in gw.log_text()
    held = _flood(gw, 300)
    try:
        assert answered(gw, timeout=5) < 2.0  # idle ones made room
    finally:
        for sock in held:
            sock.close()
    text = gw.log_text()
    assert "accept() failed" not in text and "Traceback" not in text


def _answers(gw: Gateway) -> bool:
    try:
        return httpx.get(gw.url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -------------------------------------------------------------------------------------- request bodies


def test_a_stalled_body_is_answered_408_and_the_connection_closed(gateway: Start) -> None:
    gw = gateway("body_timeout = 1")
    with gw.connect() as sock:
        sock.sendall(post_head(1000) + b'{"model": "demo/demo", "inp')
        started = time.monotonic()
        status, headers, body = read_response(sock)
        assert time.monotonic() - started < 3
        assert status == 408 and headers.get("connection") == "close"
        error = json.loads(body)["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
        assert closed_by_server(sock, 2)


def test_a_body_sent_in_time_is_served(gateway: Start) -> None:
    gw = gateway("body_timeout = 2")
    body = json_body(2000)
    with gw.connect() as sock:
        sock.sendall(post_head(len(body)) + body[:1000])
        time.sleep(0.5)
        sock.sendall(body[1000:])
        assert read_response(sock)[0] == 200


def test_bodies_beyond_the_bytes_in_flight_cap_get_503(gateway: Start) -> None:
    gw = gateway(f"max_body_bytes_in_flight = {1 << 20}")
    size = 600 * 1024
    body = json_body(size)
    first = gw.connect()
    try:
        first.sendall(post_head(size) + body[:1000])  # claims 600 KiB, body still coming
        time.sleep(0.2)
        for framing in (size, None):  # declared: refused up front; chunked: once past the cap
            with gw.connect() as second:
                if framing is None:
                    second.sendall(post_head(None) + b"%x\r\n" % len(body) + body)
                else:
                    second.sendall(post_head(size) + body[:1000])
                status, headers, raw = read_response(second)
                assert status == 503 and headers.get("retry-after") == "1", raw
                assert json.loads(raw)["error"]["code"] == "server_busy"
                assert closed_by_server(second, 2)
        first.sendall(body[1000:])
        assert read_response(first)[0] == 200  # its claim held, it is served
    finally:
        first.close()
    with gw.connect() as third:  # and the budget is free again
        third.sendall(post_head(size) + body)
        assert read_response(third)[0] == 200


# ---------------------------------------------------------------------------------------- framing


def test_content_length_with_transfer_encoding_is_refused_and_closed(gateway: Start) -> None:
    gw = gateway()
    body = json_body(200)
    with gw.connect() as sock:
        sock.sendall(post_head(len(body))[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        status, headers, raw = read_response(sock)
        assert status == 400 and headers.get("connection") == "close"
        error = json.loads(raw)["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "transfer-encoding")
        assert closed_by_server(sock, 2)


def test_http2_refuses_a_request_with_transfer_encoding(gateway: Start) -> None:
    """Not a fix of ours (h2 does it, RFC 9113 §8.2.2), kept so that an h2 upgrade cannot lose it."""
    gw = gateway()
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    client.initiate_connection()
    body = json_body(200)
    client.send_headers(1, [(":method", "POST"), (":path", "/v1/responses"), (":scheme", "http"),
                            (":authority", "x"), ("authorization", f"Bearer {KEY}"),
                            ("content-length", str(len(body))), ("transfer-encoding", "chunked")])
    client.send_data(1, body, end_stream=True)
    events: list[h2.events.Event] = []
    with gw.connect() as sock:
        sock.sendall(client.data_to_send())
        while data := sock.recv(65536):
            events += client.receive_data(data)
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events), events
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
