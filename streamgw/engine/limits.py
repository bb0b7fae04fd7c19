"""Rate limits, concurrent-stream limits and budgets: the lifecycle's ``AdmissionRule`` for keys.

A caller's key (``Caller.key``) brings up to three **scopes**, each with its own ``Limits``: the key
(``k:<name>``), its tenant when ``[tenants.NAME]`` sets limits (``t:<name>``, shared by every key of
the tenant), and the key with the first ``model_limits`` pattern that matches the requested model
(``km:<name>:<pattern>``).  Every limit set in a scope is one ``Check``; one backend call evaluates
them all and commits all or none (``streamgw.control.base`` has the arithmetic):

* ``requests_per_minute``: GCRA, a bucket of L requests refilled continuously at L per minute;
* ``tokens_per_minute``: admitted while fewer than L tokens are counted in the bucket; a response's
  tokens (input + output, from its usage) are counted when it ends — completed, incomplete or
  failed, streamed or not.  Tokens are not known at admission and nothing is reserved: requests
  that start together are all admitted while the bucket has room, and what they used is paid back
  before the next one passes (``concurrent_streams`` bounds such a burst);
* ``concurrent_streams``: a lease per request (streamed or not) from admission to its end, released
  when it ends however it ends, refreshed every ``LEASE_TTL / 3`` seconds while it runs; a worker
  that crashed leaves leases that expire after ``LEASE_TTL``;
* ``tokens_per_day`` / ``tokens_per_month`` / ``cost_per_day`` / ``cost_per_month``: counters per
  UTC calendar day or month, admitted while below the budget, added to when a response ends; cost
  only for models a ``[prices]`` table prices.

Refused: 429 ``rate_limit_error`` with ``rate_limit_exceeded`` (rates, streams) or
``insufficient_quota`` (budgets, with ``x-should-retry: false`` so SDKs do not retry it), and
``retry-after`` / ``retry-after-ms``.  Every answer of a key with a rate limit carries OpenAI's
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (the scope with the least left).

Backend unreachable: ``[control] on_unavailable = "open"`` admits (without headers), counts
``streamgw_control_unavailable_total`` and warns at most every 30 s; ``"closed"`` answers 503
``control_unavailable``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import TypeVar

import trio

from streamgw.config import KeyPolicy, Limits, Price
from streamgw.control.base import Charge, Check, ControlBackend, ControlUnavailable, Verdict
from streamgw.core.request import ResponsesRequest
from streamgw.engine.lifecycle import Caller, RequestEntry
from streamgw.engine.routing import Plan
from streamgw.errors import LimitExceeded, QuotaExceeded

log = logging.getLogger("streamgw.control")

T = TypeVar("T")

#: seconds a concurrent-stream lease lives without a refresh
LEASE_TTL = 30.0
_WARN_EVERY = 30.0
#: a token count above this in an upstream's usage is not believed (untrusted input)
MAX_TOKENS = 10**12


def duration(seconds: float) -> str:
    """A reset time the way OpenAI writes it: ``12ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def tokens_of(usage: Mapping[str, object] | None) -> tuple[int, int, int, int]:
    """(input, cached, output, reasoning) tokens of a Responses ``usage`` object; 0 for what is missing or wrong."""
    if not usage:
        return 0, 0, 0, 0
    inputs = usage.get("input_tokens")
    outputs = usage.get("output_tokens")
    cached = usage.get("input_tokens_details")
    reasoning = usage.get("output_tokens_details")
    return (_count(inputs), _count(cached.get("cached_tokens")) if isinstance(cached, dict) else 0,
            _count(outputs), _count(reasoning.get("reasoning_tokens")) if isinstance(reasoning, dict) else 0)


def _count(value: object) -> int:
    """A token count from untrusted usage: an int (not a bool) within 0..``MAX_TOKENS``, else 0."""
    return value if type(value) is int and 0 <= value <= MAX_TOKENS else (
        value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS else 0)


def price_of(prices: Sequence[Price], provider: str, model: str) -> Price | None:
    """The first price whose pattern matches ``provider/model``, else the bare ``model``."""
    if not model:
        return None
    qualified = f"{provider}/{model}"
    for price in prices:
        if fnmatchcase(qualified, price.pattern) or fnmatchcase(model, price.pattern):
            return price
    return None


def cost_of(prices: Sequence[Price], entry: RequestEntry) -> float | None:
    """USD of an ended request (``None``: its model is not priced, or nothing served it)."""
    price = price_of(prices, entry.provider, entry.upstream_model)
    if price is None:
        return None
    input_tokens, cached, output, _ = tokens_of(entry.usage)
    return price.cost(input_tokens, cached, output)


@functools.lru_cache(maxsize=4)
def _period_ends(second: int) -> tuple[str, float, str, float]:
    """(day, its end, month, its end) of a Unix second, UTC."""
    moment = datetime.fromtimestamp(second, UTC)
    day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    return (day_start.date().isoformat(), (day_start + timedelta(days=1)).timestamp(),
            month_start.strftime("%Y-%m"), (month_start + timedelta(days=32)).replace(day=1).timestamp())


def _periods(now: float) -> tuple[str, float, str, float]:
    """(day, seconds to its end, month, seconds to its end), UTC."""
    day, day_end, month, month_end = _period_ends(int(now))
    return day, day_end - now, month, month_end - now


Scope = tuple[str, Limits]
#: a check as cached per key and model: a ``Check`` as it is (rates), or what a request fills in:
#: ``("streams", name, limit, False)`` (its lease) or ``("budget", name prefix, limit, monthly)`` (the period)
_Template = Check | tuple[str, str, float, bool]
#: how many (key, model) pairs ``Limiter`` keeps the scopes and checks of
_PLANS = 1024


def _templates(scopes: Sequence[Scope], rates_only: bool) -> tuple[_Template, ...]:
    """The checks of ``scopes`` in their order (per scope: requests, tokens, streams, budgets)."""
    out: list[_Template] = []
    for scope, limits in scopes:
        if limits.requests_per_minute:
            out.append(Check("requests", "rq:" + scope, limits.requests_per_minute))
        if limits.tokens_per_minute:
            out.append(Check("tokens", "tk:" + scope, limits.tokens_per_minute))
        if rates_only:
            continue
        if limits.concurrent_streams:
            out.append(("streams", "ls:" + scope, limits.concurrent_streams, False))
        for value, name, monthly in ((limits.tokens_per_day, f"bt:{scope}:", False),
                                     (limits.tokens_per_month, f"bt:{scope}:", True),
                                     (limits.cost_per_day, f"bc:{scope}:", False),
                                     (limits.cost_per_month, f"bc:{scope}:", True)):
            if value:
                out.append(("budget", name, value, monthly))
    return tuple(out)


class _Plan:
    """What a key asking for a model is held to: its scopes, the templates of its checks (all, rates only),
    and, in the same order, what its end charges: ``(kind, name or prefix, limit, monthly)`` with kind
    ``tokens`` (a tokens_per_minute rate), ``bt`` (a token budget) or ``bc`` (a cost budget)."""

    __slots__ = ("charges", "checks", "rates", "scopes")

    def __init__(self, scopes: tuple[Scope, ...], checks: tuple[_Template, ...], rates: tuple[_Template, ...]) -> None:
        self.scopes = scopes
        self.checks = checks
        self.rates = rates
        charges: list[tuple[str, str, float, bool]] = []
        for scope, limits in scopes:
            if limits.tokens_per_minute:
                charges.append(("tokens", "tk:" + scope, limits.tokens_per_minute, False))
            for value, kind, monthly in ((limits.tokens_per_day, "bt", False), (limits.tokens_per_month, "bt", True),
                                         (limits.cost_per_day, "bc", False), (limits.cost_per_month, "bc", True)):
                if value:
                    charges.append((kind, f"{kind}:{scope}:", value, monthly))
        self.charges = tuple(charges)


class Ticket:
    """One admitted request: its headers, its lease, and what its end charges."""

    __slots__ = ("_leases", "_limiter", "_plan", "headers")

    def __init__(self, limiter: Limiter, plan: _Plan, leases: Sequence[tuple[str, str]],
                 headers: dict[str, str]) -> None:
        self._limiter = limiter
        self._plan = plan
        self._leases = leases
        self.headers: Mapping[str, str] = headers

    async def settle(self, entry: RequestEntry) -> None:
        """Release the leases; count the tokens (and cost) the response used."""
        await self._limiter.settle(self._plan, self._leases, entry)


class Limiter:
    """The ``AdmissionRule`` of per-key, per-tenant and per-model limits and budgets."""

    def __init__(self, backend: ControlBackend, *, tenant_limits: Mapping[str, Limits] | None = None,
                 prices: Sequence[Price] = (), on_unavailable: str = "open",
                 observe: Callable[[str, float], None] = lambda op, seconds: None,
                 unavailable: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.tenant_limits = dict(tenant_limits or {})
        self.prices = tuple(prices)
        self.fail_closed = on_unavailable == "closed"
        self._observe = observe
        self._unavailable = unavailable
        self._clock = clock
        self._warned = -math.inf
        #: leases of requests in flight in this process, refreshed by ``run``
        self.leases: dict[tuple[str, str], None] = {}
        #: ``_plan``'s cache: (id of the policy, model) -> (the policy, its plan)
        self._plans: dict[tuple[int, str], tuple[KeyPolicy, _Plan]] = {}

    # -- scopes and checks --------------------------------------------------------------------------

    def scopes(self, policy: KeyPolicy, model: str) -> list[Scope]:
        """The scopes whose limits apply to ``policy`` asking for ``model`` (only those with a limit)."""
        found: list[Scope] = []
        if policy.limits.any:
            found.append(("k:" + policy.name, policy.limits))
        if policy.tenant.startswith("t:"):
            tenant = self.tenant_limits.get(policy.tenant[2:])
            if tenant is not None and tenant.any:
                found.append((policy.tenant, tenant))
        for pattern, limits in policy.model_limits:
            if fnmatchcase(model, pattern):
                if limits.any:
                    found.append((f"km:{policy.name}:{pattern}", limits))
                break
        return found

    def checks(self, scopes: Sequence[Scope], lease: str, now: float, *, rates_only: bool = False) -> list[Check]:
        """Every limit of ``scopes`` as a ``Check`` (``rates_only``: requests and tokens per minute only)."""
        return self._fill(_templates(tuple(scopes), rates_only), lease, now)

    def _plan(self, policy: KeyPolicy, model: str) -> _Plan:
        """The scopes of ``policy`` and ``model`` and their check templates, built once per pair.

        A request's scopes and the names of its checks depend only on the key and the model, so they are
        cached (keyed by the policy object, which a key keeps until it is reloaded; bounded)."""
        cached = self._plans.get((id(policy), model))
        if cached is not None and cached[0] is policy:
            return cached[1]
        scopes = tuple(self.scopes(policy, model))
        plan = _Plan(scopes, _templates(scopes, False), _templates(scopes, True))
        if len(self._plans) >= _PLANS:
            self._plans.clear()
        self._plans[(id(policy), model)] = (policy, plan)
        return plan

    @staticmethod
    def _fill(templates: Sequence[_Template], lease: str, now: float) -> list[Check]:
        """The checks of ``templates`` for one request: its lease, and the budgets of the current day and month."""
        out: list[Check] = []
        periods: tuple[str, float, str, float] | None = None
        for item in templates:
            if isinstance(item, Check):
                out.append(item)
            elif item[0] == "streams":
                out.append(Check("streams", item[1], item[2], lease, LEASE_TTL))
            else:
                if periods is None:
                    periods = _periods(now)
                day, day_left, month, month_left = periods
                if item[3]:
                    out.append(Check("budget", item[1] + month, item[2], ttl=month_left))
                else:
                    out.append(Check("budget", item[1] + day, item[2], ttl=day_left))
        return out

    # -- the AdmissionRule ----------------------------------------------------------------------------

    async def admit(self, caller: Caller, request: ResponsesRequest, plan: Plan) -> Ticket | None:
        """Admit or refuse (429, or 503 when the backend is down and the deployment fails closed)."""
        policy = caller.key
        if policy is None:
            return None
        limits = self._plan(policy, request.model)
        if not limits.scopes:
            return None
        lease = os.urandom(12).hex()
        checks = self._fill(limits.checks, lease, self._clock())
        verdicts = await self._call("admit", self.backend.admit(checks))
        if verdicts is None:
            return None
        headers = rate_headers(checks, verdicts)
        leases: list[tuple[str, str]] = []
        for check, verdict in zip(checks, verdicts, strict=True):
            if not verdict.allowed:
                raise refusal([(c, v) for c, v in zip(checks, verdicts, strict=True) if not v.allowed], headers)
            if check.kind == "streams":
                leases.append((check.name, check.lease))
        for held in leases:
            self.leases[held] = None
        return Ticket(self, limits, leases, headers)

    async def headers(self, caller: Caller, model: str) -> Mapping[str, str]:
        """The rate-limit headers of ``caller`` now, without taking anything (read-only)."""
        policy = caller.key
        if policy is None:
            return {}
        checks = self._fill(self._plan(policy, model).rates, "", self._clock())
        if not checks:
            return {}
        verdicts = await self._call("peek", self.backend.admit(checks, commit=False), refuse=False)
        if verdicts is None:
            return {}
        return rate_headers(checks, [_unspent(c, v) for c, v in zip(checks, verdicts, strict=True)])

    async def settle(self, plan: _Plan, leases: Sequence[tuple[str, str]], entry: RequestEntry) -> None:
        """What an ended request charges: its leases back, its tokens and cost into the rates and budgets."""
        charges = [Charge("release", name, lease=lease) for name, lease in leases]
        for held in leases:
            self.leases.pop(held, None)
        if plan.charges:
            input_tokens, _, output, _ = tokens_of(entry.usage)
            tokens = input_tokens + output
            cost = cost_of(self.prices, entry) if self.prices else None
            periods: tuple[str, float, str, float] | None = None
            for kind, name, value, monthly in plan.charges:
                if kind == "tokens":
                    if tokens:
                        charges.append(Charge("tokens", name, tokens, value))
                    continue
                amount = tokens if kind == "bt" else cost
                if not amount:
                    continue
                if periods is None:
                    periods = _periods(self._clock())
                day, day_left, month, month_left = periods
                if monthly:
                    charges.append(Charge("add", name + month, amount, ttl=month_left + 60))
                else:
                    charges.append(Charge("add", name + day, amount, ttl=day_left + 60))
        if charges:
            await self._call("settle", self.backend.settle(charges), refuse=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: refresh the leases of this process's requests in flight every ``LEASE_TTL / 3`` s,
        and let the backend do its housekeeping every second."""
        task_status.started()
        refreshed = trio.current_time()
        while True:
            await trio.sleep(1.0)
            try:
                if self.leases and trio.current_time() - refreshed >= LEASE_TTL / 3:
                    refreshed = trio.current_time()
                    await self._call("refresh", self.backend.refresh(list(self.leases), LEASE_TTL), refuse=False)
                await self._call("maintain", self.backend.maintain(), refuse=False)
            except Exception:  # a bug must not end lease refreshes: log it and go on
                log.exception("limiter housekeeping failed")

    async def _call(self, op: str, call: Awaitable[T], *, refuse: bool = True) -> T | None:
        """One backend operation, timed; ``None`` when the backend is unavailable (or 503 when failing closed)."""
        started = time.perf_counter()
        try:
            result = await call
        except ControlUnavailable as exc:
            self._unavailable()
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                self._warned = now
                log.warning("limits backend unavailable (%s): %s", "refusing" if self.fail_closed else "admitting",
                            exc)
            if refuse and self.fail_closed:
                raise ControlUnavailable("Rate limits cannot be checked right now; retry shortly.",
                                         headers={"retry-after": "1"}) from exc
            return None
        finally:
            self._observe(op, time.perf_counter() - started)
        return result


def _unspent(check: Check, verdict: Verdict) -> Verdict:
    """A peeked ``requests`` verdict as it stands, without the request the check would have counted."""
    if check.kind != "requests" or not verdict.allowed:
        return verdict
    step = 60.0 / check.limit
    return Verdict(True, verdict.remaining + 1, max(0.0, verdict.reset - step))


def rate_headers(checks: Sequence[Check], verdicts: Sequence[Verdict]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers: for requests and for tokens, the scope with the least left."""
    requests: tuple[Check, Verdict] | None = None
    tokens: tuple[Check, Verdict] | None = None
    for check, verdict in zip(checks, verdicts, strict=True):
        kind = check.kind
        if kind == "requests":
            if requests is None or verdict.remaining < requests[1].remaining:
                requests = check, verdict
        elif kind == "tokens" and (tokens is None or verdict.remaining < tokens[1].remaining):
            tokens = check, verdict
    headers: dict[str, str] = {}
    for kind, found in (("requests", requests), ("tokens", tokens)):
        if found is not None:
            check, verdict = found
            headers[_LIMIT[kind]] = str(int(check.limit))
            headers[_REMAINING[kind]] = str(max(0, int(verdict.remaining)))
            headers[_RESET[kind]] = duration(verdict.reset)
    return headers


_LIMIT = {kind: f"x-ratelimit-limit-{kind}" for kind in ("requests", "tokens")}
_REMAINING = {kind: f"x-ratelimit-remaining-{kind}" for kind in ("requests", "tokens")}
_RESET = {kind: f"x-ratelimit-reset-{kind}" for kind in ("requests", "tokens")}


def refusal(refused: Sequence[tuple[Check, Verdict]], headers: dict[str, str]) -> LimitExceeded:
    """The 429 for the refused checks: ``insufficient_quota`` when a budget is among them, else a rate limit."""
    budgets = [(c, v) for c, v in refused if c.kind == "budget"]
    wait = max(v.retry_after for _, v in (budgets or refused))
    headers = {**headers, "retry-after": str(max(1, math.ceil(wait))),
               "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
    if budgets:
        what = "cost" if any(c.name.startswith("bc:") for c, _ in budgets) else "token"
        headers["x-should-retry"] = "false"
        return QuotaExceeded(f"You exceeded your current {what} budget for this key; it renews at the start of the "
                             "next UTC day or month.", headers=headers)
    kinds = {c.kind for c, _ in refused}
    if kinds == {"streams"}:
        message = "Too many concurrent requests for this key; retry when one has finished."
    else:
        what = " and ".join(k for k in ("requests", "tokens") if k in kinds) or "requests"
        message = f"Rate limit reached for {what} per minute on this key; retry after {headers['retry-after']} s."
    return LimitExceeded(message, headers=headers)


__all__ = ["LEASE_TTL", "Limiter", "Ticket", "cost_of", "duration", "price_of", "rate_headers", "refusal",
           "tokens_of"]
