"""The load generator: a lean trio client that streams Responses or Chat Completions SSE and times it.

Run as its own process (the bench starts it pinned to the load core)::

    python -m bench.loadgen --spec spec.json --out result.json

``spec.json`` is ``{"phases": [PhaseSpec, ...]}`` (the dataclass fields below, as JSON); phases run one
after the other in the same process, so a scenario pays the interpreter start-up once.  While it runs it
prints one JSON progress line per ``progress_interval`` on stdout
(``{"phase", "t", "started", "done", "open", "events", "errors"}``); SIGTERM ends the current phase
cleanly (streams still open are counted as ``held``, not as errors) and the result is still written.

Why not httpx: the client must cost far less CPU than the gateway it measures.  HTTP/1.1 is a hand-written
sans-IO parser (``ResponseParser``: status line, headers, content-length / chunked / until-close bodies)
on raw trio sockets with keep-alive; HTTP/2 (h2c prior knowledge or TLS+ALPN) uses the ``h2`` state
machine with many streams per connection.  SSE is split by ``SseScanner`` (blank-line framing, CR/LF
variants, comments skipped) and each event is only looked at for what is measured: the first token, the
terminal event, and, for a few sampled streams per target, every event (checked afterwards with
``streamgw.testing.invariants.check_events``).

Per request it records: time to headers, to the first event, to the first token (the first event that
carries text: ``response.*.delta`` or a non-empty chat ``content``), total time, events, body bytes, the
HTTP status, an error kind, the longest gap between events and, when the client cancels on purpose, the
monotonic time of that cancel.  Gaps between consecutive events (0 for events that arrived in the same
read) are kept for the first ``gap_samples`` events of each target; with ``timed_gaps`` every gap also goes
into ``gap_hist`` by the decisecond it ended in (``{decisecond: {gap in 0.1 ms: count}}``), so the bench can
take the gaps of any window (the paced scenario's, after the streams opened).  Every timestamp is
``time.monotonic()``, the same clock in every process on the machine, so the bench can line windows up
with the gateway's CPU samples and the mock's disconnect log.

Error kinds: ``status_<code>``, ``connect``, ``reset`` (connection broken), ``closed`` (the body ended
early), ``timeout``, ``protocol`` (unparseable HTTP), ``failed`` (``response.failed`` or a chat error
event), ``no_terminal`` (a clean end without ``response.completed``/``[DONE]``), ``bad_body``
(non-streamed body that is not the expected JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from streamgw.transport.sockio import plain_socket, receive_plain

__all__ = [
    "Exchange",
    "PhaseSpec",
    "ProtocolError",
    "ResponseParser",
    "SseScanner",
    "TargetSpec",
    "TargetTally",
    "main",
    "parse_sse_events",
    "raise_fd_limit",
    "run_phases",
]

Json = dict[str, Any]

_RECV = 65536
_MAX_HEAD = 64 * 1024
_DONE_MARK = b"[DONE]"
_TOKEN_RE = {
    "responses": re.compile(rb"response\.[a-z_.]*delta\b"),
    "chat": re.compile(rb'"(?:content|reasoning_content|reasoning|refusal|arguments)"\s*:\s*"(?!")'),
}
_TERMINAL_RE = re.compile(rb"response\.(completed|incomplete|failed)\b")
_JSON_STATUS_RE = re.compile(rb'"(?:object|status)"\s*:\s*"(?:response|completed|incomplete|chat\.completion)"')


# ------------------------------------------------------------------------------------------ specs


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One endpoint to load: where, what body, which wire dialect."""

    name: str
    url: str  # http(s)://host:port/path
    body: str  # the JSON request body, sent verbatim
    dialect: str = "responses"  # responses | chat: how SSE events are read
    stream: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = False
    ca_file: str | None = None  # https: trust this CA (PEM) instead of the system's (a self-signed gateway)


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    """One load pattern: closed-loop workers over targets (alternating), for a time or a request count."""

    name: str
    targets: tuple[TargetSpec, ...]
    concurrency: int
    duration: float = 0.0  # seconds measured after warm-up; 0: until each worker made ``requests``
    warmup: float = 0.0  # seconds of load whose requests are not recorded
    requests: int = 0  # per worker; 0: no limit (then ``duration`` or SIGTERM ends the phase)
    cancel_after_events: int = 0  # close the stream after this many events (cancellation scenario)
    pause: float = 0.0  # seconds a worker sleeps after each request
    max_pending: int = 0  # cap on requests sent but without headers yet (ramping many streams); 0: none
    sample_streams: int = 5  # streams per target whose events are kept and checked
    timeout: float = 60.0  # per request; 0: none
    keepalive: bool = True  # reuse HTTP/1.1 connections
    start_at: float = 0.0  # monotonic time to start (aligns several processes); 0: at once
    gap_samples: int = 100_000
    progress_interval: float = 0.25
    h2_streams_per_connection: int = 100
    timed_gaps: bool = False  # also histogram every gap by the decisecond it ended in (``gap_hist``)

    @staticmethod
    def from_json(data: Json) -> PhaseSpec:
        """Build a phase from its JSON form (targets as objects, headers as pairs)."""
        targets = tuple(
            TargetSpec(**{**t, "headers": tuple(tuple(h) for h in t.get("headers", ()))}) for t in data["targets"]
        )
        known = {f.name for f in fields(PhaseSpec)}
        return PhaseSpec(**{k: v for k, v in data.items() if k in known and k != "targets"}, targets=targets)

    def to_json(self) -> Json:
        """The JSON form ``from_json`` reads."""
        return asdict(self)


# ------------------------------------------------------------------------------- HTTP/1.1 parser


class ProtocolError(ValueError):
    """The server's bytes are not a valid HTTP/1.1 response."""


_HEAD, _LENGTH, _SIZE, _DATA, _CRLF, _TRAILER, _EOF, _DONE = range(8)


class ResponseParser:
    """Incremental HTTP/1.1 response parser (sans-IO).

    ``feed(data)`` returns the body bytes decoded from ``data`` (chunked framing removed); ``status``,
    ``headers`` and ``keep_alive`` are set once the head is parsed (``status`` stays 0 until then) and
    ``done`` once the body is complete.  1xx interim responses are skipped.  ``feed_eof()`` must be
    called when the connection closes: it ends an until-close body or raises ``ProtocolError``.
    """

    __slots__ = ("_buf", "_remaining", "_state", "done", "headers", "keep_alive", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.keep_alive = True
        self.done = False
        self._buf = b""
        self._state = _HEAD
        self._remaining = 0

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return the body bytes it completed."""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        if self._state == _HEAD:
            buf = self._head(buf)
        if self._state == _LENGTH:
            return self._length(buf)
        if self._state == _EOF:
            return buf
        if self._state in (_HEAD, _DONE):
            return b""
        out: list[bytes] = []
        self._buf = self._chunked(buf, out)
        return out[0] if len(out) == 1 else b"".join(out)

    def feed_eof(self) -> None:
        """The connection closed: fine for an until-close body, an error anywhere else."""
        if self._state == _EOF:
            self._state = _DONE
            self.done = True
        elif not self.done:
            raise ProtocolError("connection closed before the response was complete")

    def _head(self, buf: bytes) -> bytes:
        while self._state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ProtocolError("response head too large")
                self._buf = buf
                return b""
            self._parse_head(buf[:end])
            buf = buf[end + 4 :]
        return buf

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return  # interim response; the real one follows
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            key = name.strip().lower()
            headers[key] = headers[key] + b", " + value.strip() if key in headers else value.strip()
        self.status, self.headers = status, headers
        conn = headers.get(b"connection", b"").lower()
        self.keep_alive = b"close" not in conn and (parts[0] != b"HTTP/1.0" or b"keep-alive" in conn)
        self._state = self._body_state(status, headers)
        self.done = self._state == _DONE

    def _body_state(self, status: int, headers: dict[bytes, bytes]) -> int:
        if status in (204, 304):
            return _DONE
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return _SIZE
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ProtocolError(f"bad content-length {length!r}")
            self._remaining = int(length)
            return _LENGTH if self._remaining else _DONE
        self.keep_alive = False
        return _EOF

    def _length(self, buf: bytes) -> bytes:
        if len(buf) >= self._remaining:
            if len(buf) > self._remaining:
                raise ProtocolError("more bytes than content-length")
            self._remaining = 0
            self._state = _DONE
            self.done = True
            return buf
        self._remaining -= len(buf)
        return buf

    def _chunked(self, buf: bytes, out: list[bytes]) -> bytes:
        pos, end = 0, len(buf)
        while not self.done:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                if not take:
                    break
                out.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _CRLF
                continue
            if state == _CRLF:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("missing CRLF after a chunk")
                pos += 2
                self._state = _SIZE
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if end - pos > _MAX_HEAD:
                    raise ProtocolError("chunk size line too long")
                break
            self._on_line(buf[pos:line_end])
            pos = line_end + 2
        return buf[pos:]

    def _on_line(self, line: bytes) -> None:
        """A chunk-size line, or a trailer line (the empty one ends the body)."""
        if self._state == _TRAILER:
            if not line:
                self._state = _DONE
                self.done = True
            return
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _TRAILER


# ------------------------------------------------------------------------------------ SSE scanner


class SseScanner:
    """Splits a byte stream into SSE event blocks (sans-IO).

    ``feed`` returns the complete blocks that carry a ``data`` field (comment-only blocks such as
    ``: keepalive`` are not events); CRLF and lone CR line ends are normalised to LF, also when a CRLF
    is split between two reads.  A block still open when the stream ends is not an event (the SSE
    spec dispatches on the blank line only); ``pending`` tells whether one was left.
    """

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished block are buffered."""
        return bool(self._buf.strip(b"\n"))

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the event blocks it completed, without their blank line."""
        if self._cr or b"\r" in data:
            data = self._normalise(data)
        buf = self._buf + data if self._buf else data
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        return [b for b in blocks if b.startswith(b"data") or b"\ndata" in b]

    def _normalise(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def parse_sse_events(blocks: Sequence[bytes]) -> list[Json]:
    """The JSON payloads of SSE event blocks (``data:`` lines joined); ``[DONE]`` is skipped."""
    events: list[Json] = []
    for block in blocks:
        lines = [line[5:] for line in block.split(b"\n") if line.startswith(b"data:")]
        payload = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
        if payload.strip() != _DONE_MARK:
            events.append(json.loads(payload))
    return events


# --------------------------------------------------------------------------------- measurements


_COLUMNS = ("start", "head", "first_event", "first_token", "total", "events", "bytes", "status", "error",
            "cancel_at", "max_gap")


@dataclass
class TargetTally:
    """Everything recorded for one target during one phase."""

    name: str
    dialect: str
    stream: bool
    measure_from: float
    gap_cap: int
    sample_cap: int
    records: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in _COLUMNS})
    gaps: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    event_hist: Counter[int] = field(default_factory=Counter)
    done_hist: Counter[int] = field(default_factory=Counter)
    samples: list[list[bytes]] = field(default_factory=list)
    sample_bodies: list[bytes] = field(default_factory=list)
    held: int = 0
    reserved: int = 0
    timed_gaps: bool = False
    #: decisecond of ``time.monotonic()`` -> gap in 0.1 ms units -> count (only with ``timed_gaps``)
    gap_hist: dict[int, Counter[int]] = field(default_factory=dict)

    def time_gap(self, now: float, gap: float, count: int) -> None:
        """A read at ``now`` completed ``count`` events, the first ``gap`` seconds after the previous read's."""
        second = int(now * 10)
        hist = self.gap_hist.get(second)
        if hist is None:
            hist = self.gap_hist[second] = Counter()
        hist[int(gap * 1e4)] += 1
        if count > 1:
            hist[0] += count - 1

    def reserve_sample(self, start: float) -> bool:
        """Whether an exchange starting at ``start`` keeps its events for the invariant check."""
        if self.reserved >= self.sample_cap or start < self.measure_from:
            return False
        self.reserved += 1
        return True

    def record(self, ex: Exchange) -> None:
        """Account a finished exchange (only those started after the warm-up become records)."""
        if ex.error:
            self.errors[ex.error] += 1
        else:
            self.done_hist[int(ex.t_end * 10)] += 1
        if ex.start < self.measure_from:
            return
        rec = self.records
        start = ex.start
        rec["start"].append(start)
        for name, value in (("head", ex.t_head), ("first_event", ex.t_first), ("first_token", ex.t_token),
                            ("total", ex.t_end)):
            rec[name].append(round(value - start, 7) if value else None)
        rec["events"].append(ex.events)
        rec["bytes"].append(ex.nbytes)
        rec["status"].append(ex.status)
        rec["error"].append(ex.error)
        rec["cancel_at"].append(ex.cancel_at or None)
        rec["max_gap"].append(round(ex.max_gap, 7))

    def to_json(self, invariants: Json) -> Json:
        """The tally as the result JSON has it (histogram keys are deciseconds of ``time.monotonic()``)."""
        return {
            "name": self.name, "dialect": self.dialect, "stream": self.stream, "records": self.records,
            "gaps": [round(g, 7) for g in self.gaps], "errors": dict(self.errors), "held": self.held,
            "event_hist": {str(k): v for k, v in sorted(self.event_hist.items())},
            "done_hist": {str(k): v for k, v in sorted(self.done_hist.items())},
            "invariants": invariants,
            **({"gap_hist": {str(k): {str(g): n for g, n in sorted(h.items())} for k, h in sorted(
                self.gap_hist.items())}} if self.timed_gaps else {}),
        }


class Exchange:
    """One request's measurements, fed by the HTTP/1.1 loop or the HTTP/2 reader (sans-IO)."""

    __slots__ = ("_keep", "_last", "_release", "_scanner", "_tally", "_token_re", "blocks", "body_tail",
                 "cancel_at", "error", "events", "finished", "last_block", "max_gap", "nbytes", "start",
                 "status", "t_end", "t_first", "t_head", "t_token")

    def __init__(self, tally: TargetTally, start: float, release: Callable[[], None] | None = None) -> None:
        self._tally = tally
        self.start = start
        self._release = release
        self.status = 0
        self.t_head = self.t_first = self.t_token = self.t_end = self.cancel_at = 0.0
        self.events = self.nbytes = 0
        self.max_gap = 0.0
        self._last = 0.0
        self.error = ""
        self.finished = False
        self.last_block = b""
        self.body_tail = b""
        self._scanner = SseScanner() if tally.stream else None
        self._token_re = _TOKEN_RE.get(tally.dialect, _TOKEN_RE["responses"])
        self._keep = tally.reserve_sample(start)
        self.blocks: list[bytes] = []

    def head(self, status: int, now: float) -> None:
        """The response head arrived."""
        self.status = status
        self.t_head = now
        self._pending_done()

    def body(self, data: bytes, now: float) -> int:
        """Body bytes arrived at ``now``; returns the number of events they completed."""
        if not data:
            return 0
        self.nbytes += len(data)
        if self._scanner is None:
            if not self.t_first:
                self.t_first = self.t_token = now
            self.body_tail = (self.body_tail + data) if self._keep else (self.body_tail + data)[-64:]
            return 0
        blocks = self._scanner.feed(data)
        if blocks:
            self._on_events(blocks, now)
        return len(blocks)

    def _on_events(self, blocks: list[bytes], now: float) -> None:
        count = len(blocks)
        tally = self._tally
        if self.events:
            gap = now - self._last
            self.max_gap = max(self.max_gap, gap)
            if len(tally.gaps) < tally.gap_cap and self.start >= tally.measure_from:
                tally.gaps.append(gap)
                tally.gaps.extend([0.0] * (count - 1))
            if tally.timed_gaps:
                tally.time_gap(now, gap, count)
        elif self.start >= tally.measure_from and len(tally.gaps) < tally.gap_cap:
            tally.gaps.extend([0.0] * (count - 1))
        if not self.t_first:
            self.t_first = now
        if not self.t_token:
            search = self._token_re.search
            if any(search(b) for b in blocks):
                self.t_token = now
        self._last = now
        self.events += count
        self.last_block = blocks[-1]
        tally.event_hist[int(now * 10)] += count
        if self._keep:
            self.blocks.extend(blocks)

    def finish(self, now: float) -> None:
        """The body ended cleanly: judge the status and the terminal event."""
        if self.finished:
            return
        if self.status != 200:
            self.error = f"status_{self.status}"
        elif self._scanner is not None:
            self.error = _stream_verdict(self._tally.dialect, self.last_block)
        elif not self.body_tail.rstrip().endswith(b"}"):
            self.error = "bad_body"
        self._close(now)

    def fail(self, kind: str, now: float) -> None:
        """The request failed with error ``kind`` (first failure wins)."""
        if not self.finished:
            self.error = self.error or kind
            self._close(now)

    def cancel(self, now: float) -> None:
        """The client cancels on purpose (not an error)."""
        if not self.finished:
            self.cancel_at = now
            self._close(now)

    def hold(self, now: float) -> None:
        """The phase ended with this stream still open (open-streams scenario): neither done nor failed."""
        if not self.finished:
            self._tally.held += 1
            self.cancel_at = now
            self._pending_done()
            self.finished = True

    def _close(self, now: float) -> None:
        self.finished = True
        self.t_end = now
        self._pending_done()
        tally = self._tally
        tally.record(self)
        if self._keep and not self.error and not self.cancel_at:
            if self._scanner is not None:
                tally.samples.append(self.blocks)
            else:
                tally.sample_bodies.append(self.body_tail)

    def _pending_done(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


def _stream_verdict(dialect: str, last: bytes) -> str:
    """The error kind of a stream that ended cleanly, judged by its last event ("" when fine)."""
    if dialect == "chat":
        if _DONE_MARK in last:
            return ""
        return "failed" if b'"error"' in last else "no_terminal"
    match = _TERMINAL_RE.search(last)
    if match is None:
        return "no_terminal"
    return "failed" if match.group(1) == b"failed" else ""


def check_samples(tally: TargetTally) -> Json:
    """Run the Responses invariants on the sampled streams (and parse sampled JSON bodies)."""
    from streamgw.testing.invariants import StreamInvariantError, check_events

    failures: list[str] = []
    checked = 0
    for blocks in tally.samples:
        if tally.dialect != "responses":
            break
        checked += 1
        try:
            check_events(parse_sse_events(blocks))
        except (StreamInvariantError, ValueError, KeyError, TypeError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:300])
    for body in tally.sample_bodies:
        checked += 1
        if not _JSON_STATUS_RE.search(body):
            failures.append(f"unexpected body {body[:120]!r}")
            continue
        try:
            json.loads(body)
        except ValueError as exc:
            failures.append(f"invalid JSON body: {exc}"[:300])
    return {"checked": checked, "failures": failures}


# -------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class _Endpoint:
    """A target resolved for the wire: host, port, TLS, the pre-built HTTP/1.1 request bytes."""

    spec: TargetSpec
    host: str
    port: int
    tls: ssl.SSLContext | None
    path: str
    request: bytes
    body: bytes

    @staticmethod
    def resolve(spec: TargetSpec) -> _Endpoint:
        parts = urlsplit(spec.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"target URL must be http(s)://host[:port]/path, got {spec.url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = spec.body.encode()
        authority = parts.netloc.rsplit("@", 1)[-1]
        headers = [("host", authority), ("content-type", "application/json"),
                   ("accept", "text/event-stream" if spec.stream else "application/json"),
                   ("content-length", str(len(body))), *spec.headers]
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        context = _tls_context(spec.http2, spec.ca_file) if tls else None
        return _Endpoint(spec, parts.hostname, port, context, path, head.encode("latin-1") + body, body)

    def h2_headers(self) -> list[tuple[str, str]]:
        """The HTTP/2 request headers (pseudo-headers first)."""
        scheme = "https" if self.tls else "http"
        return [(":method", "POST"), (":scheme", scheme), (":authority", f"{self.host}:{self.port}"),
                (":path", self.path), ("content-type", "application/json"),
                ("accept", "text/event-stream" if self.spec.stream else "application/json"),
                ("content-length", str(len(self.body))), *((k.lower(), v) for k, v in self.spec.headers)]


def _tls_context(http2: bool, ca_file: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
    return context


async def _connect(ep: _Endpoint) -> trio.abc.Stream:
    if ep.tls is not None:
        tls_stream = await trio.open_ssl_over_tcp_stream(ep.host, ep.port, ssl_context=ep.tls, https_compatible=True)
        await tls_stream.do_handshake()
        return tls_stream
    return await trio.open_tcp_stream(ep.host, ep.port)


# ------------------------------------------------------------------------------------- the phase


class _Phase:
    """Runtime state of one phase: its endpoints, tallies, counters and the pending-request gate."""

    def __init__(self, spec: PhaseSpec) -> None:
        self.spec = spec
        self.start = time.monotonic()
        self.measure_from = self.start + spec.warmup
        self.stop_at = self.measure_from + spec.duration if spec.duration else math.inf
        self.endpoints = [_Endpoint.resolve(t) for t in spec.targets]
        self.tallies = [TargetTally(t.name, t.dialect, t.stream, self.measure_from, spec.gap_samples,
                                    spec.sample_streams, timed_gaps=spec.timed_gaps) for t in spec.targets]
        self.started = self.done = self.open = 0
        self.gate = trio.Semaphore(spec.max_pending) if spec.max_pending else None
        self.h2_pools: dict[int, _H2Pool] = {}

    def retime(self) -> None:
        """Reset the clock when the load actually starts (after ``start_at``)."""
        self.start = time.monotonic()
        self.measure_from = self.start + self.spec.warmup
        self.stop_at = self.measure_from + self.spec.duration if self.spec.duration else math.inf
        for tally in self.tallies:
            tally.measure_from = self.measure_from

    def keep_going(self, made: int) -> bool:
        """Whether a worker that made ``made`` requests starts another."""
        limit = self.spec.requests
        if limit and made >= limit:
            return False
        if not limit and not self.spec.duration:
            return True  # open-ended: until SIGTERM
        return time.monotonic() < self.stop_at

    async def new_exchange(self, index: int) -> Exchange:
        """An exchange for target ``index``, after passing the pending gate."""
        release: Callable[[], None] | None = None
        if self.gate is not None:
            await self.gate.acquire()
            release = self._release_gate
        self.started += 1
        return Exchange(self.tallies[index], time.monotonic(), release)

    def _release_gate(self) -> None:
        assert self.gate is not None
        self.gate.release()

    def counters(self) -> Json:
        """The progress line's counters."""
        events = sum(sum(t.event_hist.values()) for t in self.tallies)
        errors = sum(sum(t.errors.values()) for t in self.tallies)
        return {"started": self.started, "done": self.done, "open": self.open, "events": events, "errors": errors}


async def _timed(phase: _Phase, ex: Exchange, run: Callable[[], Awaitable[None]]) -> None:
    """Run one request body under the phase's per-request timeout and map failures to error kinds."""
    timeout = phase.spec.timeout or math.inf
    try:
        with trio.fail_after(timeout):
            await run()
    except trio.TooSlowError:
        ex.fail("timeout", time.monotonic())
    except (ProtocolError, h2.exceptions.H2Error):
        ex.fail("protocol", time.monotonic())
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, ssl.SSLError):
        ex.fail("reset", time.monotonic())
    except OSError:
        ex.fail("connect" if not ex.t_head else "reset", time.monotonic())
    finally:
        if not ex.finished:  # cancelled from outside (SIGTERM): the stream was held open
            ex.hold(time.monotonic())


# ----------------------------------------------------------------------------------- HTTP/1.1 loop


class _H1Conn:
    """One keep-alive HTTP/1.1 connection (or none yet) of one worker to one endpoint."""

    def __init__(self, ep: _Endpoint) -> None:
        self.ep = ep
        self.stream: trio.abc.Stream | None = None

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def exchange(self, phase: _Phase, ex: Exchange) -> None:
        """Send the request and read the response into ``ex``; retries once on a stale keep-alive socket."""
        reused = self.stream is not None
        if self.stream is None:
            self.stream = await _connect(self.ep)
        try:
            keep = await self._roundtrip(self.stream, phase, ex)
        except (trio.BrokenResourceError, ProtocolError, ConnectionError):
            await self.close()
            if not (reused and not ex.nbytes and not ex.status):
                raise
            self.stream = await _connect(self.ep)  # the server had closed the idle connection
            keep = await self._roundtrip(self.stream, phase, ex)
        if not keep or not phase.spec.keepalive:
            await self.close()

    async def _roundtrip(self, stream: trio.abc.Stream, phase: _Phase, ex: Exchange) -> bool:
        await stream.send_all(self.ep.request)
        parser = ResponseParser()
        cancel_after = phase.spec.cancel_after_events
        now = time.monotonic()
        plain = plain_socket(stream)  # plain TCP: read without the stream's layers (the client side is the limit)
        while not parser.done:
            data = await (receive_plain(plain, _RECV) if plain is not None else stream.receive_some(_RECV))
            now = time.monotonic()
            if not data:
                parser.feed_eof()
                break
            body = parser.feed(data if isinstance(data, bytes) else bytes(data))
            if parser.status and not ex.status:
                ex.head(parser.status, now)
                phase.open += 1
            if body and ex.body(body, now) and cancel_after and ex.events >= cancel_after:
                ex.cancel(now)
                await self.close()
                return False
        ex.finish(now)
        return parser.keep_alive


# ------------------------------------------------------------------------------------- HTTP/2 loop


class _H2Conn:
    """One HTTP/2 connection carrying many concurrent streams; a reader task dispatches its frames."""

    def __init__(self, ep: _Endpoint, stream: trio.abc.Stream, phase: _Phase) -> None:
        self.ep = ep
        self.stream = stream
        self.phase = phase
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.live: dict[int, tuple[Exchange, trio.Event]] = {}
        self.lock = trio.StrictFIFOLock()
        self.dead = False

    async def start(self, nursery: trio.Nursery) -> None:
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        await self.flush()
        nursery.start_soon(self._reader)

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def request(self, ex: Exchange) -> None:
        """Run one request on a new stream of this connection."""
        if self.dead:
            raise trio.BrokenResourceError("HTTP/2 connection is gone")
        sid = self.conn.get_next_available_stream_id()
        done = trio.Event()
        self.live[sid] = (ex, done)
        self.conn.send_headers(sid, self.ep.h2_headers(), end_stream=not self.ep.body)
        step = self.conn.max_outbound_frame_size
        for offset in range(0, len(self.ep.body), step):
            chunk = self.ep.body[offset : offset + step]
            self.conn.send_data(sid, chunk, end_stream=offset + step >= len(self.ep.body))
        try:
            await self.flush()
            await done.wait()
        finally:
            if self.live.pop(sid, None) is not None and not self.dead:
                self._reset(sid)  # cancelled or timed out while the stream was live
                with trio.CancelScope(shield=True):
                    await self.flush()

    def _reset(self, sid: int) -> None:
        try:
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            pass  # the stream already closed on the server's side

    async def _reader(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(_RECV)
                now = time.monotonic()
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._dispatch(event, now)
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h2.exceptions.H2Error):
            pass
        finally:
            self._die(time.monotonic())

    def _dispatch(self, event: h2.events.Event, now: float) -> None:
        sid = getattr(event, "stream_id", 0)
        entry = self.live.get(sid)
        if isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if entry is None:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.dead = True
            return
        ex, done = entry
        if isinstance(event, h2.events.ResponseReceived):
            status = dict(event.headers or []).get(b":status", b"0")
            ex.head(int(status), now)
            self.phase.open += 1
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(sid, ex, done, event.data or b"", now)
        elif isinstance(event, h2.events.StreamEnded):
            self.live.pop(sid, None)
            ex.finish(now)
            done.set()
        elif isinstance(event, h2.events.StreamReset):
            self.live.pop(sid, None)
            ex.fail("reset", now)
            done.set()

    def _on_data(self, sid: int, ex: Exchange, done: trio.Event, data: bytes, now: float) -> None:
        cancel_after = self.phase.spec.cancel_after_events
        if ex.body(data, now) and cancel_after and ex.events >= cancel_after:
            ex.cancel(now)
            self.live.pop(sid, None)
            self._reset(sid)
            done.set()

    def _die(self, now: float) -> None:
        self.dead = True
        for ex, done in self.live.values():
            ex.fail("reset", now)
            done.set()
        self.live.clear()


class _H2Pool:
    """The HTTP/2 connections of one endpoint: ``h2_streams_per_connection`` workers share each."""

    def __init__(self, ep: _Endpoint, phase: _Phase, nursery: trio.Nursery) -> None:
        self.ep = ep
        self.phase = phase
        self.nursery = nursery
        self.conns: dict[int, _H2Conn] = {}
        self.locks: dict[int, trio.Lock] = {}

    async def get(self, wid: int) -> _H2Conn:
        """The connection for worker ``wid`` (opened, or re-opened after it died, on demand)."""
        slot = wid // max(1, self.phase.spec.h2_streams_per_connection)
        async with self.locks.setdefault(slot, trio.Lock()):
            conn = self.conns.get(slot)
            if conn is None or conn.dead:
                conn = _H2Conn(self.ep, await _connect(self.ep), self.phase)
                await conn.start(self.nursery)
                self.conns[slot] = conn
            return conn

    async def aclose(self) -> None:
        for conn in self.conns.values():
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()


async def _h2_request(pool: _H2Pool, wid: int, ex: Exchange) -> None:
    conn = await pool.get(wid)
    await conn.request(ex)


async def _worker(phase: _Phase, wid: int) -> None:
    """One closed-loop client: requests one after the other, alternating over the targets."""
    conns = [_H1Conn(ep) for ep in phase.endpoints]
    made = 0
    try:
        while phase.keep_going(made):
            index = (wid + made) % len(conns)
            conn, pool = conns[index], phase.h2_pools.get(index)
            ex = await phase.new_exchange(index)
            run = partial(_h2_request, pool, wid, ex) if pool else partial(conn.exchange, phase, ex)
            try:
                await _timed(phase, ex, run)
            finally:
                phase.open -= 1 if ex.status else 0
                phase.done += 1
            if ex.error and pool is None:
                await conn.close()
            made += 1
            if phase.spec.pause:
                await trio.sleep(phase.spec.pause)
    finally:
        for conn in conns:
            await conn.close()


# ------------------------------------------------------------------------------------ the runner


def _emit(line: Json) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _report_progress(index: int, phase: _Phase) -> None:
    while True:
        await trio.sleep(phase.spec.progress_interval)
        _emit({"phase": index, "t": round(time.monotonic(), 3), **phase.counters()})


async def _watch_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _drive(phase: _Phase, index: int) -> None:
    """Start the workers (and the progress task and HTTP/2 readers) and wait for the workers."""
    if phase.spec.start_at:
        await trio.sleep(max(0.0, phase.spec.start_at - time.monotonic()))
    phase.retime()
    async with trio.open_nursery() as background:
        background.start_soon(_report_progress, index, phase)
        for i, ep in enumerate(phase.endpoints):
            if ep.spec.http2:
                phase.h2_pools[i] = _H2Pool(ep, phase, background)
        try:
            async with trio.open_nursery() as workers:
                for wid in range(phase.spec.concurrency):
                    workers.start_soon(_worker, phase, wid)
        finally:
            for pool in phase.h2_pools.values():
                await pool.aclose()
            background.cancel_scope.cancel()


async def _run_phase(spec: PhaseSpec, index: int) -> Json:
    phase = _Phase(spec)
    cpu0 = time.process_time()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_sigterm, scope)
            await _drive(phase, index)
            nursery.cancel_scope.cancel()
    end = time.monotonic()
    return {
        "name": spec.name, "spec": spec.to_json(), "t_start": phase.start, "t_measure": phase.measure_from,
        "t_stop": min(phase.stop_at, end), "t_end": end, "interrupted": scope.cancelled_caught,
        "loadgen_cpu_seconds": time.process_time() - cpu0,
        "targets": [t.to_json(check_samples(t)) for t in phase.tallies],
    }


_stop_requested = False


def _note_stop(signum: int, frame: object) -> None:
    """SIGTERM between phases: finish the current step, skip the rest, still write the result."""
    global _stop_requested
    _stop_requested = True


async def run_phases(specs: Sequence[PhaseSpec]) -> list[Json]:
    """Run the phases one after the other; a SIGTERM ends the current phase and skips the rest."""
    results: list[Json] = []
    for index, spec in enumerate(specs):
        if _stop_requested:
            break
        result = await _run_phase(spec, index)
        results.append(result)
        _emit({"phase": index, "t": round(time.monotonic(), 3), "finished": True})
        if result["interrupted"]:
            break
    return results


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.loadgen --spec SPEC.json --out RESULT.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="JSON file: {\"phases\": [...]}")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    fd_limit = raise_fd_limit()
    signal.signal(signal.SIGTERM, _note_stop)
    with open(args.spec, encoding="utf-8") as fh:
        specs = [PhaseSpec.from_json(p) for p in json.load(fh)["phases"]]
    phases = trio.run(run_phases, specs)
    result = {"pid": os.getpid(), "fd_limit": fd_limit, "phases": phases}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
