"""What the response store keeps, how a record is encoded, and the protocol every backend implements.

A ``StoredResponse`` is one response as ``GET /v1/responses/{id}`` returns it, plus what
continuing it needs: its input items after ``previous_response_id`` expansion (each with an
``id``), where each input item's ``id`` came from (``origins``), and which provider served it.
Provider-specific data (reasoning signatures, thought signatures, tool-call ids) lives inside
the items themselves: ``encrypted_content`` blobs bound to their provider, ``call_id``s.

Every record belongs to the tenant of the gateway key that created it (``owner``; ``""``
without auth).  Another tenant's record reads exactly as a missing one: the service
compares owners on every read, and the item index is kept per tenant, so an item id one
tenant chose can never shadow (or reveal) another tenant's item.

Backends store bytes: the service encodes records (off the event loop) and decodes them.
An item index maps every item a response introduced (its own new input items and its output
items) to where it lives, for ``item_reference`` input items.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streamgw.errors import GatewayError

__all__ = [
    "CLIENT",
    "MINTED",
    "Backend",
    "EncodedRecord",
    "Encoder",
    "ItemPointer",
    "RecordNotEncodable",
    "StoreUnavailable",
    "StoredResponse",
    "decode_record",
    "encode_record",
]

#: origin of an input item whose ``id`` the client sent (kept when replayed to a native upstream)
CLIENT = ""
#: origin of an input item whose ``id`` the gateway minted for storage (never sent upstream)
MINTED = "@gateway"
_VERSION = 1
_STDLIB = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class StoreUnavailable(GatewayError):
    """The response store cannot be reached: reading from it (chaining, GET) fails with 503."""

    status = 503
    type = "provider_error"
    default_code = "store_unavailable"


class RecordNotEncodable(ValueError):
    """A record cannot become JSON bytes (a lone surrogate, nesting too deep, a value JSON has no form for).

    The writer drops that one record (a tombstone says why) and carries on with the others.
    """


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored response.

    ``origins[i]`` says who minted ``input_items[i]["id"]``: ``CLIENT``, ``MINTED`` or the name
    of the provider whose output the item was.  ``index_ids`` are the items this response
    introduced (new input items, output items), which ``item_reference`` can name.
    ``omitted`` is set, and everything else empty, when the record was too large to keep.
    ``owner`` is the tenant the record belongs to (``""``: the anonymous tenant of a gateway
    without keys, and every record written before tenants existed).
    """

    id: str
    response: dict[str, Any]
    input_items: tuple[dict[str, Any], ...] = ()
    origins: tuple[str, ...] = ()
    provider: str = ""
    provider_type: str = ""
    index_ids: tuple[str, ...] = ()
    created_at: float = 0.0
    omitted: str | None = None
    owner: str = ""

    @property
    def status(self) -> str:
        """The response's ``status`` (``in_progress`` while it is still streaming)."""
        return str(self.response.get("status", ""))

    @property
    def output(self) -> list[dict[str, Any]]:
        """The response's output items."""
        output = self.response.get("output")
        return output if isinstance(output, list) else []

    @property
    def upstream_stored(self) -> bool:
        """A native Responses upstream served it and says it stored it: it can chain on its own."""
        return self.provider_type == "openai" and self.response.get("store") is True

    def pointers(self) -> list[ItemPointer]:
        """Where each item of ``index_ids`` lives in this record."""
        wanted = set(self.index_ids)
        found: dict[str, ItemPointer] = {}
        for kind, items in (("input", self.input_items), ("output", self.output)):
            for index, item in enumerate(items):
                item_id = item.get("id")
                if isinstance(item_id, str) and item_id in wanted and item_id not in found:
                    found[item_id] = ItemPointer(item_id, self.id, kind, index)
        return list(found.values())

    def item_at(self, pointer: ItemPointer) -> tuple[dict[str, Any], str] | None:
        """The item a pointer names and the origin of its ``id``; ``None`` if the record has changed."""
        items: Sequence[dict[str, Any]] = self.input_items if pointer.kind == "input" else self.output
        if not 0 <= pointer.index < len(items) or items[pointer.index].get("id") != pointer.item_id:
            return None
        origin = self.origins[pointer.index] if pointer.kind == "input" else self.provider
        return items[pointer.index], origin


@dataclass(frozen=True, slots=True)
class ItemPointer:
    """Where an indexed item lives: ``input_items[index]`` or ``output[index]`` of a response."""

    item_id: str
    response_id: str
    kind: str  # "input" | "output"
    index: int


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready for a backend: its JSON bytes, its expiry, its item pointers and its tenant."""

    id: str
    body: bytes
    expires_at: float | None
    pointers: tuple[ItemPointer, ...] = field(default=())
    owner: str = ""  # the pointers live in this tenant's item index


#: builds a batch of encoded records; blocking (JSON encoding), so backends run it in a worker thread
Encoder = Callable[[], list[EncodedRecord]]


def encode_record(record: StoredResponse) -> bytes:
    """The record as compact UTF-8 JSON; ``RecordNotEncodable`` if it has no such form.

    ``orjson`` first: every stored response is encoded once, and it does so in a sixth of the
    standard library's instructions.  What it refuses (a lone surrogate, nesting over 254
    levels, an integer over 64 bits, a key that is not a string) goes to the standard
    library, which encodes the last three as before and names the failure of the first.
    A NaN or an infinity (from an upstream's non-standard JSON) is stored as ``null``.

    Strict UTF-8: a lone surrogate (which JSON's ``\\ud800`` escape lets a client or an upstream
    send) is refused rather than stored, because a record read back must serialise again.
    The message names the kind of failure only, never the record's content.
    """
    payload = {
        "v": _VERSION, "id": record.id, "response": record.response, "input": record.input_items,
        "origins": record.origins, "provider": record.provider, "provider_type": record.provider_type,
        "index": record.index_ids, "created_at": record.created_at, "omitted": record.omitted,
        "owner": record.owner,
    }
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson.JSONEncodeError: whatever it refuses, the standard library decides (and says why)
        pass
    try:
        return _STDLIB.encode(payload).encode()
    except UnicodeEncodeError as exc:
        raise RecordNotEncodable("it contains invalid Unicode (a lone surrogate)") from exc
    except RecursionError as exc:
        raise RecordNotEncodable("it is nested too deeply") from exc
    except (TypeError, ValueError) as exc:  # a value with no JSON form, a reference cycle
        raise RecordNotEncodable(f"it holds a value JSON cannot represent ({type(exc).__name__})") from exc


def decode_record(body: bytes) -> StoredResponse:
    """The record encoded by ``encode_record``; ``ValueError`` if ``body`` is not one."""
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("v") != _VERSION:
        raise ValueError("not a stored response record")
    owner = data.get("owner", "")  # absent in records written before tenants: the anonymous tenant's
    if not isinstance(owner, str):
        raise ValueError("the record's owner is not a string")
    return StoredResponse(
        id=str(data["id"]), response=dict(data["response"]), input_items=tuple(data["input"]),
        origins=tuple(data["origins"]), provider=str(data["provider"]), provider_type=str(data["provider_type"]),
        index_ids=tuple(data["index"]), created_at=float(data["created_at"]), omitted=data.get("omitted"), owner=owner,
    )


class Backend(Protocol):
    """Where encoded records live.  Every method raises ``StoreUnavailable`` when the store is down.

    Reads ignore expired records.  ``put_many`` replaces records with the same id and
    their item pointers; ``delete`` removes a record and the pointers it wrote.  Item
    pointers live in an index per tenant (``EncodedRecord.owner``); ``get`` does not look
    at owners: the service compares them after decoding, in one place.
    """

    name: str

    async def open(self) -> None:
        """Connect, create files or schema as needed."""
        ...

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        """Store (or replace) every record with its item pointers."""
        ...

    async def write(self, encode: Encoder) -> None:
        """Run ``encode`` in a worker thread (with the write itself, where the driver blocks), store the result."""
        ...

    async def get(self, response_id: str) -> bytes | None:
        """The encoded record, or ``None``."""
        ...

    async def locate(self, item_id: str, owner: str) -> ItemPointer | None:
        """Where the item with this id lives in ``owner``'s item index, or ``None``."""
        ...

    async def delete(self, response_id: str, owner: str) -> bool:
        """Remove ``owner``'s record (the service checked it is theirs) and its pointers; ``False`` if none."""
        ...

    async def purge(self, now: float) -> int:
        """Remove what expired before ``now``; the number of records removed (if known)."""
        ...

    async def check(self) -> None:
        """Raise ``StoreUnavailable`` unless the store can take a write now (the service's health check)."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
