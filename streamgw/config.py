"""Configuration: frozen dataclasses loaded from TOML and the environment.

Secrets are held in ``Secret`` so that no ``repr``, log line or error message can
show them by accident.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class ChatFlags:
    """Quirks of an OpenAI-compatible Chat Completions server."""

    max_tokens_param: str = "max_tokens"  # or "max_completion_tokens" (OpenAI)
    system_role: str = "system"  # "developer" only for OpenAI
    supports_reasoning_effort: bool = True
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
    models: tuple[str, ...] = ()
    chat: ChatFlags = field(default_factory=ChatFlags)
    demo: DemoSettings = field(default_factory=DemoSettings)
    timeouts: Timeouts | None = None
    max_connections: int = 1000
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 10 * 1024 * 1024
    #: seconds in-flight requests get to finish after SIGTERM/SIGINT before they are cut
    graceful_timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole gateway configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth_keys: tuple[Secret, ...] = ()
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)

    def secrets(self) -> list[str]:
        """Every secret value, for redaction of upstream messages."""
        values = [k.get() for k in self.auth_keys]
        values += [p.api_key.get() for p in self.providers.values()]
        return [v for v in values if v]


class ConfigError(ValueError):
    """The configuration file or environment is invalid."""


# Providers detected from the environment when no config file names them:
# name -> (type, default base_url, key variable, chat flags)
ENV_PROVIDERS: dict[str, tuple[str, str, str, ChatFlags]] = {
    # OpenAI is served through its Chat Completions endpoint until the native Responses dialect lands.
    "openai": (
        "chat",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        ChatFlags(max_tokens_param="max_completion_tokens", system_role="developer"),
    ),
    "groq": ("chat", "https://api.groq.com/openai/v1", "GROQ_API_KEY", ChatFlags()),
    "openrouter": ("chat", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", ChatFlags()),
    "deepseek": ("chat", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", ChatFlags()),
    "xai": ("chat", "https://api.x.ai/v1", "XAI_API_KEY", ChatFlags()),
    "anthropic": ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", ChatFlags()),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com", "GEMINI_API_KEY", ChatFlags()),
}

def supported_types() -> tuple[str, ...]:
    """Provider types this installation can serve: the installed dialects plus ``demo``."""
    from streamgw.providers.registry import dialects

    return (*dialects(), "demo")


def _timeouts(raw: Mapping[str, Any], base: Timeouts, where: str) -> Timeouts:
    values: dict[str, float] = {}
    for key in ("connect", "first_token", "idle", "total"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.{key} must be a number >= 0")
            values[key] = float(value)
    unknown = set(raw) - {"connect", "first_token", "idle", "total"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return replace(base, **values)


def _provider(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    where = f"providers.{name}"
    ptype = raw.get("type", "chat")
    if ptype not in supported_types():
        raise ConfigError(f"{where}.type must be one of {', '.join(supported_types())}")
    key = raw.get("api_key")
    key_env = raw.get("api_key_env")
    if key is None and key_env:
        key = env.get(str(key_env), "")
    if ptype != "demo" and not raw.get("base_url"):
        raise ConfigError(f"{where}.base_url is required for type {ptype!r}")
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{where}.models must be a list of strings")
    chat_raw = {k: raw[k] for k in ("max_tokens_param", "system_role") if k in raw}
    demo_raw = {k: float(raw[k]) for k in ("first_token_delay", "tokens_per_second") if k in raw}
    headers = raw.get("headers", {})
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=str(raw.get("base_url", "")).rstrip("/"),
        api_key=Secret(str(key or "")),
        models=tuple(models),
        chat=ChatFlags(**chat_raw),
        demo=DemoSettings(**demo_raw),
        timeouts=_timeouts(raw["timeouts"], Timeouts(), f"{where}.timeouts") if "timeouts" in raw else None,
        max_connections=int(raw.get("max_connections", 1000)),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
    )


def _env_providers(env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    found: dict[str, ProviderConfig] = {}
    for name, (ptype, base_url, key_var, flags) in ENV_PROVIDERS.items():
        if env.get(key_var) and ptype in supported_types():
            found[name] = ProviderConfig(
                name=name, type=ptype, base_url=base_url, api_key=Secret(env[key_var]), chat=flags
            )
    return found


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
    )
    keys_raw = raw.get("auth", {}).get("keys", [])
    if env.get("STREAMGW_API_KEYS"):
        keys_raw = [k.strip() for k in env["STREAMGW_API_KEYS"].split(",") if k.strip()]
    providers = _env_providers(env)
    for name, prov_raw in raw.get("providers", {}).items():
        providers[name] = _provider(name, prov_raw, env)
    if "demo" not in providers:
        providers["demo"] = ProviderConfig(name="demo", type="demo")
    timeouts = _timeouts(raw.get("timeouts", {}), Timeouts(), "timeouts")
    return Config(
        server=server,
        auth_keys=tuple(Secret(str(k)) for k in keys_raw),
        providers=providers,
        timeouts=timeouts,
    )
