"""Attempts and strategies: how a request gets its first delta from one of a route's targets.

An attempt opens one upstream and waits for its first delta.  Strategies decide
which attempts run: ``single`` (a plain ``provider/model``), ``fallback`` (targets in
order, with retries and backoff), ``weighted`` (weighted random order, then
fallback) and ``hedge`` (start the next target when the current one has produced
nothing for ``hedge_delay``; the first delta wins and the other attempts are
cancelled, which closes their upstream connections).  Everything here happens
before the first byte reaches the client, so any failure can still move on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from streamgw.config import RouteConfig, Timeouts
from streamgw.core.deltas import Delta, UpstreamFailure, Usage
from streamgw.core.request import ResponsesRequest
from streamgw.core.tracecontext import TraceParent, new_span_id
from streamgw.engine.drain import Drain
from streamgw.engine.health import Endpoint, Health
from streamgw.engine.routing import Plan, Target
from streamgw.engine.sources import DeltaSource, open_source
from streamgw.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout, failure_error
from streamgw.providers.base import Dialect
from streamgw.transport.upstream import UpstreamClients


@dataclass(slots=True)
class EngineContext:
    """What attempts share across requests."""

    clients: UpstreamClients
    dialects: Mapping[str, Dialect]
    secrets: Sequence[str]
    health: Health
    timeouts: Timeouts
    rng: random.Random = field(default_factory=random.Random)
    #: the process's graceful-shutdown deadline: every run's waits end by it (see ``engine.drain``)
    drain: Drain = field(default_factory=Drain)


@dataclass(slots=True)
class AttemptRecord:
    """One upstream attempt as the request log, metrics and traces see it (times: ``trio.current_time``).

    ``outcome``: ``""`` while it runs, ``"served"`` for the winner once the response ended,
    ``"opened"`` for a winner still streaming, ``"lost"`` for a hedge whose rival won first,
    ``"cancelled"`` when it was abandoned (the client left, a deadline, a rival won), else the
    error code it failed with.  ``kind``: ``"first"``, ``"retry"`` (same target again),
    ``"fallback"`` (next target after a failure) or ``"hedge"`` (started beside a running one).
    """

    provider: str
    model: str
    started: float
    kind: str = "first"
    headers_at: float | None = None
    first_delta_at: float | None = None
    ended: float | None = None
    outcome: str = ""
    #: the HTTP status its error maps to (0: it did not fail)
    status: int = 0
    #: the attempt's span id, named by the upstream request's ``traceparent`` ("": tracing is off)
    span_id: str = ""

    def end(self, outcome: str, status: int = 0) -> None:
        """Record how the attempt ended, once (the first outcome is kept)."""
        if self.ended is None:
            self.ended = trio.current_time()
            self.outcome = outcome
            self.status = status


@dataclass(slots=True)
class Opened:
    """A winning attempt: its source, the first batch of deltas, and who served it."""

    source: DeltaSource
    first: Sequence[Delta]  # ``()`` once the run fed them to its emitter
    target: Target
    endpoint: Endpoint
    timeouts: Timeouts
    attempts: int = 1
    record: AttemptRecord | None = None

    async def aclose(self, outcome: str = "served") -> None:
        """Close the upstream and give the endpoint's in-flight slot back (idempotent)."""
        if self.endpoint.in_flight > 0 and self.source is not _CLOSED:
            self.endpoint.in_flight -= 1
        if self.record is not None:
            self.record.end(outcome)
        source, self.source = self.source, _CLOSED
        await source.aclose()


class RunDeadline(Exception):
    """An attempt given its run's deadline (``open_attempt``'s ``bound``) reached that deadline, or the drain's,
    before its own first-token one: the run reports it (as a total timeout or a shutdown), and the attempt
    ended as one a deadline abandoned (``cancelled``)."""


class _Closed:
    ready = False

    async def receive(self) -> list[Delta] | None:
        return None

    async def drain(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


_CLOSED = _Closed()


def timeouts_for(ctx: EngineContext, target: Target, route: RouteConfig | None) -> Timeouts:
    """Global timeouts, then the provider's, then the route's."""
    return ctx.timeouts.merged(target.provider.timeouts, route.timeouts if route else ())


def first_failure(batch: list[Delta]) -> UpstreamFailure | None:
    """The failure a first batch carries before any output (it becomes an HTTP error), if any."""
    for delta in batch:
        if isinstance(delta, UpstreamFailure):
            return delta
        if not isinstance(delta, Usage):
            return None
    return None


async def _first_batch(source: DeltaSource) -> list[Delta]:
    """Read until the first non-empty batch; a failure before any output is an error (the caller bounds it)."""
    while True:
        batch = await source.receive()
        if batch is None:
            raise UpstreamError("upstream closed the stream before any output", code="upstream_empty")
        if batch:
            failure = first_failure(batch)
            if failure is not None:
                raise failure_error(failure.code, failure.message)
            return batch


async def open_attempt(
    request: ResponsesRequest, target: Target, ctx: EngineContext, route: RouteConfig | None,
    log: list[AttemptRecord] | None = None, kind: str = "first", trace: TraceParent | None = None,
    bound: float | None = None,
) -> Opened:
    """One upstream attempt up to its first delta; the endpoint's health is updated either way.

    With ``log``, the attempt appends its ``AttemptRecord`` there as it starts.  With ``trace``
    (tracing is on) the attempt gets a span id of its own, and the upstream request a
    ``traceparent`` naming it.  With ``bound`` (a run of this one attempt: ``ResponseRun.open``), the wait
    also ends at that deadline and at the drain's (its cancel scope is the run's too: one scope, not two
    nested ones); ``RunDeadline`` says so.
    """
    timeouts = timeouts_for(ctx, target, route)
    endpoint = ctx.health.pick(target.provider)
    provider = ctx.health.with_key(target.provider, endpoint)
    now = trio.current_time()
    record = AttemptRecord(target.provider.name, target.model, now, kind)
    if log is not None:
        log.append(record)
    traceparent = None
    if trace is not None:
        record.span_id = new_span_id()
        traceparent = trace.header(record.span_id)
    deadline = now + (timeouts.first_token or math.inf)
    endpoint.in_flight += 1
    source: DeltaSource | None = None
    first: list[Delta] | None = None
    drain = ctx.drain if bound is not None else None
    try:
        try:
            # one deadline for both waits: the response head, then the first delta
            with trio.move_on_at(deadline if bound is None else min(deadline, bound)) as scope:
                if drain is not None:
                    drain.watch(scope)
                try:
                    source = await open_source(request, provider, target.model, clients=ctx.clients,
                                               dialects=ctx.dialects, secrets=ctx.secrets, timeouts=timeouts,
                                               traceparent=traceparent)
                    record.headers_at = trio.current_time()
                    first = await _first_batch(source)
                finally:
                    if drain is not None:
                        drain.unwatch(scope)
            if source is None or first is None:
                if bound is not None and drain is not None and min(bound, drain.deadline) <= deadline:
                    raise RunDeadline  # (when both came at once: the run's, as two nested scopes would have it)
                raise UpstreamTimeout(
                    f"no output from upstream within {timeouts.first_token:g} s (first_token timeout)"
                    if source is not None else
                    f"upstream {provider.name!r} sent no response headers within {timeouts.first_token:g} s",
                    code="first_token_timeout")
        except BaseException:
            if source is not None:
                with trio.CancelScope(shield=True):
                    await source.aclose()
            raise
    except GatewayError as error:
        endpoint.in_flight -= 1
        record.end(error.code or error.type, error.status)
        if retryable(error) or may_fall_back(error):
            threshold = route.cooldown_failures if route else 3
            ctx.health.failure(endpoint, threshold, route.cooldown_seconds if route else 30.0)
        raise
    except BaseException:
        endpoint.in_flight -= 1
        record.end("cancelled")
        raise
    record.first_delta_at = trio.current_time()
    ctx.health.success(endpoint)
    return Opened(source, first, target, endpoint, timeouts, record=record)


def retryable(error: GatewayError) -> bool:
    """Worth another try on the same target: connection failures, 5xx, 429, timeouts."""
    return isinstance(error, UpstreamError | RateLimited) and error.code != "upstream_auth_failed"


def may_fall_back(error: GatewayError) -> bool:
    """Worth trying the next target: anything but a request the upstream called wrong."""
    return not isinstance(error, InvalidRequest)


def _retry_after(error: GatewayError) -> float:
    value = error.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def backoff_delay(route: RouteConfig, retry: int, error: GatewayError, rng: random.Random) -> float:
    """Exponential backoff with jitter, never shorter than the upstream's ``retry-after``."""
    base = min(route.backoff_max, route.backoff * (2.0**retry))
    return max(base * rng.uniform(0.5, 1.0), _retry_after(error))


def _ordered(plan: Plan, ctx: EngineContext) -> list[Target]:
    """Targets in the order to try them: weighted draw for ``weighted``, cooling targets last."""
    targets = list(plan.targets)
    route = plan.route
    if route is not None and route.strategy == "weighted":
        weights = list(route.weights or [1.0] * len(targets))
        drawn: list[Target] = []
        while targets:
            pick = ctx.rng.choices(range(len(targets)), weights=[w or 1e-9 for w in weights])[0]
            drawn.append(targets.pop(pick))
            weights.pop(pick)
        targets = _least_in_flight_first(drawn, ctx)
    if route is None:
        return targets
    order = ctx.health.order([t.provider for t in targets])
    return [targets[i] for i in order]


def _least_in_flight_first(drawn: list[Target], ctx: EngineContext) -> list[Target]:
    """Power of two choices: of the first two drawn, the one with fewer requests in flight goes first."""
    if len(drawn) >= 2:
        load = [sum(e.in_flight for e in ctx.health.endpoints(t.provider)) for t in drawn[:2]]
        if load[1] < load[0]:
            drawn[0], drawn[1] = drawn[1], drawn[0]
    return drawn


async def open_plan(request: ResponsesRequest, plan: Plan, ctx: EngineContext, deadline: float,
                    log: list[AttemptRecord] | None = None, trace: TraceParent | None = None) -> Opened:
    """Run the plan's strategy until an attempt produced its first delta, or raise the last error.

    ``log`` receives one ``AttemptRecord`` per attempt, in the order they started; ``trace``
    (tracing on) is what each attempt's upstream ``traceparent`` continues.
    """
    route = plan.route
    if route is None:
        return await open_attempt(request, plan.targets[0], ctx, None, log, trace=trace)
    targets = _ordered(plan, ctx)
    if route.strategy == "hedge":
        return await _hedge(request, targets, route, ctx, deadline, log, trace)
    return await _fallback(request, targets, route, ctx, deadline, log, trace)


def _budget(route: RouteConfig, targets: int) -> int:
    return route.max_attempts or targets * (1 + route.retries)


async def _fallback(
    request: ResponsesRequest, targets: list[Target], route: RouteConfig, ctx: EngineContext, deadline: float,
    log: list[AttemptRecord] | None = None, trace: TraceParent | None = None,
) -> Opened:
    budget = _budget(route, len(targets))
    attempts = 0
    last: GatewayError | None = None
    for target in targets:
        for retry in range(route.retries + 1):
            if attempts >= budget:
                break
            kind = "first" if attempts == 0 else "retry" if retry else "fallback"
            attempts += 1
            try:
                opened = await open_attempt(request, target, ctx, route, log, kind, trace)
            except GatewayError as error:
                last = error
                if not may_fall_back(error):
                    raise
                if not retryable(error) or retry == route.retries:
                    break
                delay = backoff_delay(route, retry, error, ctx.rng)
                if trio.current_time() + delay >= deadline:
                    break  # no time left for this target: try the next one
                await trio.sleep(delay)
                continue
            opened.attempts = attempts
            return opened
    raise _exhausted(route, attempts, last)


def _exhausted(route: RouteConfig, attempts: int, last: GatewayError | None) -> GatewayError:
    if last is None:
        return UpstreamError(f"route {route.name!r} has no target left to try", code="route_exhausted")
    last.message = f"route {route.name!r}: all {attempts} attempt(s) failed; last: {last.message}"
    return last


async def _hedge(
    request: ResponsesRequest, targets: list[Target], route: RouteConfig, ctx: EngineContext, deadline: float,
    log: list[AttemptRecord] | None = None, trace: TraceParent | None = None,
) -> Opened:
    """Start attempts ``hedge_delay`` apart (or at once after a failure); the first delta wins."""
    send, receive = trio.open_memory_channel[Opened | GatewayError](math.inf)
    budget = min(len(targets), _budget(route, len(targets)))
    launched = finished = 0
    winner: Opened | None = None
    last: GatewayError | None = None
    fatal: GatewayError | None = None

    async def attempt(target: Target, kind: str) -> None:
        try:
            result: Opened | GatewayError = await open_attempt(request, target, ctx, route, log, kind, trace)
        except GatewayError as error:
            result = error
        send.send_nowait(result)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, targets[0], "first")
        launched = 1
        while winner is None and finished < launched:
            wait = route.hedge_delay if launched < budget else math.inf
            with trio.move_on_after(wait):
                result = await receive.receive()
                finished += 1
                if isinstance(result, Opened):
                    winner = result
                    break
                last = result
                if not may_fall_back(result):
                    fatal = result
                    break
            if launched < budget and trio.current_time() < deadline:
                # a hedge beside a running attempt, or a fallback in place of a failed one
                kind = "hedge" if finished < launched else "fallback"
                nursery.start_soon(attempt, targets[launched], kind)
                launched += 1
        nursery.cancel_scope.cancel()  # the losers: cancelling them closes their upstreams
    await _close_losers(receive, winner)
    if fatal is not None:
        raise fatal
    if winner is None:
        raise _exhausted(route, launched, last)
    winner.attempts = launched
    return winner


async def _close_losers(receive: trio.MemoryReceiveChannel[Opened | GatewayError], winner: Opened | None) -> None:
    """Attempts that also succeeded before they could be cancelled: close them."""
    while True:
        try:
            extra = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return
        if isinstance(extra, Opened) and extra is not winner:
            with trio.CancelScope(shield=True):
                await extra.aclose("lost")
