"""The transport's one exception boundary: every way a connection fails leaves it as one httpx exception kind."""

from __future__ import annotations

import errno
import time

import httpx
import pytest
import trio

from streamgw.errors import UpstreamError, UpstreamTimeout
from streamgw.providers.errors import transport_failure
from streamgw.testing.faults import Fault, FaultServer, unresponsive_port
from streamgw.testing.process import free_port
from streamgw.transport.errors import CONNECTING, READING, WAITING, WRITING, describe, map_exceptions
from streamgw.transport.h11pool import TrioH11Transport
from streamgw.transport.http1body import BodyFramingError
from streamgw.transport.http1head import HeadError, LocalHeadError

TIMEOUTS = {"connect": 0.5, "read": None, "write": 5.0, "pool": None}


async def fetch(url: str) -> bytes:
    """POST to ``url`` through a fresh transport and read the whole body."""
    transport = TrioH11Transport()
    try:
        request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": TIMEOUTS})
        response = await transport.handle_async_request(request)
        return b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    finally:
        await transport.aclose()


async def test_connection_refused_is_connect_error() -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        await fetch(f"http://127.0.0.1:{free_port()}/")
    assert isinstance(caught.value.__cause__, OSError)


async def test_connect_that_hangs_is_connect_timeout() -> None:
    with unresponsive_port() as port:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout, match="timed out connecting"):
            await fetch(f"http://127.0.0.1:{port}/")
    assert 0.4 < time.monotonic() - started < 3


async def test_tls_failure_is_connect_error_that_names_the_ssl_cause() -> None:
    with FaultServer(Fault.NOT_TLS) as server, pytest.raises(httpx.ConnectError) as caught:
        await fetch(f"https://127.0.0.1:{server.port}/")
    # trio wraps the ssl error in a BrokenResourceError without text: the message is the ssl error's
    assert "SSL" in str(caught.value) or "wrong version" in str(caught.value).lower()


async def test_eof_before_the_head_is_remote_protocol_error_in_plain_words() -> None:
    with FaultServer(Fault.EOF_BEFORE_HEAD) as server, pytest.raises(httpx.RemoteProtocolError) as caught:
        await fetch(f"http://127.0.0.1:{server.port}/")
    assert str(caught.value) == "the server closed the connection without sending a response"


async def test_malformed_head_is_remote_protocol_error() -> None:
    with FaultServer(Fault.MALFORMED_HEAD) as server, pytest.raises(httpx.RemoteProtocolError) as caught:
        await fetch(f"http://127.0.0.1:{server.port}/")
    assert isinstance(caught.value.__cause__, HeadError)
    assert str(caught.value).startswith("illegal status line")


async def test_reset_mid_body_is_read_error() -> None:
    with FaultServer(Fault.RESET_MID_BODY) as server, pytest.raises(httpx.ReadError) as caught:
        await fetch(f"http://127.0.0.1:{server.port}/")
    assert "reset" in str(caught.value).lower()


@pytest.mark.parametrize(
    ("phase", "raised", "expected"),
    [
        (CONNECTING, ConnectionRefusedError(errno.ECONNREFUSED, "refused"), httpx.ConnectError),
        (CONNECTING, trio.TooSlowError("slow"), httpx.ConnectTimeout),
        (WRITING, trio.BrokenResourceError("pipe"), httpx.WriteError),
        (WRITING, trio.TooSlowError("slow"), httpx.WriteTimeout),
        (WRITING, LocalHeadError("bad header"), httpx.LocalProtocolError),
        (READING, trio.ClosedResourceError("closed"), httpx.ReadError),
        (READING, trio.TooSlowError("slow"), httpx.ReadTimeout),
        (READING, BodyFramingError("bad chunk"), httpx.RemoteProtocolError),
        (READING, HeadError("bad head"), httpx.RemoteProtocolError),
        (WAITING, trio.TooSlowError("slow"), httpx.PoolTimeout),
    ],
)
def test_one_table_maps_each_failure_by_phase(phase: map_exceptions, raised: Exception,
                                              expected: type[httpx.TransportError]) -> None:
    with pytest.raises(httpx.TransportError) as caught, phase:
        raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert str(caught.value) == str(raised)


def test_what_is_not_a_transport_failure_passes_through() -> None:
    with pytest.raises(KeyError), READING:
        raise KeyError("a bug stays a bug")
    mapped = httpx.ReadError("already mapped")
    with pytest.raises(httpx.ReadError) as caught, WRITING:
        raise mapped  # mapped once: a nested phase does not re-map it
    assert caught.value is mapped


async def test_cancellation_is_never_mapped() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        with READING:
            await trio.sleep(1)
    assert scope.cancelled_caught


def test_describe_follows_a_textless_wrapper_to_its_cause() -> None:
    try:
        try:
            raise OSError("certificate verify failed")
        except OSError as exc:
            raise trio.BrokenResourceError from exc
    except trio.BrokenResourceError as wrapper:
        assert describe(wrapper) == "certificate verify failed"
    assert describe(trio.BrokenResourceError()) == "BrokenResourceError"


@pytest.mark.parametrize(
    ("exc", "error", "status", "code"),
    [
        (httpx.ConnectTimeout("t"), UpstreamTimeout, 504, "upstream_timeout"),
        (httpx.PoolTimeout("t"), UpstreamTimeout, 504, "upstream_timeout"),
        (httpx.ConnectError("c"), UpstreamError, 502, "upstream_unreachable"),
        (httpx.WriteError("w"), UpstreamError, 502, "upstream_connection_error"),
        (httpx.RemoteProtocolError("p"), UpstreamError, 502, "upstream_connection_error"),
    ],
)
def test_transport_failures_become_502_or_504(exc: httpx.TransportError, error: type[UpstreamError],
                                              status: int, code: str) -> None:
    mapped = transport_failure(exc, "up", secrets=["sk-secret-1234"])
    assert type(mapped) is error and mapped.status == status and mapped.code == code
    assert "'up'" in mapped.message and type(exc).__name__ in mapped.message


def test_transport_failure_messages_are_redacted() -> None:
    mapped = transport_failure(httpx.ConnectError("bad key sk-secret-1234 in url"), "up", secrets=["sk-secret-1234"])
    assert "sk-secret-1234" not in mapped.message
