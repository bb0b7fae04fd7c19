"""The neutral delta vocabulary.

Every provider translator turns its upstream frames into these values and nothing
else; the emitter (``streamgw.core.emitter``) turns them into Responses events.  A
translator never decides ids, indices or sequence numbers.

Tool calls are keyed by ``key``: an opaque per-stream identifier the translator
chooses (the Chat Completions ``index``, the Anthropic block index, ...).  Several
calls may be open at once upstream; the emitter serialises them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A fragment of visible assistant text."""

    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """A fragment of a refusal message."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A fragment of reasoning text (summaries or raw thinking)."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningSignature:
    """Opaque data that must travel back with the reasoning item on the next turn."""

    encrypted_content: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A function call begins; ``call_id`` is the upstream id (or one we minted)."""

    key: int | str
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    """A fragment of a function call's JSON arguments."""

    key: int | str
    fragment: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The function call keyed ``key`` is complete."""

    key: int | str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting in Responses terms (each dialect's ``_usage`` maps its upstream's counts)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def as_response_usage(self) -> dict[str, object]:
        """The ``usage`` object of a Responses response; total is always input + output."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {
                "cache_write_tokens": self.cache_write_tokens,
                "cached_tokens": self.cached_tokens,
            },
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


class FinishReason(enum.Enum):
    """How the upstream ended the turn, normalised (each dialect's stop-reason table maps onto it)."""

    COMPLETED = "completed"
    MAX_OUTPUT_TOKENS = "max_output_tokens"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class Finish:
    """The upstream reported why it stopped."""

    reason: FinishReason


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """The upstream failed mid-stream.

    ``code`` is a Responses error code (``server_error``, ``rate_limit_exceeded``,
    ``invalid_prompt``, or a gateway code such as ``upstream_idle_timeout``).
    """

    code: str
    message: str


Delta = (
    TextDelta
    | RefusalDelta
    | ReasoningDelta
    | ReasoningSignature
    | ToolCallStart
    | ToolCallArgs
    | ToolCallEnd
    | Usage
    | Finish
    | UpstreamFailure
)
