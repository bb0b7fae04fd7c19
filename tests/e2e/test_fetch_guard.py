"""Image URL fetching through a real gateway: SSRF refusals, allow-list, redirects, userinfo, caps.

Two gateway processes in front of the Gemini mock (a dialect that takes images only as bytes):
``strict`` with the default ``[fetch]`` policy, ``allowing`` with ``allow_hosts = ["127.0.0.1"]``
and small caps.  Image servers run on 127.0.0.1 (and one on 127.0.0.2, the redirect target
that must never be reached); every URL here is loopback, so nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from streamgw.testing.gemini_mock import GeminiMock
from streamgw.testing.process import free_port, start_gateway, stop_process
from streamgw.testing.server import ClientDisconnected, MockRequest, MockServerStats, Responder, serving_in_thread

UPSTREAM_KEY = "AIzaSyFetchGuardUpstream0123456789abcd"
GATEWAY_KEY = "sk-gw-fetch-guard-key"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
MAX_BYTES = 100_000
MAX_TOTAL_BYTES = 250_000
FETCH_TIMEOUT = 3.0
PASSWORD = "pw-e2e-0451"
QUERY_TOKEN = "tok-e2e-0452"


def uniform(where: str = "input[0].content[0]") -> dict[str, Any]:
    """The one error every refused or failed fetch answers with."""
    return {"error": {"message": f"could not fetch image at {where}: the URL is not reachable or not allowed",
                      "type": "invalid_request_error", "param": "input", "code": "failed_to_download_image"}}


@dataclass
class Images:
    """An image server's record: requests (path, headers), the most served at once, bytes streamed."""

    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    streamed: int = 0
    stats: MockServerStats = field(default_factory=MockServerStats)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    async def handle(self, req: MockRequest, send: Responder) -> None:
        self.seen.append((req.path, req.headers))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self._answer(req, send)
        finally:
            self.active -= 1

    async def _answer(self, req: MockRequest, send: Responder) -> None:
        path = req.path
        if path.startswith("/hop/"):
            left = int(path.split("/")[2])
            if left:
                await send.full(302, {"location": f"/hop/{left - 1}"})
                return
        elif path == "/to":
            await send.full(302, {"location": req.query["url"]})
            return
        elif path.startswith("/slow/"):
            await trio.sleep(0.3)
        elif path.startswith("/blob/"):
            await send.full(200, {"content-type": "image/png"}, b"\x89PNG" + b"\0" * (int(path.split("/")[2]) - 4))
            return
        elif path == "/stream.png":  # no declared length; never ends on its own
            await self._stream_forever(send)
            return
        elif path == "/stall.png":
            await trio.sleep(30)
        elif path == "/page.html":
            await send.full(200, {"content-type": "text/html"}, b"<html>not an image</html>")
            return
        elif path == "/missing.png":
            await send.full(404, {"content-type": "text/plain"}, b"no such image")
            return
        await send.full(200, {"content-type": "image/png"}, PNG)

    async def _stream_forever(self, send: Responder) -> None:
        await send.start(200, {"content-type": "image/png"})
        try:
            while True:
                await send.chunk(b"\0" * 16384)
                self.streamed += 16384
                await trio.sleep(0.005)
        except ClientDisconnected:
            pass


class LyingLengthServer:
    """Raw sockets: answers a 10 MB ``Content-Length``, sends 1000 bytes, then stalls until the client leaves."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.requests = 0
        self.closed_after: list[float] = []  # seconds from the head sent to the client closing
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 10000000\r\n\r\n"
                         + b"\0" * 1000)
            started = time.monotonic()
            conn.settimeout(20)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                return
            self.closed_after.append(time.monotonic() - started)

    def close(self) -> None:
        self.listener.close()


def config(mock_port: int, fetch: str) -> str:
    return f"""
[auth]
keys = ["{GATEWAY_KEY}"]

[providers.gem]
type = "gemini"
base_url = "http://127.0.0.1:{mock_port}"
api_key = "{UPSTREAM_KEY}"

{fetch}
"""


ALLOWING = f"""
[fetch]
allow_hosts = ["127.0.0.1"]
max_bytes = {MAX_BYTES}
max_total_bytes = {MAX_TOTAL_BYTES}
timeout = {FETCH_TIMEOUT}
"""


@dataclass
class Stack:
    strict: str
    allowing: str
    allowing_log: Path
    mock: GeminiMock
    images: Images
    port: int  # the image server on 127.0.0.1
    far: Images  # an image server on 127.0.0.2, outside the allow-list
    far_port: int
    lying: LyingLengthServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mock = GeminiMock(api_key=UPSTREAM_KEY)
    images, far = Images(), Images()
    lying = LyingLengthServer()
    tmp = tmp_path_factory.mktemp("fetch-guard")
    procs: list[subprocess.Popen[bytes]] = []
    with (
        mock.serving_in_thread() as mock_port,
        serving_in_thread(lambda: images.handle, stats=images.stats) as port,
        serving_in_thread(lambda: far.handle, host="127.0.0.2") as far_port,
    ):
        try:
            urls = []
            for name, fetch in (("strict", ""), ("allowing", ALLOWING)):
                (tmp / f"{name}.toml").write_text(config(mock_port, fetch))
                proc, url = start_gateway(tmp / f"{name}.toml", tmp / f"{name}.log")
                procs.append(proc)
                urls.append(url)
            yield Stack(urls[0], urls[1], tmp / "allowing.log", mock, images, port, far, far_port, lying)
        finally:
            for proc in procs:
                assert stop_process(proc) == 0, "the gateway must exit cleanly on SIGTERM"
            lying.close()


def ask(gateway: str, *urls: str) -> httpx.Response:
    """One non-streamed request whose single user message holds ``urls`` as input images."""
    content = [{"type": "input_image", "image_url": url} for url in urls]
    content.append({"type": "input_text", "text": f"marker-{time.monotonic_ns()}"})
    body = {"model": "gem/text:tokens=1", "input": [{"role": "user", "content": content}]}
    return httpx.post(gateway + "/v1/responses", json=body, headers=AUTH, timeout=30)


def inline_images(mock: GeminiMock, response: httpx.Response) -> list[str]:
    """The base64 images that reached "Gemini" for the request ``response`` answered."""
    assert response.status_code == 200, response.text
    last = mock.requests[-1].json()
    return [p["inlineData"]["data"] for p in last["contents"][0]["parts"] if "inlineData" in p]


LOOPBACK_FORMS = ["127.0.0.1", "localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1",
                  "017700000001", "127.1", "[::1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]"]


def test_loopback_in_every_form_is_refused_before_connecting(stack: Stack) -> None:
    before, connections = len(stack.images.seen), stack.images.stats.connections_opened
    for host in LOOPBACK_FORMS:
        response = ask(stack.strict, f"http://{host}:{stack.port}/pixel.png")
        assert response.status_code == 400, (host, response.text)
        assert response.json() == uniform(), host
    assert len(stack.images.seen) == before, "the image server must never have been contacted"
    assert stack.images.stats.connections_opened == connections


def test_the_same_image_is_fetched_from_an_allow_listed_host(stack: Stack) -> None:
    response = ask(stack.allowing, f"http://127.0.0.1:{stack.port}/pixel.png")
    assert inline_images(stack.mock, response) == [base64.b64encode(PNG).decode()]
    path, headers = stack.images.seen[-1]
    assert path == "/pixel.png" and headers["host"] == f"127.0.0.1:{stack.port}"


def test_a_redirect_to_a_host_outside_the_allow_list_is_refused(stack: Stack) -> None:
    target = f"http://127.0.0.2:{stack.far_port}/pixel.png"
    response = ask(stack.allowing, f"http://127.0.0.1:{stack.port}/to?url={target}")
    assert response.status_code == 400 and response.json() == uniform()
    assert stack.images.paths()[-1] == "/to"
    assert stack.far.seen == [], "the redirect target must never be contacted"


@pytest.mark.parametrize(("hops", "ok"), [(3, True), (4, False)])
def test_redirects_are_followed_at_most_max_redirects_times(stack: Stack, hops: int, ok: bool) -> None:
    response = ask(stack.allowing, f"http://127.0.0.1:{stack.port}/hop/{hops}")
    if ok:
        assert inline_images(stack.mock, response) == [base64.b64encode(PNG).decode()]
    else:
        assert response.status_code == 400 and response.json() == uniform()
        assert stack.images.paths()[-4:] == ["/hop/4", "/hop/3", "/hop/2", "/hop/1"]


def test_url_userinfo_is_never_sent_nor_logged(stack: Stack) -> None:
    ok = ask(stack.allowing, f"http://user:{PASSWORD}@127.0.0.1:{stack.port}/pixel.png")
    assert inline_images(stack.mock, ok) == [base64.b64encode(PNG).decode()]
    _, headers = stack.images.seen[-1]
    assert "authorization" not in headers
    failed = ask(stack.allowing, f"http://user:{PASSWORD}@127.0.0.1:{stack.port}/missing.png?token={QUERY_TOKEN}")
    assert failed.status_code == 400 and failed.json() == uniform()
    log = stack.allowing_log.read_text(errors="replace")
    assert "HTTP 404" in log and "/missing.png" in log, "the real reason is logged for the operator"
    assert PASSWORD not in log and QUERY_TOKEN not in log


def test_closed_port_open_port_and_non_image_look_the_same(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.port}"
    urls = [f"http://127.0.0.1:{free_port()}/pixel.png",  # nothing listens
            f"{base}/missing.png", f"{base}/page.html",  # open port: 404, not an image
            f"http://127.0.0.2:{stack.far_port}/pixel.png",  # open port, address not allowed
            f"http://[::1]:{stack.port}/pixel.png", "http://[::1/x.png"]  # not allowed, not a URL
    bodies = [ask(stack.allowing, url) for url in urls]
    assert [(r.status_code, r.json()) for r in bodies] == [(400, uniform())] * len(urls)
    assert stack.far.seen == []


def test_the_whole_fetch_is_time_boxed_with_the_same_answer(stack: Stack) -> None:
    started = time.monotonic()
    response = ask(stack.allowing, f"http://127.0.0.1:{stack.port}/stall.png")
    assert response.status_code == 400 and response.json() == uniform()
    assert time.monotonic() - started < FETCH_TIMEOUT + 4


def test_more_urls_than_max_urls_are_refused_before_any_fetch(stack: Stack) -> None:
    before = len(stack.images.seen)
    response = ask(stack.allowing, *[f"http://127.0.0.1:{stack.port}/pixel.png?n={i}" for i in range(17)])
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input", "too_many_images")
    assert "at most 16" in error["message"]
    assert len(stack.images.seen) == before


def test_the_total_of_all_images_is_capped(stack: Stack) -> None:
    blobs = [f"http://127.0.0.1:{stack.port}/blob/90000/{i}.png" for i in range(3)]
    assert len(inline_images(stack.mock, ask(stack.allowing, *blobs[:2]))) == 2  # 180 kB: fine
    response = ask(stack.allowing, *blobs)  # 270 kB > 250 kB
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input", "images_too_large")


def test_a_declared_length_over_the_cap_is_refused_before_the_body(stack: Stack) -> None:
    started = time.monotonic()
    response = ask(stack.allowing, f"http://127.0.0.1:{stack.lying.port}/big.png")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input", "image_too_large") and str(MAX_BYTES) in error["message"]
    assert time.monotonic() - started < FETCH_TIMEOUT, "refused on the head, not after waiting for the body"
    assert stack.lying.requests == 1


def test_an_undeclared_body_is_cut_off_at_the_cap(stack: Stack) -> None:
    disconnects = len(stack.images.stats.disconnects)
    response = ask(stack.allowing, f"http://127.0.0.1:{stack.port}/stream.png")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "image_too_large"
    deadline = time.monotonic() + 5
    while len(stack.images.stats.disconnects) == disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(stack.images.stats.disconnects) > disconnects, "the gateway hung up on the endless body"
    assert stack.images.streamed < 2_000_000, "reading stopped soon after the cap, not at some bigger limit"


def test_downloads_run_at_most_concurrency_at_once(stack: Stack) -> None:
    stack.images.max_active = 0
    urls = [f"http://127.0.0.1:{stack.port}/slow/{i}.png" for i in range(10)]
    response = ask(stack.allowing, *urls)
    assert len(inline_images(stack.mock, response)) == 10
    assert 2 <= stack.images.max_active <= 4, stack.images.max_active


def test_the_error_never_echoes_the_url(stack: Stack) -> None:
    response = ask(stack.strict, f"http://user:{PASSWORD}@127.0.0.1:{stack.port}/pixel.png?token={QUERY_TOKEN}")
    assert response.status_code == 400
    text = json.dumps(response.json())
    assert PASSWORD not in text and QUERY_TOKEN not in text and "127.0.0.1" not in text
