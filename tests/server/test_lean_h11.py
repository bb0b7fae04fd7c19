"""``LeanServerConnection``: the response heads h11 writes, byte for byte, with the headers validated once."""

from __future__ import annotations

import h11
import h11._headers
import pytest

from streamgw.serving.hypercorn_trio import LeanServerConnection

_CASES = [  # (request, response headers, status)
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [("content-type", "text/event-stream"), ("x-request-id", "r1")], 200),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [("content-type", "application/json"), ("content-length", "12")], 200),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [("content-length", "3"), ("Transfer-Encoding", "chunked")], 200),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", [("content-type", "text/plain")], 200),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [("Connection", "keep-alive, Upgrade"), ("x", "y")], 200),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [("connection", "close"), ("content-length", "0")], 503),
    (b"GET / HTTP/1.0\r\n\r\n", [("content-type", "text/event-stream"), ("content-length", "9")], 200),
    (b"GET / HTTP/1.0\r\n\r\n", [("content-length", "2")], 200),
    (b"HEAD / HTTP/1.0\r\n\r\n", [("content-type", "text/plain")], 200),
    (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", [("content-type", "text/event-stream")], 200),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", [("x-a", "1"), ("x-b", "2")], 204),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [], 304),
]


def _written(connection: h11.Connection, request: bytes, headers: list[tuple[str, str]], status: int) -> list[bytes]:
    connection.receive_data(request)
    while type(connection.next_event()) is not h11.EndOfMessage:
        pass
    out = [connection.send(h11.Response(status_code=status, headers=headers)) or b""]
    if connection.our_state is h11.SEND_BODY:
        body = b"x" * getattr(connection._writer, "_length", 2)  # what the framing h11 chose takes
        if body:
            out.append(connection.send(h11.Data(data=body)) or b"")
        out.append(connection.send(h11.EndOfMessage()) or b"")
    out.append(f"{connection.our_state}/{connection.their_state}".encode())
    return out


@pytest.mark.parametrize(("request_bytes", "headers", "status"), _CASES)
def test_same_bytes_and_states_as_h11(request_bytes: bytes, headers: list[tuple[str, str]], status: int) -> None:
    expected = _written(h11.Connection(h11.SERVER), request_bytes, headers, status)
    assert _written(LeanServerConnection(h11.SERVER), request_bytes, headers, status) == expected


def test_a_streamed_head_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    original = h11._headers.validate

    def counting(regex: object, data: bytes, *args: object) -> object:
        calls.append(data)
        return original(regex, data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(h11._headers, "validate", counting)
    headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-request-id", "r1")]
    connection = LeanServerConnection(h11.SERVER)
    connection.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    while type(connection.next_event()) is not h11.EndOfMessage:
        pass
    calls.clear()
    head = connection.send(h11.Response(status_code=200, headers=headers))
    assert head is not None and b"Transfer-Encoding: chunked\r\n" in head
    assert len(calls) == 2 * len(headers)  # each name and value once (h11 alone: four times)


def test_a_header_with_a_line_break_is_still_refused() -> None:
    connection = LeanServerConnection(h11.SERVER)
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    while type(connection.next_event()) is not h11.EndOfMessage:
        pass
    with pytest.raises(h11.LocalProtocolError):
        connection.send(h11.Response(status_code=200, headers=[("x-evil", "a\r\nset-cookie: b")]))
