"""Request-building and stream helpers every dialect shares.

Each dialect turns Responses input items into its own wire shape, but some answers
are the same everywhere: how input items are walked and a refusal is raised, that
stored items cannot be resolved yet, the upstream headers, how a token count from
upstream JSON is read, and the shape of the call ids minted for calls an upstream gave
no usable id.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from streamgw.core.jsontext import dumps_compact
from streamgw.errors import InvalidRequest
from streamgw.providers.base import UpstreamRequest

if TYPE_CHECKING:
    from streamgw.config import ProviderConfig
    from streamgw.core.request import ResponsesRequest

__all__ = [
    "InputItems",
    "item_reference",
    "json_post",
    "mint_call_id",
    "reject",
    "sampling_fields",
    "token_count",
    "upstream_headers",
]

_CALL_ID_ALPHABET = string.ascii_letters + string.digits
_RANDOM = random.SystemRandom()


def reject(param: str, message: str, code: str = "unsupported_parameter") -> NoReturn:
    """Refuse the request with a 400 naming ``param`` (``unsupported_parameter`` unless told)."""
    raise InvalidRequest(message, param=param, code=code)


def item_reference(state: object, item: dict[str, Any], param: str) -> NoReturn:
    """An ``item_reference`` input item: refused, no dialect can resolve stored items itself.

    ``state`` (the dialect's builder state) is taken so this fits every dialect's item table.
    """
    reject(
        param,
        f"item_reference {item['id']!r} cannot be resolved: stored items are not available "
        "to this provider yet. Send the item itself.",
        "invalid_value",
    )


def mint_call_id() -> str:
    """A fresh ``call_`` + 24 random alphanumerics, for calls the upstream gave no usable id."""
    return "call_" + "".join(_RANDOM.choices(_CALL_ID_ALPHABET, k=24))


def token_count(value: object) -> int:
    """A token count from upstream JSON; anything that is not a finite number counts as 0.

    Booleans are not counts (``type(...) is int``); NaN and Infinity are valid to ``json.loads``.
    """
    if type(value) is int:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


S = TypeVar("S")
#: ``(builder state, input item, its param path)``: adds one item to the state or rejects it
ItemHandler = Callable[[S, dict[str, Any], str], None]


class InputItems(Generic[S]):
    """The Responses input items, each handed to the dialect's handler for its type (and role).

    ``developer`` messages are system messages everywhere; ``item_reference`` is refused.
    """

    __slots__ = ("_items", "_roles")

    def __init__(
        self,
        *,
        user: ItemHandler[S],
        system: ItemHandler[S],
        assistant: ItemHandler[S],
        function_call: ItemHandler[S],
        function_call_output: ItemHandler[S],
        reasoning: ItemHandler[S],
    ) -> None:
        """One handler per message role and per other item type."""
        self._roles = {"user": user, "system": system, "developer": system, "assistant": assistant}
        self._items: dict[str, ItemHandler[S]] = {
            "function_call": function_call,
            "function_call_output": function_call_output,
            "reasoning": reasoning,
            "item_reference": item_reference,
        }

    def add(self, state: S, items: Sequence[dict[str, Any]]) -> None:
        """Hand every item (validated by ``parse_request``) to its handler, in order."""
        for i, item in enumerate(items):
            kind = item["type"]
            if kind == "message":
                self._roles[item["role"]](state, item, f"input[{i}]")
            else:
                self._items[kind](state, item, f"input[{i}]")


def upstream_headers(
    provider: ProviderConfig,
    *,
    accept: str | None,
    key_header: str = "authorization",
    key_prefix: str = "Bearer ",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of an upstream request: JSON body, ``accept``, the key, then the provider's own.

    ``accept-encoding: identity``: the stream must reach the translator as it is produced.
    The provider's configured headers come last, so they may override any of ours.
    """
    headers = {"content-type": "application/json"}
    if accept is not None:
        headers["accept"] = accept
    headers["accept-encoding"] = "identity"
    headers |= extra or {}
    key = provider.api_key.get()
    if key:  # a local server (Ollama, vLLM) may have none
        headers[key_header] = key_prefix + key
    for name, value in provider.headers:
        headers[name.lower()] = value
    return headers


def json_post(url: str, headers: dict[str, str], body: dict[str, Any]) -> UpstreamRequest:
    """A ``POST`` of ``body`` as compact UTF-8 JSON (non-ASCII text kept as is)."""
    encoded = dumps_compact(body).encode()
    return UpstreamRequest(method="POST", url=url, headers=headers, body=encoded)


def sampling_fields(
    request: ResponsesRequest, *, temperature: str, top_p: str, max_output_tokens: str, stop: str
) -> dict[str, Any]:
    """The sampling settings the request makes, under the upstream's names (``stop`` as a list)."""
    values = (
        (temperature, request.temperature),
        (top_p, request.top_p),
        (max_output_tokens, request.max_output_tokens),
    )
    fields: dict[str, Any] = {name: value for name, value in values if value is not None}
    if request.stop:
        fields[stop] = list(request.stop)
    return fields
