"""One response: the winning attempt's source driven into the emitter under idle and total deadlines.

``ResponseRun.open`` does everything that can still fail with an HTTP status: it
runs the plan (one target, or a route's strategy) until an attempt produced its
first delta.  Only then does the caller commit to a 200 and stream ``initial``
followed by the rest (``stream``) until ``done``.  Every wait has a deadline; no
cancel scope spans a ``yield``.

Every deadline also includes the process's drain deadline (``engine.drain``): when the
gateway shuts down, ``Drain.begin`` lowers the deadline of the wait a run is in (the run
registers itself once, when it opens), and the run ends with ``response.failed`` saying so.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from streamgw.core.emitter import Emitter, EmitterFactory, ResponseEmitter
from streamgw.core.jsontext import Snapshot
from streamgw.core.relay import RelayEmitter
from streamgw.core.request import ResponsesRequest, echo_builder
from streamgw.core.tracecontext import TraceParent
from streamgw.engine.attempt import (
    AttemptRecord,
    EngineContext,
    Opened,
    RunDeadline,
    open_attempt,
    open_plan,
    timeouts_for,
)
from streamgw.engine.drain import Drain, GatewayShuttingDown
from streamgw.engine.routing import Plan, Target
from streamgw.errors import UpstreamTimeout, failure_error
from streamgw.timers import DueHeap, run_local
from streamgw.transport.meanwhile import MEANWHILE


class _DeadlineExpired(Exception):
    """Internal: a receive ran past its deadline."""


def emitter_factory(opened: Opened, ctx: EngineContext) -> EmitterFactory:
    """The emitter for the winning attempt's dialect: a native Responses upstream is relayed, not re-emitted."""
    return _factory_for(opened.target, ctx)


def _factory_for(target: Target, ctx: EngineContext) -> EmitterFactory:
    dialect = ctx.dialects.get(target.provider.type)
    return RelayEmitter if dialect is not None and dialect.relays_events else ResponseEmitter


class _Opening:
    """A response's opening (its emitter and the events of ``start``: ``response.created`` and
    ``response.in_progress``, their JSON made), which depends on the request and the provider, not on the
    upstream's answer: made while the first attempt's upstream works on the request
    (``streamgw.transport.meanwhile``), for the plan's first target, and taken once an attempt has answered.

    Made then, it is not on the way from the upstream's first delta to the client's first event.  If another
    provider won (a fallback, a hedge, a route's other order), or nothing called ``prepare`` (a local
    provider, another transport), ``take`` makes the opening there, as before.
    """

    __slots__ = ("_ctx", "_made", "_request", "_target")

    def __init__(self, request: ResponsesRequest, target: Target, ctx: EngineContext) -> None:
        self._request = request
        self._target = target
        self._ctx = ctx
        self._made: tuple[str, EmitterFactory, Emitter, list[Any]] | None = None

    def prepare(self) -> None:
        """Make the opening for the first target (once; a failure here is left for ``take`` to meet)."""
        if self._made is not None:
            return
        target = self._target
        try:
            factory = _factory_for(target, self._ctx)
            emitter, start = _opened_with(factory, self._request, target.provider.name)
            if self._request.stream:  # a streamed response's opening is encoded; a collected one's never
                for event in start:
                    snapshot = event.get("response")
                    if type(snapshot) is Snapshot:
                        snapshot.json()
        except Exception:
            return
        self._made = (target.provider.name, factory, emitter, start)

    def take(self, opened: Opened) -> tuple[Emitter, list[Any]]:
        """The emitter and its start events for the attempt that answered."""
        made, self._made = self._made, None
        factory = emitter_factory(opened, self._ctx)
        provider = opened.target.provider.name
        if made is not None and made[0] == provider and made[1] is factory:
            return made[2], made[3]
        return _opened_with(factory, self._request, provider)


def _opened_with(factory: EmitterFactory, request: ResponsesRequest, provider: str) -> tuple[Emitter, list[Any]]:
    emitter = factory(model=request.model, provider=provider, echo=echo_builder(request))
    return emitter, emitter.start()


class _Place:
    """A streaming run's entry in the ``_Waits`` heap; ``run`` is None once the stream ended (the entry
    then keeps nothing alive until it comes up)."""

    __slots__ = ("run",)

    def __init__(self, run: ResponseRun) -> None:
        self.run: ResponseRun | None = run


class _Waits:
    """The idle, total and drain deadlines of every streaming run of a trio run, kept by one task.

    A deadline on the stream's cancel scope would have to be set twice a batch (off while events are
    delivered, so a slow client is not taken for a silent upstream and a delivery is never cut; on
    again for the next wait), and each set is a trip through trio's deadline heap.  Instead a run
    notes when its current wait began (``_waiting`` / ``_active_at``: two attribute writes a batch),
    and a ``DueHeap`` keeps an entry per run by the earliest time its deadline can come.  When an entry
    comes up the due time is worked out again from what the run noted: a run still within it goes back
    in the heap; a run past it and waiting on the upstream has its scope cancelled; a run delivering
    meanwhile is looked at again one idle period later (it checks the total and drain deadlines itself
    after each delivery).  The heap's task runs while any stream is open and up to an idle timeout after.
    """

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: DueHeap[_Place] = DueHeap(_due_place, "streamgw stream deadlines")

    def ended(self) -> None:
        """A run's stream ended: its entry is dead (swept with the others once they are half the heap).

        The task is not woken for it (a wake-up costs more than the timing of a short stream): it
        ends when it next wakes, by the last stream's idle timeout, and finds nothing left to time;
        a sequential client's next request usually finds it still there.
        """
        self.heap.ended(_live_place)


def _live_place(place: _Place) -> bool:
    return place.run is not None


def _due_place(place: _Place, now: float) -> float | None:
    """``_Waits``'s handling of a run whose entry came up: when to look again (None: not again)."""
    run = place.run
    if run is None:
        return None
    due = run._due()
    if due > now:
        return due
    if run._waiting and run._scope is not None:
        run._scope.cancel()  # the run ends its stream with the deadline's failure
        return None
    return now + run._idle if run._idle > 0 else None  # delivering: idle time counts from the delivery's end


_WAITS: trio.lowlevel.RunVar[_Waits] = trio.lowlevel.RunVar("streamgw_waits")


def _waits() -> _Waits:
    """This trio run's ``_Waits``."""
    return run_local(_WAITS, _Waits)


class ResponseRun:
    """The emitter plus the winning upstream source, with idle and total deadlines."""

    # one per open stream: slots, not a per-instance dict
    __slots__ = ("_active_at", "_closed", "_drain", "_idle", "_place", "_rest", "_scope", "_shut_down", "_total",
                 "_total_deadline", "_waiting", "emitter", "first_delta_at", "initial", "opened", "started_at")

    def __init__(self, emitter: Emitter, opened: Opened, started_at: float, drain: Drain | None = None,
                 start: list[Any] | None = None) -> None:
        """``start``: the events of ``emitter.start()`` if they were made already (``_Opening``)."""
        self.emitter = emitter
        self.opened = opened
        self.started_at = started_at
        timeouts = opened.timeouts
        self._idle = timeouts.idle
        self._total = timeouts.total
        self._total_deadline = started_at + timeouts.total if timeouts.total > 0 else math.inf
        self.first_delta_at = trio.current_time()
        #: the first batch's deltas after the one that gave the first output: ``stream`` delivers them next
        self._rest: Sequence[Any] = ()
        self.initial: Sequence[Any] = (emitter.start() if start is None else start) + self._first_output(opened.first)
        opened.first = ()  # fed: the winner need not hold its first deltas for as long as it streams
        self._closed = False
        #: while ``stream`` runs: its cancel scope, its place with ``_Waits``, whether it is waiting on the
        #: upstream (not delivering), and when that wait began
        self._scope: trio.CancelScope | None = None
        self._place: _Place | None = None
        self._waiting = False
        self._active_at = self.first_delta_at
        self._shut_down = False  # ended by the drain deadline
        self._drain = Drain() if drain is None else drain
        self._drain.watch(self)

    def _first_output(self, first: Sequence[Any]) -> list[Any]:
        """The events of ``first`` up to its first output; the deltas after it wait in ``_rest``.

        A first read can hold a whole answer (a fast or cached upstream sends it at once).  Translating and
        writing all of it before the first event is time the client waits for its first token; so the first
        write carries the response's opening and first output, and the rest of the batch follows as the
        next delivery (the same events, in the same order).
        """
        emitter = self.emitter
        for i, delta in enumerate(first):
            out = emitter.feed((delta,))
            if out:
                self._rest = first[i + 1:]
                return out
        return []

    @property
    def done(self) -> bool:
        """True once the terminal event has been produced."""
        return self.emitter.done

    @property
    def provider(self) -> str:
        """The name of the provider that serves this response."""
        return self.opened.target.provider.name

    @classmethod
    async def open(
        cls, request: ResponsesRequest, plan: Plan, ctx: EngineContext, *, started_at: float | None = None,
        attempts: list[AttemptRecord] | None = None, trace: TraceParent | None = None,
    ) -> ResponseRun:
        """Run ``plan`` until an attempt produced its first delta; raise ``GatewayError`` if none did.

        ``attempts`` receives an ``AttemptRecord`` for every upstream attempt; with ``trace``
        (tracing on) each upstream request carries a ``traceparent`` naming its attempt.
        """
        started = trio.current_time() if started_at is None else started_at
        # The total the response will have: with one target its provider's own counts (global < provider);
        # a route's, when it sets one, overrides every provider's.
        route = plan.route
        total = (ctx.timeouts.merged(route.timeouts) if route else timeouts_for(ctx, plan.targets[0], None)).total
        drain = ctx.drain
        deadline = min(started + total if total > 0 else math.inf, drain.deadline)
        opening = _Opening(request, plan.targets[0], ctx)
        waiting = MEANWHILE.set(opening.prepare)  # done once an upstream has the request
        opened: Opened | None = None
        try:
            if route is None:  # one attempt: its cancel scope carries this deadline too
                opened = await open_attempt(request, plan.targets[0], ctx, None, attempts, trace=trace, bound=deadline)
            else:
                with trio.move_on_at(deadline) as scope:
                    drain.watch(scope)
                    try:
                        opened = await open_plan(request, plan, ctx, deadline, attempts, trace)
                    finally:
                        drain.unwatch(scope)
        except RunDeadline:
            pass
        finally:
            MEANWHILE.reset(waiting)
        if opened is not None:
            try:
                emitter, start = opening.take(opened)
                return cls(emitter, opened, started, drain, start)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await opened.aclose()
                raise
        if drain.expired():
            raise GatewayShuttingDown(drain.message())
        raise UpstreamTimeout(f"no output within the total timeout of {total:g} s", code="total_timeout")

    async def stream(self, deliver: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Drive the run to its end, handing each batch of events to ``deliver``.

        The one drive loop (sinks and ``collect`` alike): one cancel scope for the whole stream, which
        ``_Waits`` cancels when the upstream has been silent past the idle timeout, or the total or
        drain deadline came, while the run waits on it.  While ``deliver`` waits for a slow client
        there is no idle deadline — that time is not upstream silence — and a delivery is never cut
        in half.
        """
        emitter = self.emitter
        source = self.opened.source
        drain = self._drain
        total_deadline = self._total_deadline
        now = trio.current_time
        with trio.CancelScope() as scope:
            t = self._active_at = now()
            self._scope = scope
            due = self._due()
            if due < math.inf:
                self._place = _Place(self)
                _waits().heap.add(due, self._place)
            try:
                rest, self._rest = self._rest, ()  # the first read's deltas after its first output
                if rest:
                    out = emitter.feed(rest)
                    del rest
                    while source.ready and not emitter.done:  # the rest of the first read: no wait, one write
                        batch = await source.receive()
                        out += emitter.feed(batch) if batch is not None else emitter.finish()
                    if out:
                        await deliver(out)
                        t = now()
                while not emitter.done:
                    self._active_at = t  # one clock read a batch: the end of a delivery starts the next wait
                    self._waiting = True
                    batch = await source.receive()
                    self._waiting = False
                    out = emitter.feed(batch) if batch is not None else emitter.finish()
                    if out:
                        if scope.cancel_called:  # the deadline came as the batch did: deliver it whole, then end
                            with trio.CancelScope(shield=True):
                                await deliver(out)
                            break
                        await deliver(out)
                        t = now()
                        if t >= min(total_deadline, drain.deadline) and not emitter.done:
                            break
                    else:
                        t = now()
                    del batch, out  # not kept through the next wait: a quiet stream would hold its last batch
            finally:
                self._waiting = False
                self._scope = None
                ended, self._place = self._place, None
                if ended is not None:
                    ended.run = None
                    _waits().ended()
        if not emitter.done:
            await self.aclose()
            await deliver(self._deadline_failure())

    def _due(self) -> float:
        """When this run's current wait must end: idle time after it began, the total and drain deadlines."""
        idle = self._idle
        return min(self._active_at + idle if idle > 0 else math.inf, self._total_deadline, self._drain.deadline)

    async def collect(self) -> dict[str, Any]:
        """Run to the end (non-streamed requests) and return the final response object."""
        try:
            await self.stream(_discard)
        finally:
            await self.aclose()
        response: dict[str, Any] = self.emitter.response
        if response["status"] == "failed":
            if self._shut_down:
                raise GatewayShuttingDown(self._drain.message())
            error = response["error"] or {}
            raise failure_error(error.get("code"), error.get("message"))
        return response

    def drain_at(self, deadline: float) -> None:
        """The drain began: the upstream wait in progress (if any) ends by ``deadline``."""
        place = self._place
        if place is not None:
            _waits().heap.add(deadline, place)

    async def aclose(self) -> None:
        """Close the upstream (idempotent; effective even when cancelled).

        After a clean end the rest of the body is drained first, to keep the connection.
        """
        if not self._closed:
            self._closed = True
            self._drain.unwatch(self)
            response = self.emitter.response
            outcome = "cancelled"  # the client left, or the process is shutting down
            if self.emitter.done:
                error = response.get("error") if response["status"] == "failed" else None
                outcome = str(error.get("code") or "failed") if isinstance(error, dict) else "served"
            try:
                if self.emitter.done and response["status"] != "failed":
                    await self.opened.source.drain()
            finally:
                await self.opened.aclose(outcome)

    def _deadline_failure(self) -> list[Any]:
        if self._drain.expired():
            self._shut_down = True
            return self.emitter.fail("server_error", self._drain.message())
        if trio.current_time() >= self._total_deadline:
            return self.emitter.fail("upstream_total_timeout",
                                     f"the response exceeded the total timeout of {self._total:g} s")
        return self.emitter.fail("upstream_idle_timeout",
                                 f"no data from upstream for {self._idle:g} s (idle timeout)")


async def _discard(events: list[Any]) -> None:
    """``collect``'s delivery: the events are not sent anywhere, the final object is what counts."""
