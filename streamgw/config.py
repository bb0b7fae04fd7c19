"""Configuration: frozen dataclasses loaded from TOML and the environment.

Secrets are held in ``Secret`` so that no ``repr``, log line or error message can
show them by accident.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


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
    #: cap on open upstream connections (0: no cap); at the cap a request waits for a free one
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


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: who may read ``GET /metrics``."""

    #: true: ``/metrics`` needs ``Authorization: Bearer <gateway key>`` like ``/v1/*`` (401 otherwise)
    require_key: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole gateway configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth_keys: tuple[Secret, ...] = ()
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)

    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    store: StoreConfig = field(default_factory=lambda: StoreConfig(backend="memory"))
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def secrets(self) -> list[str]:
        """Every secret value, for redaction of upstream messages."""
        values = [k.get() for k in self.auth_keys]
        for provider in self.providers.values():
            values += [k.get() for k in (provider.api_key, *provider.extra_keys)]
        return [v for v in values if v]


class ConfigError(ValueError):
    """The configuration file or environment is invalid."""


# Native dialects detected from the environment: name -> (type, default base_url, key variable).
# OpenAI-compatible vendors come from ``streamgw.providers.presets``.
ENV_NATIVE: dict[str, tuple[str, str, str]] = {
    "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com", "GEMINI_API_KEY"),
}
_TIMEOUT_KEYS = ("connect", "first_token", "idle", "total", "keepalive")
_FLAG_KEYS = ("max_tokens_param", "system_role", "reasoning_style", "replay_reasoning", "stream_usage")


def supported_types() -> tuple[str, ...]:
    """Provider types this installation can serve: the installed dialects plus ``demo``."""
    from streamgw.providers.registry import dialects

    return (*dialects(), "demo")


def _timeouts(raw: Mapping[str, Any], base: Timeouts, where: str) -> Timeouts:
    values: dict[str, float] = {}
    for key in _TIMEOUT_KEYS:
        if key in raw:
            value = raw[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.{key} must be a number >= 0")
            values[key] = float(value)
    unknown = set(raw) - set(_TIMEOUT_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return replace(base, **values)


def _preset_defaults(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Base URL, key variable and flags of the preset this table names (if any)."""
    from streamgw.providers.presets import PRESETS

    preset_name = raw.get("preset")
    if preset_name is None and "type" not in raw and name in PRESETS:
        preset_name = name
    if preset_name is None:
        return {}
    preset = PRESETS.get(str(preset_name))
    if preset is None:
        raise ConfigError(f"providers.{name}.preset must be one of {', '.join(sorted(PRESETS))}")
    base_url = env.get(preset.base_url_env, "") if preset.base_url_env else ""
    return {"type": "chat", "base_url": base_url or preset.base_url, "api_key_env": preset.key_env,
            "flags": preset.flags}


def _timeout_overrides(raw: Mapping[str, Any], where: str) -> tuple[tuple[str, float], ...]:
    checked = _timeouts(raw, Timeouts(), where)  # validates keys and values
    return tuple((key, float(getattr(checked, key))) for key in _TIMEOUT_KEYS if key in raw)


def _provider(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    where = f"providers.{name}"
    defaults = _preset_defaults(name, raw, env)
    ptype = raw.get("type", defaults.get("type", "chat"))
    if ptype not in supported_types():
        raise ConfigError(f"{where}.type must be one of {', '.join(supported_types())}")
    key = raw.get("api_key")
    key_env = raw.get("api_key_env", defaults.get("api_key_env"))
    if key is None and key_env:
        key = env.get(str(key_env), "")
    extra_keys = [str(k) for k in raw.get("api_keys", [])]
    extra_keys += [env.get(str(var), "") for var in raw.get("api_key_envs", [])]
    if not key and extra_keys:
        key, extra_keys = extra_keys[0], extra_keys[1:]
    base_url = raw.get("base_url", defaults.get("base_url", ""))
    if ptype != "demo" and not base_url:
        raise ConfigError(f"{where}.base_url is required for type {ptype!r}")
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{where}.models must be a list of strings")
    flags = replace(defaults.get("flags", ChatFlags()), **{k: raw[k] for k in _FLAG_KEYS if k in raw})
    demo_raw = {k: float(raw[k]) for k in ("first_token_delay", "tokens_per_second") if k in raw}
    headers = raw.get("headers", {})
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=str(base_url).rstrip("/"),
        api_key=Secret(str(key or "")),
        extra_keys=tuple(Secret(k) for k in extra_keys if k),
        models=tuple(models),
        chat=flags,
        demo=DemoSettings(**demo_raw),
        timeouts=_timeout_overrides(raw.get("timeouts", {}), f"{where}.timeouts"),
        max_connections=_max_connections(raw.get("max_connections", 0), f"{where}.max_connections"),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
    )


def _max_connections(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be an integer >= 0 (0: no cap)")
    return value


def _env_providers(env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Providers implied by API-key variables (and ``OLLAMA_BASE_URL``) alone."""
    from streamgw.providers.presets import PRESETS

    found: dict[str, ProviderConfig] = {}
    types = supported_types()
    for name, (ptype, base_url, key_var) in ENV_NATIVE.items():
        if env.get(key_var) and ptype in types:
            found[name] = ProviderConfig(name=name, type=ptype, base_url=base_url, api_key=Secret(env[key_var]))
    if env.get("OPENAI_API_KEY") and "openai" not in found:  # no native dialect: OpenAI's chat endpoint
        found["openai"] = _provider("openai", {"preset": "openai-chat"}, env)
    for name, preset in PRESETS.items():
        has_key = bool(preset.key_env and env.get(preset.key_env))
        has_url = bool(preset.base_url_env and env.get(preset.base_url_env))
        if name not in ("openai-chat", "ollama-v1") and (has_key or (has_url and name == "vllm")):
            if preset.base_url or has_url:
                found[name] = _provider(name, {"preset": name}, env)
    if env.get("OLLAMA_BASE_URL") and "ollama" in types:
        found["ollama"] = ProviderConfig(name="ollama", type="ollama", base_url=env["OLLAMA_BASE_URL"].rstrip("/"))
    return found


def _route(name: str, raw: Mapping[str, Any], providers: Mapping[str, ProviderConfig]) -> RouteConfig:
    where = f"routes.{name}"
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"{where}.targets must be a non-empty list of \"provider/model\" strings")
    for target in targets:
        provider, sep, model = target.partition("/")
        if not sep or not model or provider not in providers:
            raise ConfigError(f"{where}: target {target!r} must be \"provider/model\" with a configured provider")
    if name in providers:
        raise ConfigError(f"{where}: a route cannot have the name of a provider")
    strategy = raw.get("strategy", "fallback")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}.strategy must be one of {', '.join(STRATEGIES)}")
    weights = tuple(float(w) for w in raw.get("weights", []))
    if weights and (len(weights) != len(targets) or any(w < 0 for w in weights) or not any(weights)):
        raise ConfigError(f"{where}.weights needs one non-negative weight per target, not all zero")
    numbers: dict[str, Any] = {}
    for key in ("hedge_delay", "backoff", "backoff_max", "cooldown_seconds"):
        if key in raw:
            numbers[key] = _non_negative(raw[key], f"{where}.{key}")
    ints: dict[str, Any] = {key: int(_non_negative(raw[key], f"{where}.{key}")) for key in
            ("max_attempts", "retries", "cooldown_failures") if key in raw}
    unknown = set(raw) - {"targets", "strategy", "weights", "timeouts", *numbers, *ints}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    route_timeouts = _timeout_overrides(raw.get("timeouts", {}), f"{where}.timeouts")
    return RouteConfig(name=name, targets=tuple(targets), strategy=strategy, weights=weights,
                       timeouts=route_timeouts, **numbers, **ints)


def _non_negative(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where} must be a number >= 0")
    return float(value)


_STORE_NUMBERS: dict[str, type] = {
    "retention_days": float, "max_response_bytes": int, "queue_size": int, "timeout": float,
}
_STORE_STRINGS = ("backend", "path", "url", "key_prefix")
_STORE_FLAGS = ("confirm_writes",)
_STORE_ENV = {"backend": "STREAMGW_STORE_BACKEND", "path": "STREAMGW_STORE_PATH", "url": "STREAMGW_REDIS_URL"}


def _store(raw: Mapping[str, Any], env: Mapping[str, str]) -> StoreConfig:
    """``[store]``, then the environment overrides; sqlite at ``./streamgw.db`` when nothing is said."""
    unknown = set(raw) - {*_STORE_STRINGS, *_STORE_NUMBERS, *_STORE_FLAGS}
    if unknown:
        raise ConfigError(f"store: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {key: str(raw[key]) for key in _STORE_STRINGS if key in raw}
    for key in _STORE_FLAGS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"store.{key} must be true or false")
            values[key] = raw[key]
    values.update({key: env[var] for key, var in _STORE_ENV.items() if env.get(var)})
    for key, kind in _STORE_NUMBERS.items():
        if key in raw:
            number = _non_negative(raw[key], f"store.{key}")
            if kind is int and number != int(number):
                raise ConfigError(f"store.{key} must be a whole number")
            values[key] = kind(number)
    store = StoreConfig(**values)
    if store.backend not in STORE_BACKENDS:
        raise ConfigError(f"store.backend must be one of {', '.join(STORE_BACKENDS)}")
    if store.backend == "redis":
        from streamgw.store.resp import RedisURL

        try:
            RedisURL.parse(store.url)
        except ValueError as exc:
            raise ConfigError(f"store.url must be a redis://[user:password@]host[:port][/db] URL: {exc}") from None
    if store.queue_size < 1 or store.max_response_bytes < 1:
        raise ConfigError("store.queue_size and store.max_response_bytes must be at least 1")
    return store


def _websocket_max_age(server_raw: Mapping[str, Any], env: Mapping[str, str]) -> float:
    """``[server] websocket_max_age`` in seconds, or ``$STREAMGW_WEBSOCKET_MAX_AGE`` over it."""
    value: Any = server_raw.get("websocket_max_age", 3600.0)
    if env.get("STREAMGW_WEBSOCKET_MAX_AGE"):
        try:
            value = float(env["STREAMGW_WEBSOCKET_MAX_AGE"])
        except ValueError:
            raise ConfigError("STREAMGW_WEBSOCKET_MAX_AGE must be a number >= 0") from None
    seconds = _non_negative(value, "server.websocket_max_age")
    if seconds != seconds:  # NaN slips through every comparison
        raise ConfigError("server.websocket_max_age must be a number >= 0")
    return seconds


def _server_seconds(server_raw: Mapping[str, Any], env: Mapping[str, str], key: str, default: float) -> float:
    """``[server] key`` in seconds (a number >= 0), with ``$STREAMGW_<KEY>`` over it."""
    value: Any = server_raw.get(key, default)
    where = f"server.{key}"
    variable = f"STREAMGW_{key.upper()}"
    if env.get(variable):
        where = variable
        try:
            value = float(env[variable])
        except ValueError:
            raise ConfigError(f"{where} must be a number >= 0") from None
    seconds = _non_negative(value, where)
    if seconds != seconds or seconds == math.inf:  # NaN and inf slip past the comparison
        raise ConfigError(f"{where} must be a finite number >= 0")
    return seconds


def _server_flag(server_raw: Mapping[str, Any], env: Mapping[str, str], key: str, default: bool) -> bool:
    """``[server] key`` (true or false), with ``$STREAMGW_<KEY>`` (1/0, true/false, yes/no, on/off) over it."""
    variable = f"STREAMGW_{key.upper()}"
    if env.get(variable):
        text = env[variable].strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"{variable} must be 1 or 0 (true/false, yes/no, on/off), got {env[variable]!r}")
        return text in ("1", "true", "yes", "on")
    value = server_raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"server.{key} must be true or false")
    return value


def _metrics(raw: Mapping[str, Any], env: Mapping[str, str]) -> MetricsConfig:
    """``[metrics] require_key``, with ``$STREAMGW_METRICS_REQUIRE_KEY`` over it."""
    if env.get("STREAMGW_METRICS_REQUIRE_KEY"):
        return MetricsConfig(require_key=_server_flag({}, env, "metrics_require_key", False))
    value = raw.get("require_key", False)
    if not isinstance(value, bool):
        raise ConfigError("metrics.require_key must be true or false")
    return MetricsConfig(require_key=value)


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file at ``path`` (or ``$STREAMGW_CONFIG``), falling back to the environment alone."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get("STREAMGW_CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    server_raw = raw.get("server", {})
    server = ServerConfig(
        host=str(env.get("STREAMGW_HOST", server_raw.get("host", "127.0.0.1"))),
        port=int(env.get("STREAMGW_PORT", server_raw.get("port", 8080))),
        workers=int(server_raw.get("workers", 1)),
        max_body_bytes=int(server_raw.get("max_body_bytes", 10 * 1024 * 1024)),
        graceful_timeout=float(server_raw.get("graceful_timeout", 3.0)),
        drain_timeout=_server_seconds(server_raw, env, "drain_timeout", 30.0),
        backlog=int(server_raw.get("backlog", 4096)),
        websocket_max_age=_websocket_max_age(server_raw, env),
        http2=_server_flag(server_raw, env, "http2", True),
        certfile=str(env.get("STREAMGW_CERTFILE") or server_raw.get("certfile", "")),
        keyfile=str(env.get("STREAMGW_KEYFILE") or server_raw.get("keyfile", "")),
    )
    if bool(server.certfile) != bool(server.keyfile):
        raise ConfigError("server.certfile and server.keyfile must be set together")
    keys_raw = raw.get("auth", {}).get("keys", [])
    if env.get("STREAMGW_API_KEYS"):
        keys_raw = [k.strip() for k in env["STREAMGW_API_KEYS"].split(",") if k.strip()]
    providers = _env_providers(env)
    for name, prov_raw in raw.get("providers", {}).items():
        providers[name] = _provider(name, prov_raw, env)
    if "demo" not in providers:
        providers["demo"] = ProviderConfig(name="demo", type="demo")
    timeouts = _timeouts(raw.get("timeouts", {}), Timeouts(), "timeouts")
    routes = {name: _route(name, route_raw, providers) for name, route_raw in raw.get("routes", {}).items()}
    return Config(
        server=server,
        auth_keys=tuple(Secret(str(k)) for k in keys_raw),
        providers=providers,
        timeouts=timeouts,
        routes=routes,
        store=_store(raw.get("store", {}), env),
        metrics=_metrics(raw.get("metrics", {}), env),
    )
