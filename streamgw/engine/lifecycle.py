"""The response lifecycle: one request from "who asked for what" to the last byte, for every front door.

A front door (SSE and JSON over HTTP/1.1 and h2, WebSocket mode) parses its input, then::

    async with open_response(responses, caller, request, door="sse", request_id=rid) as live:
        await live.stream(deliver)        # or: final = await live.collect()

and only encodes and writes.  Entering does, in order, everything that can still end with an
HTTP status: resolve the route, expand stored context (only ever the caller's tenant), admit
the request (``AdmissionRule``s: where per-key limits and budgets plug in; each may return an
``Admission`` whose headers every answer carries, ``live.headers``, and whose ``settle`` runs when
the request ends), open attempts until one produced its first delta.  ``stream`` drives the one
loop and writes the store before the client can see the terminal event.  Leaving closes the
upstream (shielded, bounded), records the final object in the store, settles the admissions (a
stream slot released, the tokens and cost the response used counted: this is the one way a rule
learns how a request ended), and hands the request-log entry to the ``RequestObserver`` (metrics,
usage) however the block ends: a clean end, an error, or the client leaving (cancellation).

What the first byte does not need waits until the first events are delivered: the observers' ``opened``,
and for a request that names nothing stored its expansion (ids for its input items) and store recorder.

Errors leave the block as ``GatewayError`` only: a bug of ours becomes ``internal_error`` here,
logged once.  The sink renders it with ``failure_events`` when it already committed to a stream,
else as its own "before commit" answer (an HTTP error envelope, a WebSocket error frame).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol

import trio

from streamgw.config import KeyPolicy, Timeouts
from streamgw.core.emitter import ResponseEmitter
from streamgw.core.ids import random_hex
from streamgw.core.request import ResponsesRequest, echo_fields
from streamgw.core.tracecontext import TraceParent, new_span_id
from streamgw.engine.attempt import AttemptRecord, EngineContext
from streamgw.engine.recording import Recorder
from streamgw.engine.routing import Plan, Router
from streamgw.engine.run import ResponseRun
from streamgw.errors import GatewayError, internal_error
from streamgw.store.base import StoredResponse
from streamgw.store.calls import StoreCall
from streamgw.store.chain import Expansion, expand, names_stored, own_expansion, record_for
from streamgw.store.service import StoreService

log = logging.getLogger("streamgw")

#: seconds the upstream gets to close (or drain after a clean end) when a response ends
CLOSE_GRACE = 5.0
#: a client's ``x-request-id`` that is kept (anything else is replaced by a minted id)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(header: str | None) -> str:
    """The client's ``x-request-id`` when it is well-formed, else a new ``req_<hex>``."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return "req_" + random_hex(16)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the tenant its stored responses belong to, and which key it used.

    ``key_index`` indexes ``Config.auth_keys`` (``None`` without auth, or for a key that is not
    there); ``key`` is the key's identity and policy (``None``: an anonymous caller).
    """

    tenant: str
    key_index: int | None = None
    key: KeyPolicy | None = None


#: every caller of a gateway without keys: one tenant, as before tenants existed
ANONYMOUS = Caller("")


class Admission(Protocol):
    """A rule's admission of one request: what every answer to it carries, and what its end settles."""

    #: response headers for the request's answer, whatever it is (200 JSON, SSE, an error)
    headers: Mapping[str, str]

    async def settle(self, entry: RequestEntry) -> None:
        """The request ended (``entry`` is complete: usage, terminal, status); called once, shielded."""
        ...


class AdmissionRule(Protocol):
    """One check a request passes before any upstream is contacted (per-key limits, budgets, ...).

    ``admit`` returns ``None`` (nothing to settle) or an ``Admission``, whose ``settle`` the
    lifecycle awaits when the request ends however it ends (completed, failed, the client gone,
    refused by a later rule), before the ``RequestObserver`` sees the entry.  ``headers`` are
    what an answer that never reached admission carries (an unknown model, a bad body).
    """

    async def admit(self, caller: Caller, request: ResponsesRequest, plan: Plan) -> Admission | None:
        """Return to let the request in; raise a ``GatewayError`` (429, 403, ...) to refuse it."""
        ...

    async def headers(self, caller: Caller, model: str) -> Mapping[str, str]:
        """The headers of an answer to ``caller`` that did not pass admission (read-only; ``{}`` for none)."""
        ...


@dataclass(slots=True)
class RequestEntry:
    """The request-log entry of one ``POST /v1/responses`` or ``response.create``."""

    request_id: str
    door: str  # "sse" | "json" | "websocket"
    caller: Caller | None
    started: float
    #: the metrics label: the route's name, or the provider's (``none`` before it was known)
    label: str = "none"
    #: the HTTP(-like) status the client got; 0: the client left before any answer
    status: int = 0
    #: the error that ended it (``None``: none), and whether it counts as an upstream error
    error: GatewayError | None = None
    #: when the run opened (its first delta arrived) and ended; ``None``: it never did
    first_delta_at: float | None = None
    ended_at: float | None = None
    #: the response reached its terminal event; ``False`` after open: the client left mid-way
    finished: bool = False
    streamed: bool = True
    #: the model the client asked for (a model, a route, or ``provider/model``)
    model: str = ""
    #: every upstream attempt, in the order they started (fallbacks, retries, hedges)
    attempts: list[AttemptRecord] = field(default_factory=list)
    #: the provider and upstream model that served it ("": none did)
    provider: str = ""
    upstream_model: str = ""
    #: the response's terminal status: completed | incomplete | failed ("": it never had one)
    terminal: str = ""
    #: the response's ``usage`` object when it had one (input_tokens, output_tokens, *_details, ...)
    usage: dict[str, Any] | None = None
    #: bytes written to the client for this response (the door counts them; 0: not counted)
    bytes_out: int = 0
    #: the client's W3C trace context (``traceparent``), ``None`` when it sent none (or a malformed one);
    #: with tracing on, the trace the request belongs to (a new one, ``parent_id`` "", when the client sent none)
    trace: TraceParent | None = None
    #: the route asked for ("": a plain model or ``provider/model``)
    route: str = ""
    #: the HTTP version of the client's connection, from the ASGI scope ("1.1", "2"; "": not known)
    http_version: str = ""
    #: the response's id (``resp_...``) once it ran ("": none)
    response_id: str = ""
    #: the door sent its 200 before the run opened (an SSE keepalive): an error then ends the
    #: stream with ``response.failed``, the client's status stays 200
    committed: bool = False
    #: the door's first write of events to the client, and the longest pause between two writes
    #: of events (the door sets both; ``None`` / 0: not written, or not counted)
    first_write_at: float | None = None
    max_gap: float = 0.0
    #: the request and the final response object, kept only until the observers saw the entry
    #: (the request log reads their text when an operator opted in to bodies)
    request: ResponsesRequest | None = None
    response: dict[str, Any] | None = None
    _last_write: float | None = field(default=None, init=False, repr=False)
    #: tracing on: this request's (server) span id, and its store calls; "" and ``None`` with tracing off
    span_id: str = ""
    store_calls: list[StoreCall] | None = None
    #: ``[logging] phases``: when each step before the first event ended, by name (``mark``); ``None``: off
    phases: dict[str, float] | None = None

    @property
    def client_left(self) -> bool:
        """The client went away before the response ended (it never saw its terminal event).

        Meaningful once the request ended: no terminal event and no error means the work was cancelled.
        """
        return self.ended_at is not None and not self.finished and self.error is None

    def mark(self, step: str) -> None:
        """``step`` ended now (``[logging] phases``; nothing, not even a clock read, when off)."""
        if self.phases is not None:
            self.phases[step] = trio.current_time()

    def wrote(self, now: float) -> None:
        """The door wrote a batch of events at ``now`` (``trio.current_time``): first write and longest gap."""
        last = self._last_write
        if last is None:
            self.first_write_at = now
        elif now - last > self.max_gap:
            self.max_gap = now - last
        self._last_write = now


class TraceStarter(Protocol):
    """Tracing (``streamgw.app.tracing``), as the lifecycle sees it: where a request's trace begins."""

    def start(self, trace: TraceParent | None) -> TraceParent:
        """The trace a request joins: the client's, or a new one; ``sampled`` is the sampler's decision."""
        ...


class RequestObserver(Protocol):
    """Sees every request of the lifecycle: metrics, and the request log."""

    def opened(self, entry: RequestEntry) -> None:
        """A response is now running: it produced its first delta, and its first events were delivered (or it
        ended before they could be: then just before ``ended``)."""
        ...

    def ended(self, entry: RequestEntry) -> None:
        """The request is over, whatever the outcome; called once per request."""
        ...


@dataclass(slots=True)
class Responses:
    """What every response shares: the composition the lifecycle runs on."""

    router: Router
    engine: EngineContext
    store: StoreService
    observer: RequestObserver
    #: one tenant for every caller: without a store, a native upstream may then resolve ids itself
    sole_tenant: bool = True
    #: checked in order before any upstream is contacted
    admission: Sequence[AdmissionRule] = field(default_factory=tuple)
    #: tracing (``None``: off, and then no trace id, span id or store-call timing is made per request)
    tracing: TraceStarter | None = None
    #: ``[logging] phases``: every entry times the steps before its first event (``RequestEntry.mark``)
    phases: bool = False

    async def headers(self, caller: Caller, model: str = "") -> dict[str, str]:
        """What an answer to ``caller`` carries outside an admitted request (every rule's ``headers``)."""
        merged: dict[str, str] = {}
        for rule in self.admission:
            merged.update(await rule.headers(caller, model))
        return merged

    def refused(self, door: str, request_id: str, error: GatewayError, caller: Caller | None = None,
                trace: TraceParent | None = None, *, started: float | None = None, http_version: str = "",
                bytes_out: int = 0) -> None:
        """Log a request refused before it reached the lifecycle (bad key, bad body)."""
        now = trio.current_time()
        entry = RequestEntry(request_id, door, caller, now if started is None else started, status=error.status,
                             error=error, trace=trace, http_version=http_version, bytes_out=bytes_out)
        entry.ended_at = now
        self.observer.ended(entry)


def failure_events(request: ResponsesRequest, error: GatewayError, run: ResponseRun | None = None) -> list[Any]:
    """The end of a stream already committed to: ``response.failed`` for ``error``.

    With a running response its own emitter fails (sequence numbers go on); without one
    (a keepalive committed the stream before any attempt succeeded) a whole
    created / in_progress / failed sequence of its own.
    """
    code = error.code or error.stream_code
    if run is not None:
        return run.emitter.fail(code, error.message)
    emitter = ResponseEmitter(model=request.model, provider="none", echo=echo_fields(request))
    return emitter.start() + emitter.fail(code, error.message)


def keepalive_of(plan: Plan, timeouts: Timeouts) -> float:
    """The keepalive interval before the first delta: the shortest of the plan's targets (0: off).

    Each target's is global < provider < route, as every timeout is (``Timeouts.merged``).
    """
    route = plan.route.timeouts if plan.route else ()
    found = [timeouts.merged(t.provider.timeouts, route).keepalive for t in plan.targets]
    return min((k for k in found if k > 0), default=0.0)


class LiveResponse:
    """One request in the lifecycle; ``open_response`` makes it, ``async with`` runs it."""

    def __init__(self, responses: Responses, caller: Caller, request: ResponsesRequest, *, door: str,
                 request_id: str, started: float | None = None,
                 local: Mapping[str, StoredResponse] | None = None, trace: TraceParent | None = None) -> None:
        self.responses = responses
        self.caller = caller
        self.request = request
        self.entry = RequestEntry(request_id, door, caller, trio.current_time() if started is None else started,
                                  streamed=request.stream, model=request.model, trace=trace, request=request)
        if responses.phases:  # the door read and parsed the body just before
            self.entry.phases = {"parsed": trio.current_time()}
        self._local = local
        #: what the upstream ``traceparent`` continues (``None``: tracing is off)
        self._trace: TraceParent | None = None
        if responses.tracing is not None:
            self._trace = self.entry.trace = responses.tracing.start(trace)
            self.entry.span_id = new_span_id()
            self.entry.store_calls = []
        self.run: ResponseRun | None = None
        self.expansion: Expansion | None = None
        self._own_expansion = False  # ``expansion`` is the request's own input with ids minted (``_expanded``)
        self._recorder: Recorder | None = None
        #: while a stored response streams: the door's delivery, which ``_recorded`` wraps
        self._deliver: Callable[[list[Any]], Awaitable[None]] | None = None
        self._record_since: float | None = None  # the response is to be stored; when it was asked for
        self._refused: GatewayError | None = None
        self.plan: Plan | None = None
        #: headers for the answer from admission (rate-limit state); complete once entered, or after an error
        self.headers: dict[str, str] = {}
        self._admissions: tuple[Admission, ...] = ()  # (a tuple: most requests have none, and an empty one is free)
        self._admitting = False  # admission started (its refusal carries its own headers)
        #: the SSE keepalive interval (0: off): known as soon as the route is, the winner's once open
        self.keepalive = 0.0
        #: set by a door that renders errors after the block: the observers then see the entry at
        #: ``release`` (so that the error's bytes and time count), not when the block ends
        self.hold = False
        self._exited = False
        self._notified = False
        self._announced = False  # the observers heard of the opened run
        allowed = caller.key.models if caller.key is not None else ()
        try:  # resolved now, so a sink knows the keepalive before it enters; a key's allowed models apply
            self.plan = plan = responses.router.plan_for(request.model, request.provider, allowed)
        except GatewayError as error:
            self._refused = error
        else:
            self.entry.mark("planned")
            self.entry.label = plan.targets[0].provider.name if plan.route is None else plan.route.name
            self.entry.route = "" if plan.route is None else plan.route.name
            if request.stream:
                self.keepalive = keepalive_of(plan, responses.engine.timeouts)

    def _drop_raw(self) -> None:
        """Forget the body's JSON (``raw``) once the upstream request is made from it (``ResponseRun.open``);
        done after the first events went out.

        Only a native upstream's request is built from ``raw``, and no attempt starts after the run opens;
        the parsed fields (the echo, the store's input items, the request log) stay.  An answer that streams
        for minutes need not hold the body twice.  Likewise its input: a response to be stored has its own
        expansion by now (its items with ids minted: copies of those the client sent without one), and the
        request holds those items instead of the client's (a conversation is then held once, not twice).
        """
        request, original = self.request, self.entry.request
        changes: dict[str, Any] = {"raw": {}} if request.raw else {}
        expansion = self.expansion
        if self._own_expansion and expansion is not None and expansion.request is request:
            changes["input"] = expansion.items  # the same items (the ids aside), in the same order
        if changes:
            self.request = slim = replace(request, **changes)
            if expansion is not None and expansion.request is request:
                self.expansion = replace(expansion, request=slim)
            if original is request:
                self.entry.request = slim
        if original is not None and original is not request and original.raw:
            self.entry.request = replace(original, raw={})

    def _expanded(self) -> Expansion:
        """The request's expansion, made now if ``_open`` left it for later (a request naming nothing stored)."""
        if self.expansion is None:
            self.expansion = own_expansion(self.request, self.caller.tenant)
            self._own_expansion = True
        return self.expansion

    def _slim(self) -> Recorder | None:
        """After the first events: the request slimmed (``_drop_raw``), then the store's recorder (``None``: not
        stored), made with the slimmed request's expansion."""
        if self._record_since is not None:
            self._expanded()
        self._drop_raw()
        return self._recording()

    def _recording(self) -> Recorder | None:
        """The store's recorder of this response (``None``: it is not stored), made on first use."""
        if self._recorder is None and self._record_since is not None:
            self._recorder = Recorder(self.responses.store, self._expanded(), self.entry.store_calls,
                                      created_at=self._record_since)
        return self._recorder

    @property
    def done(self) -> bool:
        """The terminal event was produced."""
        return self.run is not None and self.run.done

    @property
    def initial(self) -> Sequence[Any]:
        """The first events (``response.created`` ... the first delta's), before ``stream``."""
        return () if self.run is None else self.run.initial

    async def __aenter__(self) -> LiveResponse:
        try:
            await self._open()
        except BaseException as exc:
            await self._exit(exc)
            mapped = self._mapped(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        await self._exit(exc)
        if exc is None or isinstance(exc, GatewayError) or not isinstance(exc, Exception):
            return False  # propagate (a cancellation, or an error already ours)
        raise self._mapped(exc) from exc

    async def _open(self) -> None:
        if self._refused is not None:
            raise self._refused
        assert self.plan is not None
        responses, request, plan = self.responses, self.request, self.plan
        # previous_response_id, item_reference: once, for all, and only ever the tenant's own responses.  A
        # request that names nothing stored runs as it is: its expansion (the ids of its input items, for the
        # store) is made when first needed, after its first events (``_expanded``).
        if names_stored(request):
            self.expansion = await expand(request, plan, responses.store, self._local, tenant=self.caller.tenant,
                                          sole_tenant=responses.sole_tenant, calls=self.entry.store_calls)
            self.request = request = self.expansion.request
        self.entry.mark("expanded")
        self._admitting = True
        for rule in responses.admission:
            admission = await rule.admit(self.caller, request, plan)
            if admission is not None:
                self._admissions += (admission,)
                self.headers.update(admission.headers)
        self.entry.mark("admitted")
        if request.store and responses.store.enabled:
            self._record_since = time.time()  # the recorder is made with the expansion
        self.run = run = await ResponseRun.open(request, plan, responses.engine, started_at=self.entry.started,
                                                attempts=self.entry.attempts, trace=self._trace)
        self.entry.mark("translated")  # the first events exist (``run.initial``)
        self.keepalive = run.opened.timeouts.keepalive if request.stream else 0.0
        self.entry.label = self.entry.provider = run.provider
        self.entry.upstream_model = run.opened.target.model
        self.entry.first_delta_at = run.first_delta_at
        self.entry.status = 200
        # the observers hear of it once the first events are out (``_announce``), not on their way

    def _announce(self) -> None:
        """Tell the observers the response opened, once: after its first delivery, or at the latest when it
        ends (so that every ``ended`` of an opened response follows its ``opened``)."""
        if self.entry.first_delta_at is not None and not self._announced:
            self._announced = True
            self.responses.observer.opened(self.entry)

    async def stream(self, deliver: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Send ``initial`` and every later batch to ``deliver`` until the terminal event.

        The store has the final object before the batch with the terminal event is delivered
        (with ``confirm_writes``: written), so a client that chains at once finds it.
        """
        await (await self.begin_stream(deliver))

    async def begin_stream(self, deliver: Callable[[list[Any]], Awaitable[None]]) -> Awaitable[None]:
        """``stream`` in two steps: ``initial`` goes to ``deliver`` now, and the rest of the stream is the awaitable
        returned (the run's drive loop), which the caller awaits itself: this frame is then not among those an open
        stream's task holds for as long as it lasts."""
        run = self.run
        assert run is not None, "stream() inside the async with"
        initial, run.initial = run.initial, ()  # the snapshots in them would otherwise live as long as the stream
        if run.done:
            recorder = self._recording()
            if recorder is not None:
                await recorder.started(run)  # stored before the client can see the terminal event
            await deliver(initial)
            self._announce()
            return _nothing()
        await deliver(initial)
        del initial
        recorder = self._slim()  # after the first events (none of it is on their way)
        self._announce()  # after the first events: metrics and the store's bookkeeping are not on their way
        if recorder is None:
            return run.stream(deliver)
        await recorder.started(run)  # after the first event: the store is not on its path
        self._deliver = deliver  # dropped by ``_exit``: the door's delivery refers back to this response
        return run.stream(self._recorded)  # a bound method: no closure and cells held for as long as it streams

    async def _recorded(self, events: list[Any]) -> None:
        """``stream``'s delivery of a stored response: stored before the client can see the terminal event."""
        run, recorder, deliver = self.run, self._recorder, self._deliver
        assert run is not None and recorder is not None and deliver is not None, "set by stream()"
        if run.done:
            await recorder.finish(run)
        await deliver(events)

    async def collect(self) -> dict[str, Any]:
        """Run to the end (``stream: false``); the final response object, stored before it is returned."""
        run = self.run
        assert run is not None, "collect() inside the async with"
        recorder = self._slim()
        self._announce()
        try:
            final = await run.collect()
        finally:
            if recorder is not None:
                recorder.finished(run)  # whatever the outcome, once
        if recorder is not None:
            await recorder.finish(run)  # written before the answer leaves (confirm_writes)
        return final

    def record(self) -> StoredResponse:
        """The finished response as a store record (WebSocket mode keeps it for ``previous_response_id``)."""
        assert self.run is not None
        target = self.run.opened.target.provider
        return record_for(self._expanded(), self.run.emitter.response, target.name, target.type, time.time())

    def failure_events(self, error: GatewayError) -> list[Any]:
        """``response.failed`` for ``error`` on a stream already committed to (see ``failure_events``)."""
        run = self.run if self.run is not None and not self.run.done else None
        return failure_events(self.request, error, run)

    def _mapped(self, exc: BaseException) -> BaseException:
        if isinstance(exc, GatewayError) or not isinstance(exc, Exception):
            return exc
        return self.entry.error if self.entry.error is not None else internal_error()

    async def _exit(self, exc: BaseException | None) -> None:
        """Close everything, once, however the block ends; then the request-log entry."""
        entry, run = self.entry, self.run
        self._deliver = None  # (``begin_stream``) no cycle left behind
        if isinstance(exc, Exception):
            if not isinstance(exc, GatewayError):
                log.exception("unexpected error in a %s response", entry.door, exc_info=exc)
                exc = internal_error()
            entry.error = exc
            if entry.committed:  # a keepalive sent the 200: the client gets response.failed
                entry.status = 200
            elif run is None or not entry.streamed:  # no 200 went out: the client gets this status
                entry.status = exc.status
        if run is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                await run.aclose()
            recorder = self._recording()  # made here when the client left during the first delivery
            if recorder is not None:
                recorder.finished(run)
            entry.finished = run.done
            response = run.emitter.response
            if run.done:
                entry.terminal = str(response.get("status") or "")
            usage = response.get("usage")
            entry.usage = usage if isinstance(usage, dict) else None
            entry.response_id = str(response.get("id") or "")
            entry.response = response
        if entry.error is not None and entry.status == 200 and entry.streamed and not entry.terminal:
            entry.terminal = "failed"  # the door ends the stream it committed to with response.failed
        # refused before the admission rules ran: the answer still carries the caller's rate-limit headers
        headers = isinstance(exc, GatewayError) and not self._admitting and bool(self.responses.admission)
        if self._admissions or headers:  # (two cancel scopes a request saved where there are no limits)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                for admission in self._admissions:  # slots released, tokens and cost counted
                    try:
                        await admission.settle(entry)
                    except Exception:
                        log.exception("settling an admission failed")
                if headers:
                    self.headers = await self.responses.headers(self.caller, self.request.model)
        self._announce()  # a response whose first delivery failed (the client left) still opened
        self._exited = True
        if not self.hold:
            self._notify()

    def release(self) -> None:
        """With ``hold``: the door has written its last byte (an error it rendered after the block): the
        observers see the entry now.  Call it in a ``finally``; it does nothing before the block ended
        or the second time."""
        self.hold = False
        if self._exited:
            self._notify()

    def _notify(self) -> None:
        entry = self.entry
        if self._notified:
            return
        self._notified = True
        entry.ended_at = trio.current_time()
        try:
            self.responses.observer.ended(entry)
        finally:
            entry.request = entry.response = None  # the entry may outlive the response (a test keeps it)


async def _nothing() -> None:
    """What is left of a stream that ended with its first events (``LiveResponse.begin_stream``)."""


def open_response(responses: Responses, caller: Caller, request: ResponsesRequest, *, door: str, request_id: str,
                  started: float | None = None, local: Mapping[str, StoredResponse] | None = None,
                  trace: TraceParent | None = None) -> LiveResponse:
    """The lifecycle of one response, as an async context manager (see the module docstring).

    ``local``: responses consulted before the store for ``previous_response_id`` (a WebSocket
    connection's last one).  ``started``: when the request arrived (its timeouts count from then).
    ``trace``: the client's ``traceparent``, parsed.
    """
    return LiveResponse(responses, caller, request, door=door, request_id=request_id, started=started, local=local,
                        trace=trace)


__all__ = [
    "ANONYMOUS",
    "CLOSE_GRACE",
    "Admission",
    "AdmissionRule",
    "Caller",
    "LiveResponse",
    "RequestEntry",
    "RequestObserver",
    "Responses",
    "TraceStarter",
    "failure_events",
    "keepalive_of",
    "open_response",
    "request_id",
]
