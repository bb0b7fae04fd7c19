"""What every mock upstream shares: serving, the request log, model-string knobs and the CLI.

A mock subclasses ``MockUpstream`` and implements ``handle`` (its dialect's wire behaviour);
``parse_knobs`` reads ``name:k=v,...`` model strings; ``mock_arguments`` and
``run_until_signal`` make its ``python -m streamgw.testing.<name>_mock`` command, which
prints ``LISTENING <port>`` once bound and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from streamgw.testing.server import MockRequest, MockServerStats, Responder, serve_http, serving_in_thread

__all__ = [
    "KnobOutOfRange",
    "Knobs",
    "MockUpstream",
    "anything",
    "base_knob_parsers",
    "bearer_token",
    "dumps",
    "in_range",
    "mock_arguments",
    "models_list_body",
    "non_negative",
    "non_negative_float",
    "non_negative_int",
    "parse_knobs",
    "run_until_signal",
]


def dumps(obj: object) -> bytes:
    """Compact JSON, non-ASCII text kept as is (what the real APIs send)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def models_list_body(names: Sequence[str]) -> bytes:
    """An OpenAI-style ``GET /models`` list naming ``names``."""
    data = [{"id": n, "object": "model", "created": 1700000000, "owned_by": "streamgw-mock"} for n in names]
    return dumps({"object": "list", "data": data})


# ------------------------------------------------------------------------------ model-string knobs


@dataclass(frozen=True)
class Knobs:
    """Per-request behaviour every mock has; a mock's knobs subclass this with its own.

    The defaults are the mock's; a request overrides them through its model string.
    """

    ttft: float = 0.0
    token_delay: float = 0.0
    tokens: int = 20
    #: text of text delta ``i``; ``{i}`` is replaced by the delta number
    token_text: str = "tok{i} "

    def text(self, i: int) -> str:
        """Text of text delta ``i``."""
        return self.token_text.replace("{i}", str(i))


class KnobOutOfRange(ValueError):
    """A knob value that parsed but is outside the knob's range."""


def non_negative(value: float) -> bool:
    """``value >= 0``."""
    return value >= 0


def anything(value: object) -> bool:
    """Every value is in range."""
    return True


def in_range(convert: Callable[[str], Any], valid: Callable[[Any], bool]) -> Callable[[str], Any]:
    """A knob parser: ``convert``, then ``KnobOutOfRange`` unless ``valid``."""
    def parse(raw: str) -> Any:
        value = convert(raw)
        if not valid(value):
            raise KnobOutOfRange(raw)
        return value
    return parse


def non_negative_float(raw: str) -> float:
    """A float >= 0 (``ValueError`` otherwise)."""
    value = float(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def non_negative_int(raw: str) -> int:
    """An int >= 0 (``ValueError`` otherwise)."""
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def base_knob_parsers(*, range_errors: bool = True) -> dict[str, Callable[[str], Any]]:
    """Parsers of the ``Knobs`` fields; a negative number is out of range (else a bad value)."""
    floats = in_range(float, non_negative) if range_errors else non_negative_float
    ints = in_range(int, non_negative) if range_errors else non_negative_int
    return {"ttft": floats, "token_delay": floats, "tokens": ints, "token_text": str}


def parse_knobs(model: str, parsers: Mapping[str, Callable[[str], Any]]) -> tuple[str, dict[str, Any]]:
    """Split ``name:k=v,k=v`` into the name and typed knob overrides.

    A suffix that is not all ``k=v`` pairs is part of the name (``llama3.2:3b``).  Raises
    ``ValueError`` for an unknown knob or a bad (or out-of-range) value.
    """
    name, sep, rest = model.partition(":")
    items = rest.split(",") if sep else []
    if not items or not all("=" in item for item in items):
        return model, {}
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, raw = (part.strip() for part in item.partition("="))
        if key not in parsers:
            raise ValueError(f"unknown mock knob {key!r}; known: {', '.join(parsers)}")
        try:
            overrides[key] = parsers[key](raw)
        except KnobOutOfRange:
            raise ValueError(f"value {raw!r} out of range for mock knob {key!r}") from None
        except ValueError:
            raise ValueError(f"bad value {raw!r} for mock knob {key!r}") from None
    return name, overrides


# ------------------------------------------------------------------------------------- serving


def bearer_token(req: MockRequest) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (any case of ``Bearer``), else ``None``."""
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class MockUpstream:
    """Base of the mock upstreams: the request log, the server counters and serving.

    Every request received should be appended to ``requests`` by ``handle``; ``stats`` are the
    server counters once it is served with ``serve`` or ``serving_in_thread`` (or
    ``serve_http(mock.handle, stats=mock.stats)``).
    """

    def __init__(self, *, api_key: str | None = None) -> None:
        """``api_key``: the key the mock requires (``None``: any or none)."""
        self.api_key = api_key
        self.requests: list[MockRequest] = []
        self.stats = MockServerStats()

    async def handle(self, req: MockRequest, send: Responder) -> None:
        """Answer one request (the dialect's wire behaviour)."""
        raise NotImplementedError

    async def serve(
        self, *, host: str = "127.0.0.1", port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve this mock until cancelled; reports the bound port via ``task_status``."""
        await serve_http(self.handle, host=host, port=port, stats=self.stats, task_status=task_status)

    @contextmanager
    def serving_in_thread(self, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
        """Serve this mock from a daemon thread; yields the bound port."""
        with serving_in_thread(lambda: self.handle, host=host, port=port, stats=self.stats) as bound:
            yield bound


# ----------------------------------------------------------------------------------------- CLI


def mock_arguments(module: str, description: str, *, unit: str, first: str | None = None, tokens: int = 20,
                   key_help: str = "require Authorization: Bearer KEY") -> argparse.ArgumentParser:
    """The options every mock's command takes; ``unit`` names what ``--tokens`` counts."""
    parser = argparse.ArgumentParser(prog=f"python -m streamgw.testing.{module}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.0, help=f"seconds before {first or 'the first ' + unit}")
    parser.add_argument("--token-delay", type=float, default=0.0, help=f"seconds between {unit}s")
    parser.add_argument("--tokens", type=int, default=tokens, help=f"text {unit}s per answer")
    parser.add_argument("--token-text", default="tok{i} ", help=f"text of {unit} {{i}}")
    parser.add_argument("--api-key", default=None, help=key_help)
    return parser


async def _serve_until_signal(mock: MockUpstream, host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(mock.serve, host=host, port=port))
            print(f"LISTENING {bound}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def run_until_signal(mock: MockUpstream, host: str, port: int) -> int:
    """Serve ``mock`` until SIGINT/SIGTERM, printing ``LISTENING <port>`` once bound; returns 0."""
    trio.run(_serve_until_signal, mock, host, port)
    return 0
