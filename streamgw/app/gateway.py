"""The gateway's shared state and its one authentication check: the composition of every layer below the app.

Front doors (``streamgw.app.streaming``, ``streamgw.app.websocket``) and the Quart routes
(``streamgw.app.routes``) all receive a ``Gateway``; none of them builds one.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from hashlib import sha256

from streamgw.app.metrics import Metrics, MetricsObserver
from streamgw.app.observers import Observers
from streamgw.app.requestlog import RequestLog
from streamgw.config import Config
from streamgw.engine.attempt import EngineContext
from streamgw.engine.health import Health
from streamgw.engine.lifecycle import ANONYMOUS, Caller, Responses
from streamgw.engine.routing import Router
from streamgw.errors import AuthenticationFailed
from streamgw.providers.base import Dialect
from streamgw.providers.registry import dialects
from streamgw.store.service import StoreService
from streamgw.transport.upstream import UpstreamClients


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
        self.metrics = Metrics([*config.providers, *config.routes], known_models(config, self.router))
        self.secrets = config.secrets()
        health = Health(on_cooldown=lambda provider: self.metrics.cooldowns.labels(provider).inc())
        self.engine = EngineContext(self.clients, self.dialects, self.secrets, health, config.timeouts)
        #: graceful shutdown: ``begin`` turns /readyz to 503 and gives every run its deadline
        self.drain = self.engine.drain
        self.keys = [k.get().encode() for k in config.auth_keys]
        self.tenants = tenant_ids(self.keys, config.auth_tenants)
        #: one tenant for every caller: without a store, a native upstream may then resolve ids itself
        self.sole_tenant = len(set(self.tenants)) <= 1
        self.store = StoreService(config.store, self.metrics)
        #: the response lifecycle every front door hands its requests to
        #: the request log (one line per request); ``routes`` logs the other HTTP routes with it
        self.request_log = RequestLog(config.logging, self.secrets)
        #: every observer of the lifecycle's requests: one more is one ``observers.add(...)``
        self.observers = Observers(MetricsObserver(self.metrics), self.request_log)
        self.responses = Responses(self.router, self.engine, self.store, self.observers, self.sole_tenant)
        self.ready = False

    def caller(self, header: str | None) -> Caller | None:
        """Who ``Authorization: Bearer <key>`` is (``None``: nobody we know); ``ANONYMOUS`` without keys.

        Every key is compared, in constant time each, whichever matches: the time taken says
        nothing about which key (or how much of one) was right.
        """
        if not self.keys:
            return ANONYMOUS
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        matched: int | None = None
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(given, key) and matched is None:
                matched = index
        if matched is None or scheme.lower() != "bearer":
            return None
        return Caller(self.tenants[matched], matched)

    def authenticate(self, header: str | None) -> Caller:
        """The caller of ``Authorization: Bearer <key>``, or ``AuthenticationFailed`` (every front door's check)."""
        caller = self.caller(header)
        if caller is None:
            raise AuthenticationFailed("Missing or invalid gateway API key (use Authorization: Bearer <key>).")
        return caller

    def authorised(self, header: str | None) -> bool:
        """Whether ``header`` carries a valid gateway key (see ``caller``)."""
        return self.caller(header) is not None
