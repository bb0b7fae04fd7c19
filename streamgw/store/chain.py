"""``previous_response_id`` and ``item_reference``: a request's input made whole, once, before any attempt.

``expand`` loads the previous response (one lookup: its stored input already holds its own
chain, every hop of which was checked to be the same tenant's when that response was made),
prepends its input items and output items to the new input, and resolves
``item_reference`` items by item id.  ``instructions`` are the new request's only (as on
OpenAI).  The result serves every dialect:

* translated dialects read ``request.input``, now the whole conversation; a reasoning blob
  minted for another provider is dropped by the dialect (``streamgw.core.blobs``);
* the native Responses dialect sends ``request.raw``: it keeps ``previous_response_id`` when
  every native target of the plan is the provider that served the previous response and that
  upstream stored it; otherwise the chain is rebuilt there too, without
  ``previous_response_id``, without ids the upstream never minted and without reasoning items
  it cannot read.

The ``Expansion`` also carries what will be stored for the new response: the expanded input
with an ``id`` on every item (minted where the client gave none), where each id came from,
and the tenant it will belong to.  Every lookup goes through the store service with the
caller's tenant: a previous response or an item of another tenant is "not found", with the
very message of an id that never existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from streamgw.config import ProviderConfig
from streamgw.core.blobs import PREFIX as BLOB_PREFIX
from streamgw.core.ids import random_hex
from streamgw.core.request import ResponsesRequest
from streamgw.errors import InvalidRequest, NotFound
from streamgw.store.base import CLIENT, MINTED, StoredResponse
from streamgw.store.calls import StoreCall, timed
from streamgw.store.service import StoreService

__all__ = ["Expansion", "Plan", "expand", "names_stored", "native_input", "own_expansion", "record_for"]


class Target(Protocol):
    """One target of a plan, as the expansion sees it: which provider it goes to."""

    @property
    def provider(self) -> ProviderConfig: ...


class Plan(Protocol):
    """Where a request may go (``streamgw.engine.routing.Plan``), as far as the expansion needs to know.

    A protocol, not the engine's class: the store sits below the engine and must not import it.
    """

    @property
    def targets(self) -> Sequence[Target]: ...

Item = dict[str, Any]

_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}


@dataclass(frozen=True, slots=True)
class Expansion:
    """The request the engine runs, and the input to store with its response."""

    request: ResponsesRequest
    items: tuple[Item, ...]  # the expanded input, every item with an ``id``
    origins: tuple[str, ...]  # per item: who minted its id (``CLIENT``, ``MINTED``, a provider name)
    new_ids: tuple[str, ...]  # the items this request introduced (for ``item_reference``)
    owner: str = ""  # the tenant of the caller: the new response's record belongs to it


def _minted(item: Item) -> str:
    return _ID_PREFIXES.get(str(item.get("type")), "item_") + random_hex(24)


def _with_ids(items: Sequence[Item], origins: Sequence[str]) -> tuple[list[Item], list[str], list[str]]:
    """Items with an id each (minted where missing), their origins, and the ids of client items."""
    out: list[Item] = []
    out_origins: list[str] = []
    new_ids: list[str] = []
    for item, origin in zip(items, origins, strict=True):
        if not isinstance(item.get("id"), str):
            item, origin = {**item, "id": _minted(item)}, MINTED
            new_ids.append(item["id"])
        elif origin == CLIENT:
            new_ids.append(item["id"])
        out.append(item)
        out_origins.append(origin)
    return out, out_origins, new_ids


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Previous response with id '{response_id}' not found.", param="previous_response_id",
                    code="previous_response_not_found")


async def _previous(service: StoreService, response_id: str, tenant: str,
                    calls: list[StoreCall] | None = None) -> StoredResponse:
    """``tenant``'s stored previous response, or the 404/400 that says why it cannot be continued."""
    record = await timed(calls, "get", partial(service.get, response_id, tenant))
    param = "previous_response_id"
    if record is None:
        raise _not_found(response_id)
    if record.omitted is not None:
        raise NotFound(f"Previous response with id '{response_id}' cannot be continued: {record.omitted}.",
                       param=param, code="previous_response_not_stored")
    if record.status in ("in_progress", "queued"):
        raise InvalidRequest(f"Previous response with id '{response_id}' is still in progress: wait for it to "
                             "finish before continuing it.", param=param, code="previous_response_in_progress")
    return record


async def _resolved(service: StoreService, request: ResponsesRequest, tenant: str,
                    calls: list[StoreCall] | None = None) -> tuple[list[Item], list[str]]:
    """The request's own input with every ``item_reference`` replaced by the ``tenant``'s item it names."""
    items: list[Item] = []
    origins: list[str] = []
    for index, item in enumerate(request.input):
        if item.get("type") != "item_reference":
            items.append(item)
            origins.append(CLIENT)
            continue
        found = await timed(calls, "item", partial(service.item, str(item["id"]), tenant))
        if found is None:
            raise NotFound(f"Item with id '{item['id']}' not found.", param=f"input[{index}].id",
                           code="item_not_found")
        items.append(found[0])
        origins.append(found[1])
    return items, origins


def native_input(items: Sequence[Item], origins: Sequence[str], provider: str | None) -> list[Item]:
    """Items as a native Responses upstream ``provider`` can take them.

    An id is kept when the client sent it or ``provider`` minted it; any other id means
    nothing upstream and is removed.  Reasoning items are kept only under the same rule and
    without a gateway blob: another provider's reasoning cannot be replayed there.
    """
    out: list[Item] = []
    for item, origin in zip(items, origins, strict=True):
        keep_id = origin == CLIENT or (provider is not None and origin == provider)
        if item.get("type") == "reasoning":
            blob = item.get("encrypted_content")
            if not keep_id or (isinstance(blob, str) and blob.startswith(BLOB_PREFIX)):
                continue
        if not keep_id and "id" in item:
            item = {key: value for key, value in item.items() if key != "id"}
        out.append(item)
    return out


def _native_raw(request: ResponsesRequest, plan: Plan, previous: StoredResponse | None, items: Sequence[Item],
                origins: Sequence[str], own: int, references: bool) -> dict[str, Any]:
    """``raw`` for native targets: the id forwarded when the upstream holds the chain, else the chain itself."""
    native = {target.provider.name for target in plan.targets if target.provider.type == "openai"}
    if not native:
        return request.raw
    only = next(iter(native)) if len(native) == 1 else None
    if previous is not None and previous.upstream_stored and only == previous.provider:
        if not references:
            return request.raw  # the client's body as it came: the upstream resolves its own chain
        return {**request.raw, "input": native_input(items[own:], origins[own:], only)}
    raw = {key: value for key, value in request.raw.items() if key != "previous_response_id"}
    raw["input"] = native_input(items, origins, only)
    return raw


def _forwardable(plan: Plan) -> bool:
    """Every target is a native Responses upstream: with no store of ours, it is the judge of the id."""
    return all(target.provider.type == "openai" for target in plan.targets)


def names_stored(request: ResponsesRequest) -> bool:
    """Whether ``request`` names a stored response or item (``previous_response_id``, ``item_reference``):
    only then may ``expand`` look anything up; otherwise its expansion is ``own_expansion``."""
    return request.previous_response_id is not None or any(
        item.get("type") == "item_reference" for item in request.input)


def own_expansion(request: ResponsesRequest, tenant: str) -> Expansion:
    """The expansion of a request that names nothing stored: its own input, an id minted for each item without one."""
    items, origins, new_ids = _with_ids(request.input, [CLIENT] * len(request.input))
    return Expansion(request, tuple(items), tuple(origins), tuple(new_ids), tenant)


async def expand(request: ResponsesRequest, plan: Plan, service: StoreService,
                 local: Mapping[str, StoredResponse] | None = None, *, tenant: str,
                 sole_tenant: bool = False, calls: list[StoreCall] | None = None) -> Expansion:
    """Expand ``previous_response_id`` and ``item_reference`` items for ``plan``, as ``tenant`` sees the store.

    ``local`` is a source of responses consulted before the store (a WebSocket connection's
    last response, kept even with ``store: false`` or the store disabled); when it is given,
    an id found in neither is ``previous_response_not_found`` even with the store disabled.

    ``sole_tenant`` says every key of the gateway is this one tenant: only then, with the store
    disabled, may a native upstream resolve the ids itself — it holds every tenant's responses
    under the same upstream credential and cannot tell them apart.

    Raises ``NotFound`` (param ``previous_response_id`` or ``input[i].id``), ``InvalidRequest``
    when the previous response is still in progress or the store is disabled, and
    ``StoreUnavailable`` when the store cannot be read.  ``calls`` (tracing) receives each lookup, timed.
    """
    chained = request.previous_response_id is not None
    references = any(item.get("type") == "item_reference" for item in request.input)
    held = local.get(request.previous_response_id) if local and request.previous_response_id else None
    missing = chained and held is None
    if not service.enabled and (missing or references) and not (sole_tenant and _forwardable(plan)):
        if missing and local is not None:
            raise _not_found(str(request.previous_response_id))
        tenants = "" if sole_tenant else " and its keys belong to more than one tenant"
        raise InvalidRequest(f"This gateway keeps no responses ([store] backend = \"none\"){tenants}: "
                             "previous_response_id and item_reference cannot be used.",
                             param="previous_response_id" if missing else "input", code="store_disabled")
    if held is None and (not service.enabled or not (chained or references)):
        return own_expansion(request, tenant)
    previous = held
    if previous is None and request.previous_response_id is not None:
        previous = await _previous(service, request.previous_response_id, tenant, calls)
    prefix: list[Item] = []
    prefix_origins: list[str] = []
    if previous is not None:
        prefix = [*previous.input_items, *previous.output]
        prefix_origins = [*previous.origins, *[previous.provider] * len(previous.output)]
    if service.enabled:
        own, own_origins = await _resolved(service, request, tenant, calls)
    else:  # only a forwardable plan gets here with references: its upstream resolves them
        own, own_origins = list(request.input), [CLIENT] * len(request.input)
    items, origins = [*prefix, *own], [*prefix_origins, *own_origins]
    raw = _native_raw(request, plan, previous, items, origins, len(prefix), references)
    expanded = dataclasses.replace(request, input=tuple(items), raw=raw)
    stored, stored_origins, new_ids = _with_ids(own, own_origins)
    return Expansion(expanded, (*prefix, *stored), (*prefix_origins, *stored_origins), tuple(new_ids), tenant)


def record_for(expansion: Expansion, response: dict[str, Any], provider: str, provider_type: str,
               created_at: float) -> StoredResponse:
    """The record of ``response`` (a snapshot or the final object) for this expansion."""
    output = response.get("output")
    output_ids = [item["id"] for item in output if isinstance(item.get("id"), str)] if isinstance(output, list) else []
    return StoredResponse(
        id=str(response["id"]), response=response, input_items=expansion.items, origins=expansion.origins,
        provider=provider, provider_type=provider_type, index_ids=(*expansion.new_ids, *output_ids),
        created_at=created_at, owner=expansion.owner,
    )
