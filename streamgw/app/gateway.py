"""The gateway's shared state and its one authentication check: the composition of every layer below the app.

Front doors (``streamgw.app.streaming``, ``streamgw.app.websocket``) and the Quart routes
(``streamgw.app.routes``) all receive a ``Gateway``; none of them builds one.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import TYPE_CHECKING

from streamgw.app.metrics import Metrics, MetricsObserver
from streamgw.app.observers import Observers
from streamgw.app.requestlog import RequestLog
from streamgw.config import Config, KeyPolicy, StaticKey, tenant_id
from streamgw.control import open_control
from streamgw.control.keys import KeyStore, ManagedKey, ManagedKeys, MemoryKeyStore, is_managed_secret
from streamgw.control.keys_redis import RedisKeyStore
from streamgw.control.keys_sqlite import SQLiteKeyStore
from streamgw.control.usage import UsageWriter
from streamgw.engine.attempt import EngineContext
from streamgw.engine.health import Health
from streamgw.engine.lifecycle import ANONYMOUS, Caller, Responses
from streamgw.engine.limits import Limiter
from streamgw.engine.routing import Router
from streamgw.engine.usage import UsageObserver
from streamgw.errors import AuthenticationFailed
from streamgw.providers.base import Dialect
from streamgw.providers.registry import dialects
from streamgw.store.service import StoreService
from streamgw.transport.upstream import UpstreamClients

if TYPE_CHECKING:
    from streamgw.app.tracing import Tracing


def tenant_ids(keys: Sequence[bytes], tenants: Sequence[str]) -> list[str]:
    """The tenant id of each key: ``t:<name>`` for an explicit tenant, else ``key:<hash>`` of its own.

    The ids are written into every stored record, so a key's own id is a hash of it, never the key.
    """
    return [tenant_id(tenants[index] if index < len(tenants) else "", sha256(key).digest())
            for index, key in enumerate(keys)]


def key_store(config: Config) -> KeyStore:
    """The backend of managed keys that ``[control]`` names."""
    kind, where, prefix = config.control_backend()
    timeout = config.control.timeout
    if kind == "sqlite":
        return SQLiteKeyStore(where, timeout=timeout)
    if kind == "redis":
        return RedisKeyStore(where, key_prefix=prefix, timeout=timeout)
    return MemoryKeyStore()


#: the 401 of every front door: a missing, unknown, disabled or expired key alike
_NO_KEY = "Missing or invalid gateway API key (use Authorization: Bearer <key>)."


def known_models(config: Config, router: Router) -> list[str]:
    """What a ``model`` label may show: routes, configured model names and ``provider/model``."""
    names = [mid for mid, _ in router.listed_models()]
    for provider in config.providers.values():
        names += provider.models
    return names


class Gateway:
    """Everything the routes share: config, router, upstream clients, dialects, metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.clients = UpstreamClients(config.fetch)
        self.dialects: dict[str, Dialect] = dialects()
        # the only provider labels; the only model labels (the rest: "other")
        # the first key labels: the configured keys' names ([auth] keys are auth-1, auth-2, ...)
        key_names = [f"auth-{i + 1}" for i in range(len(config.auth_keys))] + [k.policy.name for k in config.keys]
        self.metrics = Metrics([*config.providers, *config.routes], known_models(config, self.router), key_names)
        self.secrets = config.secrets()
        health = Health(on_cooldown=lambda provider: self.metrics.cooldowns.labels(provider).inc())
        self.engine = EngineContext(self.clients, self.dialects, self.secrets, health, config.timeouts)
        #: graceful shutdown: ``begin`` turns /readyz to 503 and gives every run its deadline
        self.drain = self.engine.drain
        self.keys = [k.get().encode() for k in config.auth_keys]
        self.tenants = tenant_ids(self.keys, config.auth_tenants)
        #: every static key by its SHA-256: ``[auth] keys`` (named ``auth-1``, ``auth-2``, ...) and ``[keys.NAME]``
        self.static_keys: dict[bytes, StaticKey] = {}
        self._key_index: dict[bytes, int] = {}  # the ``[auth] keys`` index of a digest (``Caller.key_index``)
        for index, key in enumerate(self.keys):
            digest = sha256(key).digest()
            policy = KeyPolicy(name=f"auth-{index + 1}", tenant=self.tenants[index])
            self.static_keys.setdefault(digest, StaticKey(policy, digest))
            self._key_index.setdefault(digest, index)
        for static in config.keys:
            self.static_keys[static.digest] = static
        #: managed keys (the admin API's): on whenever auth is, i.e. with a gateway key or an admin key configured
        self.managed: ManagedKeys | None = None
        if self.static_keys or config.admin_key is not None:
            self.managed = ManagedKeys(key_store(config), timeout=config.control.timeout,
                                       reserved={k.policy.name for k in self.static_keys.values()})
        #: one tenant for every caller: without a store, a native upstream may then resolve ids itself
        self.sole_tenant = self.managed is None or (
            config.admin_key is None and len({k.policy.tenant for k in self.static_keys.values()}) <= 1)
        self.store = StoreService(config.store, self.metrics)
        #: limits, budgets and usage: one shared backend ([control]), the limiter, the usage writer
        self.control = open_control(config)
        metrics = self.metrics
        # each operation's histogram child looked up once, when first used (``labels`` costs more than ``observe``)
        timers: dict[str, Callable[[float], None]] = {}

        def observe(op: str, seconds: float) -> None:
            timer = timers.get(op)
            if timer is None:
                timer = timers[op] = metrics.control_seconds.labels(op).observe
            timer(seconds)

        self.limiter = Limiter(
            self.control, tenant_limits=config.tenant_limits, prices=config.prices,
            on_unavailable=config.control.on_unavailable,
            observe=observe,
            unavailable=metrics.control_unavailable.inc)
        self.usage = UsageWriter(self.control, dropped=metrics.usage_dropped.inc,
                                 observe=metrics.control_seconds.labels("usage").observe)
        #: the request log (one line per request); ``routes`` logs the other HTTP routes with it
        self.request_log = RequestLog(config.logging, self.secrets)
        #: every observer of the lifecycle's requests: one more is one ``observers.add(...)``
        self.observers = Observers(MetricsObserver(self.metrics), self.request_log)
        #: OpenTelemetry traces (``[tracing] enabled``); ``None``: off, and nothing of OpenTelemetry is imported
        self.tracing: Tracing | None = None
        if config.tracing.enabled:
            from streamgw.app.tracing import Tracing  # the otel extra, loaded only when it is used

            self.tracing = Tracing(config)
            self.observers.add(self.tracing)
        self.observers.add(UsageObserver(self.usage, config.prices))
        #: the response lifecycle every front door hands its requests to
        self.responses = Responses(self.router, self.engine, self.store, self.observers, self.sole_tenant,
                                   admission=(self.limiter,), tracing=self.tracing,
                                   phases=config.logging.phases and config.logging.requests)
        self.ready = False

    @property
    def open_access(self) -> bool:
        """No key is configured (neither a gateway key nor an admin key): every request is the anonymous caller's."""
        return not self.static_keys and self.managed is None

    def caller(self, header: str | None) -> Caller | None:
        """Who ``Authorization: Bearer <key>`` is, as far as this worker knows without asking the control backend
        (``None``: nobody it knows); ``ANONYMOUS`` without keys.  ``authenticate`` asks the backend too."""
        if self.open_access:
            return ANONYMOUS
        digest = _digest(header)
        if digest is None:
            return None
        static = self.static_keys.get(digest)
        if static is not None:
            return self._static_caller(static)
        if self.managed is not None:
            hit = self.managed.cached(digest)
            if isinstance(hit, ManagedKey):
                return _managed_caller(hit)
        return None

    async def authenticate(self, header: str | None) -> Caller:
        """The caller of ``Authorization: Bearer <key>``, or ``AuthenticationFailed`` (every front door's check).

        Keys are found by their SHA-256: the time taken depends on the digest of what was sent, which
        says nothing about how much of a real key it matched.  A disabled or expired key is nobody.  A
        token of the managed form that this worker has not cached is looked up in the control backend;
        while that does not answer, such a token gets ``ControlUnavailable`` (503) — never let in unchecked.
        """
        if self.open_access:
            return ANONYMOUS
        token = _token(header)
        if token is not None:
            digest = sha256(token.encode()).digest()
            static = self.static_keys.get(digest)
            if static is not None:
                caller = self._static_caller(static)
                if caller is not None:
                    return caller
            elif self.managed is not None and is_managed_secret(token):
                key = await self.managed.lookup(digest)
                caller = None if key is None else _managed_caller(key)
                if caller is not None:
                    return caller
        raise AuthenticationFailed(_NO_KEY)

    def _static_caller(self, static: StaticKey) -> Caller | None:
        if static.disabled or (static.expires is not None and time.time() >= static.expires):
            return None
        return Caller(static.policy.tenant, self._key_index.get(static.digest), static.policy)

    async def authorised(self, header: str | None) -> bool:
        """Whether ``header`` carries a valid gateway key (see ``authenticate``)."""
        try:
            await self.authenticate(header)
        except AuthenticationFailed:
            return False
        return True

    def check_admin(self, header: str | None) -> None:
        """``AuthenticationFailed`` unless ``header`` carries the ``[admin] key`` (compared in constant time).

        Only the admin key passes: a gateway key, however privileged, is not one.  Without an admin key the
        admin routes do not exist at all (``streamgw.app.admin``).
        """
        admin = self.config.admin_key
        token = _token(header)
        if admin is None or token is None or not hmac.compare_digest(
                sha256(token.encode()).digest(), sha256(admin.get().encode()).digest()):
            raise AuthenticationFailed("Missing or invalid admin key (use Authorization: Bearer <admin key>).",
                                       headers={"www-authenticate": "Bearer"})


def _token(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _digest(header: str | None) -> bytes | None:
    token = _token(header)
    return None if token is None else sha256(token.encode()).digest()


def _managed_caller(key: ManagedKey) -> Caller | None:
    return Caller(key.policy.tenant, None, key.policy) if key.usable(time.time()) else None
