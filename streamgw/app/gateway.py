"""The gateway's shared state and its one authentication check: the composition of every layer below the app.

Front doors (``streamgw.app.streaming``, ``streamgw.app.websocket``) and the Quart routes
(``streamgw.app.routes``) all receive a ``Gateway``; none of them builds one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from hashlib import sha256
from typing import TYPE_CHECKING

from streamgw.app.metrics import Metrics, MetricsObserver
from streamgw.app.observers import Observers
from streamgw.app.requestlog import RequestLog
from streamgw.config import Config, KeyPolicy, StaticKey
from streamgw.engine.attempt import EngineContext
from streamgw.engine.health import Health
from streamgw.engine.lifecycle import ANONYMOUS, Caller, Responses
from streamgw.engine.routing import Router
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
    ids: list[str] = []
    for index, key in enumerate(keys):
        name = tenants[index] if index < len(tenants) else ""
        ids.append(f"t:{name}" if name else "key:" + sha256(key).hexdigest()[:24])
    return ids


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
        #: one tenant for every caller: without a store, a native upstream may then resolve ids itself
        self.sole_tenant = len({k.policy.tenant for k in self.static_keys.values()}) <= 1
        self.store = StoreService(config.store, self.metrics)
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
        #: the response lifecycle every front door hands its requests to
        self.responses = Responses(self.router, self.engine, self.store, self.observers, self.sole_tenant,
                                   tracing=self.tracing)
        self.ready = False

    @property
    def open_access(self) -> bool:
        """No key is configured: every request is the anonymous caller's."""
        return not self.static_keys

    def caller(self, header: str | None) -> Caller | None:
        """Who ``Authorization: Bearer <key>`` is (``None``: nobody we know); ``ANONYMOUS`` without keys.

        Keys are found by their SHA-256: the time taken depends on the digest of what was sent,
        which says nothing about how much of a real key it matched.  A disabled or expired key is
        nobody.
        """
        if self.open_access:
            return ANONYMOUS
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = sha256(token.strip().encode()).digest()
        static = self.static_keys.get(digest)
        if static is None or static.disabled or (static.expires is not None and time.time() >= static.expires):
            return None
        return Caller(static.policy.tenant, self._key_index.get(digest), static.policy)

    def authenticate(self, header: str | None) -> Caller:
        """The caller of ``Authorization: Bearer <key>``, or ``AuthenticationFailed`` (every front door's check)."""
        caller = self.caller(header)
        if caller is None:
            raise AuthenticationFailed("Missing or invalid gateway API key (use Authorization: Bearer <key>).")
        return caller

    def authorised(self, header: str | None) -> bool:
        """Whether ``header`` carries a valid gateway key (see ``caller``)."""
        return self.caller(header) is not None
