"""Configuration: frozen dataclasses loaded from TOML and the environment.

``load_config`` checks the file and the ``STREAMGW_*`` variables against the schema in
``streamgw.config_schema`` and converts them into these dataclasses, which the rest of the
gateway reads (and tests build directly).

Secrets are held in ``Secret`` so that no ``repr``, log line or error message can
show them by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit


class Secret:
    """A string that never shows itself in ``repr``/``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret value, for the one place that must send it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; 0 means no limit (``total``) or off."""

    connect: float = 5.0
    first_token: float = 30.0
    idle: float = 60.0
    total: float = 0.0
    #: an SSE comment every this many seconds while the upstream is silent (0: off)
    keepalive: float = 15.0

    def merged(self, *overrides: tuple[tuple[str, float], ...]) -> Timeouts:
        """These timeouts with each override applied in turn (global < provider < route)."""
        result = self
        for override in overrides:
            if override:
                result = replace(result, **dict(override))
        return result


@dataclass(frozen=True, slots=True)
class ChatFlags:
    """Quirks of an OpenAI-compatible Chat Completions server."""

    max_tokens_param: str = "max_tokens"  # or "max_completion_tokens" (OpenAI, Xiaomi)
    system_role: str = "system"  # "developer" only for OpenAI
    #: how reasoning.effort is sent: reasoning_effort | openrouter | thinking | enable_thinking | none
    reasoning_style: str = "reasoning_effort"
    #: the assistant-message field that replays earlier reasoning (DeepSeek: reasoning_content,
    #: vLLM: reasoning); None: reasoning items are not sent back
    replay_reasoning: str | None = None
    stream_usage: bool = True  # send stream_options.include_usage


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Pacing of the built-in demo provider."""

    first_token_delay: float = 0.25
    tokens_per_second: float = 40.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream provider as configured."""

    name: str
    type: str  # openai | chat | anthropic | gemini | ollama | demo
    base_url: str = ""
    api_key: Secret = field(default_factory=lambda: Secret(""))
    #: more keys of the same account pool; requests spread over all keys by least in-flight
    extra_keys: tuple[Secret, ...] = ()
    models: tuple[str, ...] = ()
    chat: ChatFlags = field(default_factory=ChatFlags)
    demo: DemoSettings = field(default_factory=DemoSettings)
    #: only the keys set in ``[providers.NAME.timeouts]``; see ``Timeouts.merged``
    timeouts: tuple[tuple[str, float], ...] = ()
    #: cap on pooled upstream connections of this provider (0: no cap)
    max_connections: int = 0
    headers: tuple[tuple[str, str], ...] = ()


STRATEGIES = ("fallback", "hedge", "weighted")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A virtual model: several ``provider/model`` targets and how to use them."""

    name: str
    targets: tuple[str, ...]
    strategy: str = "fallback"  # fallback | hedge | weighted
    weights: tuple[float, ...] = ()  # weighted: one per target (default all 1)
    hedge_delay: float = 1.0  # hedge: seconds without a first delta before the next attempt starts
    max_attempts: int = 0  # attempts across targets and retries (0: one per target plus retries)
    retries: int = 0  # extra attempts on the same target after a retryable failure
    backoff: float = 0.25  # first retry delay in seconds; doubled each retry, jittered, capped
    backoff_max: float = 8.0
    cooldown_failures: int = 3  # consecutive failures that put a target in cooldown (0: never)
    cooldown_seconds: float = 30.0
    #: only the keys set in ``[routes.NAME.timeouts]``
    timeouts: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 10 * 1024 * 1024
    #: seconds in-flight requests get to finish after SIGTERM/SIGINT; then streams end with
    #: ``response.failed`` and non-streamed requests with a 503 (``streamgw serve``)
    drain_timeout: float = 30.0
    #: seconds after the drain deadline for the last bytes to be written before connections are
    #: closed hard (the drain's margin; hypercorn's own ``graceful_timeout`` when run by hand)
    graceful_timeout: float = 3.0
    #: listen queue length: bursts of new connections beyond it are dropped by the kernel
    backlog: int = 4096
    #: seconds a WebSocket-mode connection may live before ``websocket_connection_limit_reached`` (0: no limit)
    websocket_max_age: float = 3600.0
    #: accept HTTP/2: h2c (prior knowledge, ``Upgrade: h2c``) on cleartext, ALPN ``h2`` with TLS
    http2: bool = True
    #: TLS certificate chain and private key (PEM files); both set: the port serves HTTPS only
    certfile: str = ""
    keyfile: str = ""
    #: open client connections per worker (0: automatic, from the open-file limit)
    max_connections: int = 0
    #: seconds a client gets to send a request body
    body_timeout: float = 30.0
    #: request body bytes held in memory at once over all requests of a worker (0: no cap)
    max_body_bytes_in_flight: int = 64 * 1024 * 1024


STORE_BACKENDS = ("sqlite", "redis", "memory", "none")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where responses are kept for ``GET /v1/responses/{id}`` and ``previous_response_id``.

    ``load_config`` defaults to SQLite at ``./streamgw.db``; a ``Config`` built in code
    (tests, embedding) defaults to the process-local ``memory`` backend, so that it never
    writes a file nobody asked for.
    """

    backend: str = "sqlite"  # sqlite | redis | memory (one process, lost on exit) | none
    path: str = "streamgw.db"  # sqlite: the database file, created on first start
    url: str = "redis://127.0.0.1:6379/0"  # redis
    key_prefix: str = "streamgw:"  # redis: every key starts with it
    retention_days: float = 30.0  # stored responses expire after this long (0: never)
    max_response_bytes: int = 1024 * 1024  # a bigger record is not stored (a warning and a metric)
    queue_size: int = 1000  # records waiting for the writer task; beyond it they are dropped
    timeout: float = 2.0  # seconds for one store operation before it counts as down
    #: a response's terminal event waits (at most ``timeout``) until its record is written, so that
    #: another gateway instance can continue it at once; false: never waited for
    confirm_writes: bool = True
    #: a stream's ``in_progress`` snapshot goes to the backend only if the stream still runs this many
    #: seconds after it started (0: at once); this instance reads it at once either way
    snapshot_after: float = 1.0


@dataclass(frozen=True, slots=True)
class RedisURL:
    """What a ``redis://[user:password@]host[:port][/db]`` URL (``[store] url``) says.

    Here rather than in ``streamgw.store.resp``, its user: the config checks ``[store] url`` with it,
    and the config sits below the store.
    """

    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """Parse ``url``; ``ValueError`` if it is not a ``redis://`` URL."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"not a redis:// URL: {url!r}")
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname, port=parts.port or 6379, db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """``[fetch]``: limits on the URLs (images, files) the gateway downloads on a client's behalf."""

    #: host names, IP addresses or CIDR networks fetched even though they are not public
    allow_hosts: tuple[str, ...] = ()
    max_urls: int = 16  # per request
    max_bytes: int = 20 * 1024 * 1024  # per URL
    max_total_bytes: int = 50 * 1024 * 1024  # per request
    concurrency: int = 4  # downloads at once per request
    timeout: float = 15.0  # seconds per URL
    max_redirects: int = 3


#: where managed keys, rate-limit counters, budgets and usage live (``[control] backend``)
CONTROL_BACKENDS = ("auto", "sqlite", "redis", "memory")


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """``[control]``: the shared state of keys, limits and usage.

    ``auto``: Redis when ``[store] backend = "redis"`` (same URL and prefix, so instances that share
    a store share their limits), memory with a memory store, else SQLite at ``path`` (one file the
    workers of one machine share).
    ``memory`` is one process's only: a limit is then per worker.  ``on_unavailable`` says what a
    request meets while the backend cannot be reached: ``open`` (admitted, counted in a warning
    metric) or ``closed`` (503).
    """

    backend: str = "auto"
    path: str = "streamgw-control.db"
    url: str = ""  # redis: "" = the store's URL
    key_prefix: str = ""  # redis: "" = the store's prefix
    timeout: float = 1.0  # seconds for one operation before the backend counts as unavailable
    on_unavailable: str = "open"  # open | closed


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits and budgets of one key, tenant, or key and model; 0 means "no limit" for each.

    Rates are per minute; token budgets per calendar day / month (UTC); cost budgets in USD and
    only where a price table prices the model.
    """

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    concurrent_streams: int = 0
    tokens_per_day: int = 0
    tokens_per_month: int = 0
    cost_per_day: float = 0.0
    cost_per_month: float = 0.0

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return any((self.requests_per_minute, self.tokens_per_minute, self.concurrent_streams,
                    self.tokens_per_day, self.tokens_per_month, self.cost_per_day, self.cost_per_month))


#: what a key's name (``[keys.NAME]``, a managed key's ``name``) and a tenant may look like; the config
#: schema and the admin API check the same rules
KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
#: a key's ``models`` patterns and ``model_limits`` entries: at most this many, each at most this long
MAX_MODEL_PATTERNS = 256
MAX_MODEL_PATTERN_LENGTH = 256


def tenant_id(tenant: str, digest: bytes) -> str:
    """The tenant id a key's stored responses carry: ``t:<tenant>`` when it names one, else ``key:<hash>``.

    A key without a tenant is its own: its id is a prefix of its SHA-256 ``digest``, never the key.
    """
    return f"t:{tenant}" if tenant else "key:" + digest.hex()[:24]


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Who a gateway key is and what it may do: a ``[keys.NAME]`` table or a managed key.

    ``name`` is what logs, metrics and usage show (never the key); ``tenant`` the tenant id its
    stored responses belong to.  ``models``: patterns (``fnmatch``) of the model and route names
    the key may ask for, ``()`` for all.  ``model_limits``: (pattern, limits) pairs, the first
    pattern that matches a request's model applies besides ``limits``.
    """

    name: str
    tenant: str
    models: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    model_limits: tuple[tuple[str, Limits], ...] = ()
    managed: bool = False


@dataclass(frozen=True, slots=True)
class StaticKey:
    """A ``[keys.NAME]`` table: a gateway key known to the config, by its SHA-256 (``digest``).

    ``secret`` is the key itself when the config gave it (``key``/``key_env``), ``None`` when it
    gave only ``key_sha256``.  ``expires``: Unix time after which the key is refused (``None``: never).
    """

    policy: KeyPolicy
    digest: bytes
    secret: Secret | None = None
    expires: float | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Price:
    """``[prices."PATTERN"]``: USD per million tokens of the models ``pattern`` (``fnmatch``) matches.

    The pattern is matched against ``provider/model`` of the upstream model that served a response,
    then against the bare upstream model; the first table (in file order) that matches prices it.
    ``cached_input`` defaults to ``input``.  Output tokens include reasoning tokens (as in the usage).
    """

    pattern: str
    input: float = 0.0
    cached_input: float | None = None
    output: float = 0.0

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """USD for one response's usage."""
        cached = min(max(cached_tokens, 0), max(input_tokens, 0))
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((input_tokens - cached) * self.input + cached * cached_rate + output_tokens * self.output) / 1e6


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: who may read ``GET /metrics``."""

    require_key: bool = False  # true: only with a gateway key


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``[logging]``: the request log, one line per request when it ends.

    ``file``: "" writes to stderr, else the path is opened with ``O_APPEND`` (every worker of
    ``--workers N`` appends whole lines to the same file).  ``bodies``: the callers whose request
    input and response output text are logged too (``"key:NAME"``, ``"tenant:NAME"``, ``"*"``);
    nobody's by default.  ``body_max_chars`` caps each of the two texts.  ``requests = false``
    turns the request log off (the gateway's own warnings and errors still go to stderr).
    ``phases``: each line also has ``phases_ms``, where the time to the first event went (parse,
    route, store, admission, upstream, translate, emit, write); off, no timestamp is taken for it.
    """

    format: str = "text"  # text | json
    file: str = ""
    requests: bool = True
    bodies: tuple[str, ...] = ()
    body_max_chars: int = 2000
    phases: bool = False


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry traces (the ``otel`` extra), exported over OTLP/HTTP.

    Where to and how are the SDK's own ``OTEL_*`` variables (endpoint, headers, sampler, service
    name, batching); off, nothing of OpenTelemetry is imported.
    """

    enabled: bool = False


#: the modules ``[tracing] enabled`` needs (``pip install 'streamgw[otel]'``), by the distribution that has them
OTEL_MODULES = (("opentelemetry.sdk", "opentelemetry-sdk"),
                ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"))


def missing_otel() -> list[str]:
    """The distributions of ``OTEL_MODULES`` that are not installed (found without importing them)."""
    from importlib.util import find_spec

    missing = []
    for module, distribution in OTEL_MODULES:
        try:
            found = find_spec(module) is not None
        except ImportError:  # a parent package is missing (or is something else)
            found = False
        if not found:
            missing.append(distribution)
    return missing


@dataclass(frozen=True, slots=True)
class Config:
    """The whole gateway configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth_keys: tuple[Secret, ...] = ()
    #: the tenant of each key in ``auth_keys`` (same length; "": the key is its own tenant), or ()
    auth_tenants: tuple[str, ...] = ()
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)

    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    store: StoreConfig = field(default_factory=lambda: StoreConfig(backend="memory"))
    fetch: FetchConfig = field(default_factory=FetchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: built in code (tests, embedding): memory, like ``store``, so that no file appears nobody asked for
    control: ControlConfig = field(default_factory=lambda: ControlConfig(backend="memory"))
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: ``[keys.NAME]`` tables, in file order
    keys: tuple[StaticKey, ...] = ()
    #: ``[admin] key``: what the admin API (managed keys, everyone's usage) requires; ``None``: no admin API
    admin_key: Secret | None = None
    tracing: TracingConfig = field(default_factory=TracingConfig)
    #: ``[tenants.NAME]``: limits and budgets a tenant's keys share, by tenant name (``tenant = "NAME"``)
    tenant_limits: Mapping[str, Limits] = field(default_factory=dict)
    #: ``[prices."PATTERN"]`` tables, in file order
    prices: tuple[Price, ...] = ()

    def __post_init__(self) -> None:
        if self.auth_tenants and len(self.auth_tenants) != len(self.auth_keys):
            raise ValueError("auth_tenants needs one entry per auth key")

    def control_backend(self) -> tuple[str, str, str]:
        """Where keys, limits and usage live: ``("sqlite", path, "")``, ``("redis", url, prefix)`` or
        ``("memory", "", "")`` — ``[control] backend = "auto"`` resolved against ``[store]``."""
        control, store = self.control, self.store
        backend = control.backend
        if backend == "auto":  # follows the store: redis, memory (one process), else SQLite
            backend = store.backend if store.backend in ("redis", "memory") else "sqlite"
        if backend == "redis":
            return "redis", control.url or store.url, control.key_prefix or store.key_prefix
        if backend == "sqlite":
            return "sqlite", control.path, ""
        return "memory", "", ""

    def secrets(self) -> list[str]:
        """Every secret value, for redaction of upstream messages."""
        values = [k.get() for k in self.auth_keys]
        values += [k.secret.get() for k in self.keys if k.secret is not None]
        if self.admin_key is not None:
            values.append(self.admin_key.get())
        for provider in self.providers.values():
            values += [k.get() for k in (provider.api_key, *provider.extra_keys)]
        return [v for v in values if v]


class ConfigError(ValueError):
    """The configuration file or environment is invalid.

    ``problems`` lists every problem found (each names the file or variable, the table and the
    key); ``str()`` joins them one per line.  No problem ever shows a secret's value.
    """

    def __init__(self, *problems: str) -> None:
        self.problems: tuple[str, ...] = problems
        super().__init__("\n".join(problems))


#: every provider ``type`` a config may name: the wire dialects of ``streamgw.providers.registry`` (one
#: module each) and ``demo``.  Written out here, not asked of the registry: the config sits below the
#: providers, which import it (``tests/test_layers.py`` checks the two agree).
PROVIDER_TYPES: tuple[str, ...] = ("chat", "openai", "anthropic", "gemini", "ollama", "demo")

# Native dialects detected from the environment: name -> (type, default base_url, key variable).
# OpenAI-compatible vendors come from ``streamgw.config_presets``.
ENV_NATIVE: dict[str, tuple[str, str, str]] = {
    "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com", "GEMINI_API_KEY"),
}


def supported_types() -> tuple[str, ...]:
    """Provider types a config may name (``PROVIDER_TYPES``)."""
    return PROVIDER_TYPES
