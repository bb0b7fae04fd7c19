"""The request log: one line per request, written when the request ends (never per event).

``RequestLog`` is a ``RequestObserver`` of the response lifecycle (every ``POST /v1/responses``
and WebSocket ``response.create``, including those refused before the lifecycle: 401, 400,
413, 503) and also logs every other HTTP route with fewer fields (``route``).  A line is built
from the ``RequestEntry`` once, then written with one ``os.write`` of the whole line to a file
descriptor opened with ``O_APPEND`` (or stderr): the workers of ``--workers N`` share one file
and the kernel appends each line whole, and the event loop waits for at most that one
``write()`` — no buffering, no thread, no queue that could lose lines at exit.

Field names are stable (README "Observability").  Times are milliseconds; ``time`` is when
the line was written (UTC).  Bodies are never logged unless ``[logging] bodies`` names the
caller's key or tenant; then the request's input text and the response's output text, each
redacted like an upstream error message (configured secrets and key-shaped text) and capped.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from streamgw.app.metrics import added_seconds, outcome, usage_tokens
from streamgw.config import LoggingConfig
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import RequestEntry
from streamgw.errors import redact

__all__ = ["PHASES", "LineSink", "RequestLog", "entry_fields", "format_line", "phases_ms"]

_ASCII_CONTROL = {i: None for i in (*range(0x20), 0x7F) if i not in (0x09,)}


class LineSink:
    """Whole lines to a file descriptor: one ``os.write`` each (``O_APPEND`` for a file)."""

    __slots__ = ("_fd", "_own", "path")

    def __init__(self, path: str = "") -> None:
        """``path``: "" for stderr, else a file opened (created ``0o640``) for appending."""
        self.path = path
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._own = True
        else:
            self._fd = sys.stderr.fileno()
            self._own = False

    def write(self, line: str) -> None:
        """Write ``line`` and a newline; a short write (a full pipe) writes the rest, an error drops the line."""
        data = (line + "\n").encode("utf-8", "replace")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a full disk must not fail the request it describes

    def close(self) -> None:
        if self._own:
            self._own = False
            os.close(self._fd)


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000.0, 1)


#: ``phases_ms``: the steps from the request's arrival to the first write of events, in order
PHASES = ("intake", "parse", "route", "store", "admission", "attempt", "upstream", "first_read", "translate", "emit",
          "write")


def _winner(entry: RequestEntry) -> AttemptRecord | None:
    """The attempt that produced the response's first delta (a hedge that lost may have one too)."""
    answered = [a for a in entry.attempts if a.first_delta_at is not None]
    served = [a for a in answered if a.outcome in ("served", "opened")]
    return served[0] if served else answered[0] if answered else None


def phases_ms(entry: RequestEntry) -> dict[str, float | None]:
    """Where the time to the first event went (``[logging] phases``), in ms, one entry per ``PHASES``.

    Each step ends at a timestamp: the application began (``intake``: the server read the request's head,
    made its stream and started its task; 0 with a server that does not say when the head arrived), the body
    parsed (auth and body read included), the route planned, stored context expanded, admission passed, the
    winning attempt started, its response head, its first delta, the first events built, encoded (the door
    commits), written.  A step whose end is not known
    (no winner, the WebSocket door has no commit, a non-streamed response) is ``null`` and its time counts
    in the next known one, so the known steps always add up to ``ttfe_ms``.
    """
    marks = entry.phases or {}
    winner = _winner(entry)
    ends = (marks.get("began"), marks.get("parsed"), marks.get("planned"), marks.get("expanded"),
            marks.get("admitted"),
            winner.started if winner else None, winner.headers_at if winner else None,
            winner.first_delta_at if winner else None, marks.get("translated"), marks.get("head"),
            entry.first_write_at)
    found: dict[str, float | None] = {}
    last = entry.started
    for name, end in zip(PHASES, ends, strict=True):
        if end is None or end < last:  # unknown, or before the step it follows (a keepalive committed early)
            found[name] = None
            continue
        found[name] = round((end - last) * 1000.0, 3)
        last = end
    return found


def entry_fields(entry: RequestEntry, wall: float, pid: int) -> dict[str, Any]:
    """The log record of one lifecycle request (see README "Observability" for each field)."""
    caller = entry.caller
    key = caller.key if caller is not None else None
    tenant = key.tenant if key is not None else (caller.tenant if caller is not None else "")
    ttfe = None if entry.first_write_at is None else entry.first_write_at - entry.started
    added = added_seconds(entry)
    tin, tout, tcached, treasoning = usage_tokens(entry.usage) if entry.usage else (None, None, None, None)
    terminal, code = outcome(entry)
    started = entry.started
    return {
        "time": _iso(wall),
        "request_id": entry.request_id,
        "kind": "response",
        "door": entry.door,
        "http": entry.http_version or None,
        "key": key.name if key is not None else None,
        "tenant": tenant or None,
        "model": entry.model or None,
        "route": entry.route or None,
        "provider": entry.provider or None,
        "upstream_model": entry.upstream_model or None,
        "status": entry.status,
        "terminal": terminal,
        "error_code": code or None,
        "attempts": [{
            "provider": a.provider, "model": a.model, "kind": a.kind, "outcome": a.outcome or None,
            "status": a.status or None, "start_ms": _ms(started, a.started),
            "headers_ms": _ms(a.started, a.headers_at), "first_delta_ms": _ms(a.started, a.first_delta_at),
            "duration_ms": _ms(a.started, a.ended),
        } for a in entry.attempts],
        "ttfe_ms": None if ttfe is None else round(ttfe * 1000.0, 1),
        "added_ttfe_ms": None if added is None else round(added * 1000.0, 1),
        "max_gap_ms": round(entry.max_gap * 1000.0, 1) if entry.first_write_at is not None else None,
        "duration_ms": _ms(started, entry.ended_at),
        "tokens_in": tin,
        "tokens_out": tout,
        "tokens_cached": tcached,
        "tokens_reasoning": treasoning,
        "bytes_out": entry.bytes_out,
        "client_left": entry.client_left,
        "trace_id": entry.trace.trace_id if entry.trace is not None else None,
        "response_id": entry.response_id or None,
        "worker": pid,
        **({"phases_ms": phases_ms(entry)} if entry.phases is not None else {}),
    }


_second: list[Any] = [-1, ""]  # the last whole second formatted by ``_iso``, and its text


def _iso(wall: float) -> str:
    second = int(wall)
    if second != _second[0]:  # strftime once a second, not once a line
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(wall % 1 * 1000):03d}Z"


#: one encoder for every line (``json.dumps`` with options builds a new one per call)
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: a text value that needs no quotes: printable, no space, quote, equals sign or backslash
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]+')


def format_line(fields: dict[str, Any], fmt: str) -> str:
    """One line: a compact JSON object, or ``time key=value ...`` text (``None`` values left out)."""
    if fmt == "json":
        return _JSON.encode(fields)
    parts = [str(fields.get("time", ""))]
    for name, value in fields.items():
        if value is None or name == "time":
            continue
        kind = type(value)
        if kind is int or kind is float:
            parts.append(f"{name}={value}")
            continue
        if kind is bool:
            parts.append(f"{name}={'true' if value else 'false'}")
            continue
        if name == "attempts":
            if not value:
                continue
            value = ",".join(_attempt_text(a) for a in value)
        elif name == "phases_ms":
            value = ",".join(f"{k}:{'-' if v is None else f'{v:g}'}" for k, v in value.items())
        text = str(value)
        if not _BARE.fullmatch(text) or not text.isprintable():
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{name}={text}")
    return " ".join(parts)


def _attempt_text(a: dict[str, Any]) -> str:
    times = "/".join("-" if a[k] is None else f"{a[k]:g}" for k in ("headers_ms", "first_delta_ms", "duration_ms"))
    return f"{a['provider']}:{a['kind']}:{a['outcome'] or 'running'}:{times}"


def _input_text(entry: RequestEntry) -> str:
    request = entry.request
    if request is None:
        return ""
    parts: list[str] = []
    if request.instructions:
        parts.append(request.instructions)
    for item in request.input:
        _texts(item.get("content"), parts)
        if isinstance(item.get("output"), str):
            parts.append(item["output"])
    return "\n".join(parts)


def _output_text(entry: RequestEntry) -> str:
    response = entry.response
    parts: list[str] = []
    if response is not None:
        for item in response.get("output") or ():
            if isinstance(item, dict):
                _texts(item.get("content"), parts)
                if isinstance(item.get("arguments"), str):
                    parts.append(item["arguments"])
    return "\n".join(parts)


def _texts(content: Any, parts: list[str]) -> None:
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str):
                    parts.append(text)


class RequestLog:
    """The ``RequestObserver`` that writes the request log (and ``route`` for every other HTTP route)."""

    def __init__(self, config: LoggingConfig, secrets: Sequence[str] = (), sink: LineSink | None = None) -> None:
        self.config = config
        self.enabled = config.requests
        self.format = config.format
        self._secrets = tuple(secrets)
        self._bodies = frozenset(config.bodies)
        self._sink = sink if sink is not None or not self.enabled else LineSink(config.file)
        self._pid = os.getpid()

    def opened(self, entry: RequestEntry) -> None:
        """Nothing: the line is written once, when the request ends."""

    def ended(self, entry: RequestEntry) -> None:
        """Write the entry's line."""
        if self._sink is None:
            return
        fields = entry_fields(entry, time.time(), self._pid)
        if self._bodies and self._wants_bodies(entry):
            cap = self.config.body_max_chars
            fields["input"] = self._clean(_input_text(entry), cap)
            fields["output"] = self._clean(_output_text(entry), cap)
        self._sink.write(format_line(fields, self.format))

    def route(self, *, request_id: str, method: str, path: str, status: int, started: float, ended: float,
              http_version: str = "", key: str | None = None, tenant: str | None = None,
              trace_id: str | None = None, bytes_out: int | None = None) -> None:
        """A line for a request outside the lifecycle (``GET /v1/responses/{id}``, ``/v1/models``, ``/metrics``...)."""
        if self._sink is None:
            return
        fields: dict[str, Any] = {
            "time": _iso(time.time()), "request_id": request_id, "kind": "http", "door": "http",
            "http": http_version or None, "method": method, "path": path[:256].translate(_ASCII_CONTROL),
            "key": key, "tenant": tenant, "status": status, "duration_ms": _ms(started, ended),
            "bytes_out": bytes_out, "trace_id": trace_id, "worker": self._pid,
        }
        self._sink.write(format_line(fields, self.format))

    def _wants_bodies(self, entry: RequestEntry) -> bool:
        bodies = self._bodies
        if "*" in bodies:
            return True
        caller = entry.caller
        if caller is None:
            return False
        key = caller.key
        if key is not None and (f"key:{key.name}" in bodies or f"tenant:{key.tenant}" in bodies):
            return True
        tenant = caller.tenant  # an [auth] key's explicit tenant is "t:NAME"
        return tenant.startswith("t:") and f"tenant:{tenant[2:]}" in bodies

    def _clean(self, text: str, cap: int) -> str:
        if not cap:
            return ""
        text = redact(text, self._secrets)  # the whole text: a cut first could leave half a secret
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode()
        return text if len(text) <= cap else text[:cap] + "…"

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()

