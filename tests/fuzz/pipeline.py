"""The engine's stream path without the network: body bytes → translator → emitter → SSE bytes → client.

``run_stream`` feeds chunks the way ``HttpSource``/``ResponseRun`` do (the first non-empty
batch decides between an HTTP error and a stream; ``translator.finish()`` at EOF, then
``emitter.finish()``), encodes every event with the real SSE encoder and decodes them again
with the real SSE decoder, as a client would.  Any exception on the way is a finding.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamgw.config import ProviderConfig, Secret
from streamgw.core.deltas import UpstreamFailure
from streamgw.core.emitter import ResponseEmitter
from streamgw.core.relay import RelayEmitter
from streamgw.core.request import echo_fields, parse_request
from streamgw.core.sse import SSEDecoder, encode_event
from streamgw.engine.attempt import first_failure
from streamgw.providers.registry import dialects

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "streams"
#: a secret that is not key-shaped: only the configured-secret redaction can catch it
SECRET = "Tr0ub4dor-fuzz-upstream-password-Zq81"
REQUEST = parse_request(json.dumps({
    "model": "fuzz/m", "input": "hi", "stream": True,
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
}).encode())


@dataclass(frozen=True)
class Case:
    """One wire dialect under fuzz: its golden bodies and how to frame an injected event."""

    ptype: str  # provider type in the registry
    fixture_dir: str
    suffix: str
    frame: Callable[[bytes], bytes]  # JSON text -> one framed upstream event
    error: Callable[[str], bytes]  # message -> one upstream error event (framed)
    end_marker: re.Pattern[bytes]  # a body without it never ended properly

    def provider(self) -> ProviderConfig:
        return ProviderConfig(name=f"fuzz-{self.ptype}", type=self.ptype, base_url="http://127.0.0.1:9",
                              api_key=Secret(SECRET))

    def bodies(self) -> dict[str, bytes]:
        """Golden upstream bodies by name, with ``SECRET`` planted in every error message."""
        out = {}
        for path in sorted((FIXTURES / self.fixture_dir).glob(f"*{self.suffix}")):
            if path.name.endswith(".out.sse"):
                continue
            data = path.read_bytes()
            for quote in (b'"message":"', b'"message": "'):
                data = data.replace(quote, quote + SECRET.encode() + b" ")
            out[path.name.removesuffix(self.suffix)] = data
        return out


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


CASES = {
    "chat": Case("chat", "chat", ".sse", _sse,
                 lambda m: _sse(_dumps({"error": {"message": m, "type": "server_error", "code": None}})),
                 re.compile(rb'"finish_reason"\s*:\s*"|\[DONE\]')),
    "anthropic": Case("anthropic", "anthropic", ".sse", _sse,
                      lambda m: b"event: error\n" + _sse(_dumps(
                          {"type": "error", "error": {"type": "overloaded_error", "message": m}})),
                      re.compile(rb"message_stop")),
    "gemini": Case("gemini", "gemini", ".sse", _sse,
                   lambda m: _sse(_dumps({"error": {"code": 500, "message": m, "status": "INTERNAL"}})),
                   re.compile(rb'"finishReason"\s*:\s*"')),
    "ollama": Case("ollama", "ollama", ".ndjson", lambda d: d + b"\n",
                   lambda m: _dumps({"error": m}) + b"\n",
                   re.compile(rb'"done"\s*:\s*true')),
    "openai": Case("openai", "openai", ".sse", _sse,
                   lambda m: b"event: error\n" + _sse(_dumps(
                       {"type": "error", "code": "server_error", "message": m, "sequence_number": 99})),
                   re.compile(rb"response\.(completed|incomplete)")),
}


@dataclass
class Outcome:
    """What a client got: an HTTP error (before any event) or the decoded event stream."""

    http_error: UpstreamFailure | None
    events: list[dict[str, Any]]
    wire: bytes  # every byte the client received (SSE), or the error message

    @property
    def terminal(self) -> str | None:
        return self.events[-1]["type"] if self.events else None


def _batches(case: Case, chunks: Iterable[bytes]) -> Iterable[list[Any]]:
    translator = dialects()[case.ptype].new_translator(REQUEST, case.provider(), (SECRET,))
    for chunk in chunks:
        yield list(translator.feed(chunk))
    yield list(translator.finish())


def run_stream(case: Case, chunks: Iterable[bytes]) -> Outcome:
    """Drive ``chunks`` through the real translator, emitter, SSE encoder and decoder."""
    relay = dialects()[case.ptype].relays_events
    factory = RelayEmitter if relay else ResponseEmitter
    counter = itertools.count()  # deterministic ids and clock: two runs of one body compare byte for byte
    emitter = factory(model=REQUEST.model, provider=case.provider().name, echo=echo_fields(REQUEST),
                      new_id=lambda prefix: f"{prefix}{next(counter)}", clock=lambda: 1700000000.0)
    out: list[Any] = []
    started = False
    for batch in _batches(case, chunks):
        if not started:
            if not batch:
                continue
            failure = first_failure(batch)  # the engine's rule: a failure before any output is an HTTP error
            if failure is not None:
                return Outcome(failure, [], failure.message.encode())
            started = True
            out += emitter.start()
        out += emitter.feed(batch)
        if emitter.done:
            break
    if not started:  # the engine: "upstream closed the stream before any output"
        return Outcome(UpstreamFailure("server_error", "empty"), [], b"")
    out += emitter.finish()
    wire = b"".join(encode_event(event) for event in out)
    return Outcome(None, _decode(wire), wire)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON: a strict client cannot parse this event")


def _decode(wire: bytes) -> list[dict[str, Any]]:
    """What an SSE client parses; the bytes must be UTF-8 and each event's name its JSON type."""
    wire.decode("utf-8")  # strict: a lone surrogate must never reach the wire
    decoder = SSEDecoder()
    events = []
    for sse in decoder.feed(wire):
        payload = json.loads(sse.data, parse_constant=_not_json)  # what a strict JSON client accepts
        assert sse.event == payload["type"], (sse.event, payload.get("type"))
        events.append(payload)
    decoder.finish()
    return events
