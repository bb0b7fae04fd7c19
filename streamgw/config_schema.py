"""The schema of the config file and of the ``STREAMGW_*`` environment, and its conversion to ``Config``.

The TOML document is validated by pydantic models (strict: no coercion of a list into a string or
of a boolean into a number; every table forbids unknown keys; numbers are finite), then converted
into the frozen dataclasses of ``streamgw.config`` that the rest of the gateway reads.  Every
problem is collected and reported at once, each naming the file (or variable), the table and the
key, with a "did you mean" when a known key is close.  Messages never show a value from the file:
any of them may be a secret.

Only ``streamgw.config_loader.load_config`` imports this module (pydantic is not cheap to import).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, time
from hashlib import sha256
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from streamgw.config import (
    CONTROL_BACKENDS,
    ENV_NATIVE,
    KEY_NAME_PATTERN,
    LOG_FORMATS,
    MAX_MODEL_PATTERN_LENGTH,
    MAX_MODEL_PATTERNS,
    STORE_BACKENDS,
    STRATEGIES,
    TENANT_PATTERN,
    ChatFlags,
    Config,
    ConfigError,
    ControlConfig,
    DemoSettings,
    FetchConfig,
    KeyPolicy,
    Limits,
    LoggingConfig,
    MetricsConfig,
    Price,
    ProviderConfig,
    RedisURL,
    RouteConfig,
    Secret,
    ServerConfig,
    StaticKey,
    StoreConfig,
    Timeouts,
    TracingConfig,
    missing_otel,
    supported_types,
    tenant_id,
)

__all__ = ["MAX_PROBLEMS", "ConfigFile", "build_config"]

#: problems listed before the rest are summarised (a file of the wrong kind yields hundreds)
MAX_PROBLEMS = 25


def _plain_text(value: str) -> str:
    # A control character in a host, path or name only fails later and obscurely (or splits a log line).
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise PydanticCustomError("control_characters", "must not contain control characters")
    return value


Text = Annotated[str, AfterValidator(_plain_text)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_plain_text)]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TENANT = TENANT_PATTERN
_FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_KEY_NAME = KEY_NAME_PATTERN
EnvName = Annotated[str, Field(min_length=1, pattern=_ENV_NAME)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
Tenant = Annotated[str, Field(pattern=_TENANT)]
ReasoningStyle = Literal["reasoning_effort", "openrouter", "thinking", "enable_thinking", "none"]


class _Table(BaseModel):
    """A TOML table: unknown keys, wrong types and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    #: what a value of this table must be, for the message when it is not a table
    what: ClassVar[str] = "a table"


class ServerTable(_Table):
    """``[server]``; every key optional (the dataclass has the defaults)."""

    host: NonEmptyText | None = None
    port: Port | None = None
    workers: PositiveInt | None = None
    max_body_bytes: PositiveInt | None = None
    drain_timeout: Seconds | None = None
    graceful_timeout: Seconds | None = None
    backlog: PositiveInt | None = None
    websocket_max_age: Seconds | None = None
    http2: bool | None = None
    certfile: Text | None = None
    keyfile: Text | None = None
    max_connections: NonNegativeInt | None = None
    body_timeout: Seconds | None = None  # 0: no limit
    max_body_bytes_in_flight: NonNegativeInt | None = None


class AuthKey(_Table):
    """One entry of ``[auth] keys``: ``"sk-..."``, ``{ key = "...", tenant = "t" }`` or ``{ key_env = "VAR" }``."""

    what: ClassVar[str] = 'a key string or an inline table { key = "...", tenant = "..." }'
    key: str | None = None
    key_env: EnvName | None = None
    tenant: Tenant = ""

    @model_validator(mode="before")
    @classmethod
    def _bare_key(cls, value: Any) -> Any:
        return {"key": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> AuthKey:
        if (self.key is None) == (self.key_env is None):
            raise PydanticCustomError("key_source", "needs exactly one of key or key_env")
        return self


class AuthTable(_Table):
    """``[auth]``."""

    keys: list[AuthKey] = []


NonNegativeNumber = Annotated[float, Field(ge=0)]
_SHA256 = r"^[0-9a-f]{64}$"
#: a model or route name pattern (``fnmatch``: ``*``, ``?``, ``[...]``)
ModelPattern = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_PATTERN_LENGTH), AfterValidator(_plain_text)]


class LimitsTable(_Table):
    """Rate limits and budgets (``[keys.NAME]``, ``[keys.NAME.model_limits."PATTERN"]``); 0: no limit."""

    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None
    concurrent_streams: NonNegativeInt | None = None
    tokens_per_day: NonNegativeInt | None = None
    tokens_per_month: NonNegativeInt | None = None
    cost_per_day: NonNegativeNumber | None = None
    cost_per_month: NonNegativeNumber | None = None


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise PydanticCustomError("timezone", "must name its time zone (e.g. 2027-01-31T00:00:00Z)")
    return value


class KeyTable(LimitsTable):
    """``[keys.NAME]``: one gateway key with its identity, allowed models, limits and budgets."""

    key: str | None = None
    key_env: EnvName | None = None
    key_sha256: Annotated[str, Field(pattern=_SHA256)] | None = None
    tenant: Tenant = ""
    models: Annotated[list[ModelPattern], Field(max_length=MAX_MODEL_PATTERNS)] | None = None
    model_limits: Annotated[dict[ModelPattern, LimitsTable], Field(max_length=MAX_MODEL_PATTERNS)] = {}
    expires: Annotated[datetime, AfterValidator(_aware)] | None = None
    disabled: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> KeyTable:
        if sum(x is not None for x in (self.key, self.key_env, self.key_sha256)) != 1:
            raise PydanticCustomError("key_source", "needs exactly one of key, key_env or key_sha256")
        return self


class AdminTable(_Table):
    """``[admin]``: the key of the admin API."""

    key: str | None = None
    key_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AdminTable:
        if self.key is not None and self.key_env is not None:
            raise PydanticCustomError("key_source", "needs at most one of key or key_env")
        return self


class TimeoutsTable(_Table):
    """``[timeouts]`` and the per-provider and per-route ``timeouts`` tables."""

    connect: Seconds | None = None
    first_token: Seconds | None = None
    idle: Seconds | None = None
    total: Seconds | None = None
    keepalive: Seconds | None = None


class ProviderTable(_Table):
    """``[providers.NAME]``."""

    type: NonEmptyText | None = None
    preset: NonEmptyText | None = None
    base_url: Text | None = None
    api_key: str | None = None
    api_key_env: EnvName | None = None
    api_keys: list[str] | None = None
    api_key_envs: list[EnvName] | None = None
    models: list[NonEmptyText] | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None
    system_role: Literal["system", "developer"] | None = None
    reasoning_style: ReasoningStyle | None = None
    replay_reasoning: Annotated[str, Field(pattern=_FIELD_NAME)] | None = None
    stream_usage: bool | None = None
    first_token_delay: Seconds | None = None
    tokens_per_second: PositiveSeconds | None = None
    timeouts: TimeoutsTable | None = None
    max_connections: NonNegativeInt | None = None
    headers: dict[str, str] | None = None


_FLAG_KEYS = ("max_tokens_param", "system_role", "reasoning_style", "replay_reasoning", "stream_usage")
_DEMO_KEYS = ("first_token_delay", "tokens_per_second")


Strategy = Literal["fallback", "hedge", "weighted"]
StoreBackend = Literal["sqlite", "redis", "memory", "none"]
# The schema spells out what streamgw.config lists: they must not drift apart.
assert get_args(Strategy) == STRATEGIES and get_args(StoreBackend) == STORE_BACKENDS


class RouteTable(_Table):
    """``[routes.NAME]``."""

    targets: Annotated[list[NonEmptyText], Field(min_length=1)]
    strategy: Strategy | None = None
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    hedge_delay: Seconds | None = None
    max_attempts: NonNegativeInt | None = None
    retries: NonNegativeInt | None = None
    backoff: Seconds | None = None
    backoff_max: Seconds | None = None
    cooldown_failures: NonNegativeInt | None = None
    cooldown_seconds: Seconds | None = None
    timeouts: TimeoutsTable | None = None


class StoreTable(_Table):
    """``[store]``."""

    backend: StoreBackend | None = None
    path: NonEmptyText | None = None
    url: NonEmptyText | None = None
    key_prefix: Text | None = None
    retention_days: Seconds | None = None
    max_response_bytes: PositiveInt | None = None
    queue_size: PositiveInt | None = None
    timeout: Seconds | None = None
    confirm_writes: bool | None = None
    snapshot_after: Seconds | None = None


def _allowed_host(entry: str) -> str:
    """A host name, an IP address or a CIDR network, in a canonical spelling."""
    try:
        if "/" in entry:
            return str(ipaddress.ip_network(entry, strict=True))
        return str(ipaddress.ip_address(entry))
    except ValueError:
        if "/" in entry:
            raise PydanticCustomError(
                "cidr", "is not a valid CIDR network (e.g. 10.0.0.0/8; the host bits must be zero)") from None
    name = entry[:-1] if entry.endswith(".") else entry
    # Underscores are not valid in host names (RFC 1123) but container service names use them.
    label = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
    if not name or len(name) > 253 or not all(label.match(part) for part in name.split(".")):
        raise PydanticCustomError("host", "must be a host name, an IP address or a CIDR network")
    return name.lower()


class FetchTable(_Table):
    """``[fetch]``."""

    allow_hosts: list[Annotated[str, AfterValidator(_allowed_host)]] | None = None
    max_urls: NonNegativeInt | None = None
    max_bytes: PositiveInt | None = None
    max_total_bytes: PositiveInt | None = None
    concurrency: PositiveInt | None = None
    timeout: PositiveSeconds | None = None
    max_redirects: NonNegativeInt | None = None


ControlBackend = Literal["auto", "sqlite", "redis", "memory"]
assert get_args(ControlBackend) == CONTROL_BACKENDS


class ControlTable(_Table):
    """``[control]``."""

    backend: ControlBackend | None = None
    path: NonEmptyText | None = None
    url: NonEmptyText | None = None
    key_prefix: Text | None = None
    timeout: PositiveSeconds | None = None
    on_unavailable: Literal["open", "closed"] | None = None


class PriceTable(_Table):
    """``[prices."PATTERN"]``: USD per million tokens."""

    input: NonNegativeNumber = 0.0
    cached_input: NonNegativeNumber | None = None
    output: NonNegativeNumber = 0.0


class MetricsTable(_Table):
    """``[metrics]``."""

    require_key: bool | None = None


LogFormat = Literal["text", "json"]
assert get_args(LogFormat) == LOG_FORMATS
#: who ``[logging] bodies`` may name: a key by name, a tenant, or everyone
_BODIES = r"^(\*|key:[A-Za-z0-9][A-Za-z0-9._:-]{0,127}|tenant:[A-Za-z0-9][A-Za-z0-9._:-]{0,63})$"


class LoggingTable(_Table):
    """``[logging]``."""

    format: LogFormat | None = None
    file: NonEmptyText | None = None
    requests: bool | None = None
    bodies: list[Annotated[str, Field(pattern=_BODIES)]] | None = None
    body_max_chars: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    phases: bool | None = None


class TracingTable(_Table):
    """``[tracing]``."""

    enabled: bool | None = None


class ConfigFile(_Table):
    """The whole TOML document."""

    server: ServerTable = ServerTable()
    auth: AuthTable = AuthTable()
    providers: dict[str, ProviderTable] = {}
    timeouts: TimeoutsTable = TimeoutsTable()
    routes: dict[str, RouteTable] = {}
    store: StoreTable = StoreTable()
    fetch: FetchTable = FetchTable()
    metrics: MetricsTable = MetricsTable()
    control: ControlTable = ControlTable()
    logging: LoggingTable = LoggingTable()
    keys: Annotated[dict[Annotated[str, Field(pattern=_KEY_NAME)], KeyTable], Field(max_length=10_000)] = {}
    admin: AdminTable = AdminTable()
    tracing: TracingTable = TracingTable()
    tenants: Annotated[dict[Annotated[str, Field(pattern=_TENANT)], LimitsTable], Field(max_length=10_000)] = {}
    prices: Annotated[dict[ModelPattern, PriceTable], Field(max_length=1000)] = {}


# --- problems: where they are and how they are said ---------------------------------------------------------


class Problems:
    """Problems found so far; ``where`` is a ``[table] key`` in the file or the name of a variable."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.items: list[str] = []

    def file(self, where: str, message: str, separator: str = ": ") -> None:
        """A problem at ``where`` in the config file."""
        problem = f"{where}{separator}{message}"
        self.items.append(f"{self.source}: {problem}" if self.source else problem)

    def env(self, variable: str, message: str) -> None:
        """A problem with the environment variable ``variable``."""
        self.items.append(f"{variable}: {message}")

    def check(self) -> None:
        """Raise ``ConfigError`` with every problem so far, if there is one."""
        if self.items:
            shown = self.items[:MAX_PROBLEMS]
            if len(self.items) > MAX_PROBLEMS:
                shown.append(f"... and {len(self.items) - MAX_PROBLEMS} more problems")
            raise ConfigError(*shown)


def _toml_key(part: str | int) -> str:
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


def _unwrap(tp: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            tp = next(arg for arg in get_args(tp) if arg is not type(None))
        else:
            return tp


def _step(tp: Any, part: str | int) -> Any:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    if get_origin(tp) is dict and isinstance(part, str):
        return get_args(tp)[1]
    if get_origin(tp) is list and isinstance(part, int):
        return get_args(tp)[0]
    return None


def _is_table(tp: Any) -> bool:
    tp = _unwrap(tp)
    return get_origin(tp) is dict or (isinstance(tp, type) and issubclass(tp, BaseModel))


def _kind(value: Any) -> str:
    """The TOML type of ``value``, never the value itself."""
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
        (dict, "a table"), ((datetime, date, time), "a date/time"),
    )
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


_TYPE_MESSAGES = {
    "int_type": "must be an integer", "float_type": "must be a number", "string_type": "must be a string",
    "bool_type": "must be true or false", "list_type": "must be an array", "dict_type": "must be a table",
}


def _bound(error: Mapping[str, Any], field: Any) -> str:
    ctx = error.get("ctx", {})
    noun = "an integer" if _unwrap(field) is int else "a number"
    for key, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in ctx:
            limit = ctx[key]
            limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
            return f"must be {noun} {sign} {limit}"
    return "is out of range"


def _message(error: Mapping[str, Any], field: Any) -> str:
    kind = error["type"]
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, got {_kind(error['input'])}"
    if kind in ("model_type", "model_attributes_type"):
        model = _unwrap(field)
        what = model.what if isinstance(model, type) and issubclass(model, _Table) else "a table"
        return f"must be {what}, got {_kind(error['input'])}"
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return _bound(error, field)
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return _PATTERN_MESSAGES.get(error["ctx"]["pattern"], "is not in the expected form")
    if kind == "missing":
        return "is required"
    return str(error["msg"])  # our own PydanticCustomError messages, which never quote the value


_PATTERN_MESSAGES = {
    _ENV_NAME: "must be an environment variable name",
    _FIELD_NAME: "must be a JSON field name (letters, digits and _)",
    _TENANT: "must be a short identifier (letters, digits, . _ : -; at most 64 characters)",
}


def _suggestion(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _owner(key: str, path: Sequence[str | int], path_types: Sequence[Any]) -> str:
    """``(it belongs in [x])`` when an enclosing table of ``path`` (or ``[server]`` etc.) has ``key``."""
    for depth in range(len(path) - 1, -1, -1):
        model = _unwrap(path_types[depth])
        if isinstance(model, type) and issubclass(model, BaseModel) and key in model.model_fields:
            table = ".".join(_toml_key(p) for p in path[:depth])
            return f" (it belongs in [{table}])" if table else " (it belongs at the top level)"
    if not path:
        for name, field in ConfigFile.model_fields.items():
            model = _unwrap(field.annotation)
            if isinstance(model, type) and issubclass(model, BaseModel) and key in model.model_fields:
                return f" (it belongs in [{name}])"
    return ""


def describe(error: Mapping[str, Any], problems: Problems) -> None:
    """Add pydantic's ``error`` to ``problems`` as ``[table] key: message``."""
    loc: tuple[str | int, ...] = tuple(error["loc"])
    path_types = [ConfigFile]
    for part in loc:
        path_types.append(_step(path_types[-1], part))
    depth = 0  # how much of loc names the table the problem is in
    while depth < len(loc) - 1 and isinstance(loc[depth], str) and _is_table(path_types[depth + 1]):
        depth += 1
    if (depth == len(loc) - 1 and isinstance(loc[-1], str) and _is_table(path_types[-1])
            and error["type"] != "extra_forbidden" and isinstance(error.get("input"), dict)):
        depth += 1  # a problem of a whole named table ([keys.NAME] lacks its key): the table is the place
    table = ".".join(_toml_key(p) for p in loc[:depth])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{_toml_key(p)}" for p in loc[depth:]).lstrip(".")
    if error["type"] == "extra_forbidden":
        parent = _unwrap(path_types[-2])
        choices = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        hint = _suggestion(str(loc[-1]), choices) or _owner(str(loc[-1]), loc[:-1], path_types)
        if isinstance(error["input"], dict):
            problems.file(f"[{'.'.join(filter(None, (table, key)))}]", f"unknown table{hint}", " ")
        else:
            problems.file(f"[{table}] {key}" if table else key, f"unknown key{hint}")
        return
    where = (f"[{table}] {key}" if key else f"[{table}]") if table else key or "(document)"
    problems.file(where, _message(error, path_types[-1]))


def validate_file(raw: Mapping[str, Any], problems: Problems) -> ConfigFile | None:
    """The document as ``ConfigFile``, or None with every problem added to ``problems``."""
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            describe(error, problems)
        return None


# --- the environment ------------------------------------------------------------------------------------


_FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
               "off": False}


class Environment:
    """The ``STREAMGW_*`` variables, parsed; an empty variable counts as unset."""

    def __init__(self, env: Mapping[str, str], problems: Problems) -> None:
        self.env = env
        self.problems = problems

    def _shown(self, value: str) -> str:
        return json.dumps(value if len(value) <= 40 else value[:40] + "...")

    def text(self, variable: str) -> str | None:
        """The variable as it is, if set (and free of control characters)."""
        value = self.env.get(variable) or None
        if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            self.problems.env(variable, "must not contain control characters")
            return None
        return value

    def integer(self, variable: str, low: int, high: int | None = None) -> int | None:
        """The variable as an integer in ``low..high``, if set."""
        text = self.env.get(variable)
        if not text:
            return None
        try:
            number = int(text.strip(), 10)
        except ValueError:
            self.problems.env(variable, f"must be an integer, got {self._shown(text)}")
            return None
        if number < low or (high is not None and number > high):
            limits = f"between {low} and {high}" if high is not None else f">= {low}"
            self.problems.env(variable, f"must be an integer {limits}, got {self._shown(text)}")
            return None
        return number

    def seconds(self, variable: str, *, positive: bool = False) -> float | None:
        """The variable as a finite number of seconds (>= 0, or > 0), if set."""
        text = self.env.get(variable)
        if not text:
            return None
        wanted = "a finite number > 0" if positive else "a finite number >= 0"
        try:
            number = float(text.strip())
        except ValueError:
            self.problems.env(variable, f"must be {wanted}, got {self._shown(text)}")
            return None
        if number != number or number in (float("inf"), float("-inf")) or number < 0 or (positive and not number):
            self.problems.env(variable, f"must be {wanted}, got {self._shown(text)}")
            return None
        return number

    def flag(self, variable: str) -> bool | None:
        """The variable as a boolean (1/0, true/false, yes/no, on/off), if set."""
        text = self.env.get(variable)
        if not text:
            return None
        value = _FLAG_WORDS.get(text.strip().lower())
        if value is None:
            self.problems.env(variable, f"must be 1 or 0 (true/false, yes/no, on/off), got {self._shown(text)}")
        return value


# --- conversion into streamgw.config ----------------------------------------------------------------------


def _set(table: BaseModel, *names: str) -> dict[str, Any]:
    """The keys of ``table`` that the file sets (all of them when no names are given)."""
    return {k: getattr(table, k) for k in table.model_fields_set if not names or k in names}


def _server(table: ServerTable, environment: Environment, problems: Problems) -> ServerConfig:
    values = _set(table)
    overrides: dict[str, Any] = {
        "host": environment.text("STREAMGW_HOST"),
        "port": environment.integer("STREAMGW_PORT", 1, 65535),
        "websocket_max_age": environment.seconds("STREAMGW_WEBSOCKET_MAX_AGE"),
        "drain_timeout": environment.seconds("STREAMGW_DRAIN_TIMEOUT"),
        "http2": environment.flag("STREAMGW_HTTP2"),
        "certfile": environment.text("STREAMGW_CERTFILE"),
        "keyfile": environment.text("STREAMGW_KEYFILE"),
        "max_connections": environment.integer("STREAMGW_MAX_CONNECTIONS", 0),
        "body_timeout": environment.seconds("STREAMGW_BODY_TIMEOUT"),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    server = ServerConfig(**values)
    if bool(server.certfile) != bool(server.keyfile):
        problems.file("[server] certfile, keyfile", "must be set together (or STREAMGW_CERTFILE and "
                      "STREAMGW_KEYFILE): both for HTTPS, neither for cleartext")
    return server


def _bearer_key(value: str) -> str | None:
    """Why ``value`` cannot be a gateway key, or None when it can."""
    if not value:
        return "is empty"
    if not all(0x21 <= ord(c) <= 0x7E for c in value):
        return "must be printable ASCII without spaces (it is sent as a bearer token)"
    return None


def _auth(table: AuthTable, env: Mapping[str, str], problems: Problems) -> tuple[tuple[Secret, ...], tuple[str, ...]]:
    """Gateway keys and their tenants: ``STREAMGW_API_KEYS`` replaces ``[auth] keys``."""
    if env.get("STREAMGW_API_KEYS"):
        keys = [k.strip() for k in env["STREAMGW_API_KEYS"].split(",") if k.strip()]
        for number, key in enumerate(keys, 1):
            why = _bearer_key(key)
            if why:
                problems.env("STREAMGW_API_KEYS", f"key {number} {why}")
        return tuple(Secret(k) for k in keys), ("",) * len(keys)
    secrets: list[Secret] = []
    tenant_of: dict[str, str] = {}
    for index, entry in enumerate(table.keys):
        if entry.key_env is not None:
            value = env.get(entry.key_env, "")
            why = f"key_env: the variable {entry.key_env} is not set or empty" if not value else _bearer_key(value)
        else:
            value = entry.key or ""
            why = _bearer_key(value)
        if not why and tenant_of.setdefault(value, entry.tenant) != entry.tenant:
            # one key cannot belong to two tenants: which one's data it reached would depend on list order
            why = "repeats an earlier key with another tenant"
        if why:
            problems.file(f"[auth] keys[{index}]", why)
        secrets.append(Secret(value))
    return tuple(secrets), tuple(entry.tenant for entry in table.keys)


def _limits(table: LimitsTable) -> Limits:
    return Limits(**_set(table, *LimitsTable.model_fields))


def _keys(document: ConfigFile, env: Mapping[str, str], auth_keys: Sequence[Secret],
          problems: Problems) -> tuple[StaticKey, ...]:
    """``[keys.NAME]`` tables: each key's digest, policy and state; a key may appear once in all of ``[auth]``
    and ``[keys]`` (which policy applied would otherwise depend on order)."""
    seen = {sha256(k.get().encode()).digest() for k in auth_keys if k.get()}
    keys: list[StaticKey] = []
    for name, table in document.keys.items():
        where = f"[keys.{name}]"
        secret: Secret | None = None
        if table.key_sha256 is not None:
            digest = bytes.fromhex(table.key_sha256)
        else:
            value = env.get(table.key_env, "") if table.key_env is not None else table.key or ""
            why = (f"key_env: the variable {table.key_env} is not set or empty" if table.key_env and not value
                   else _bearer_key(value))
            if why:
                problems.file(f"{where} {'key_env' if table.key_env else 'key'}", why.removeprefix("key_env: "))
                continue
            secret = Secret(value)
            digest = sha256(value.encode()).digest()
        if digest in seen:
            problems.file(where, "repeats a key of [auth] keys or of another [keys] table")
            continue
        seen.add(digest)
        policy = KeyPolicy(
            name=name, tenant=tenant_id(table.tenant, digest), models=tuple(table.models or ()), limits=_limits(table),
            model_limits=tuple((pattern, _limits(limits)) for pattern, limits in table.model_limits.items()),
        )
        expires = table.expires.timestamp() if table.expires is not None else None
        keys.append(StaticKey(policy, digest, secret, expires, table.disabled))
    return tuple(keys)


def _admin(table: AdminTable, env: Mapping[str, str], problems: Problems) -> Secret | None:
    if table.key_env is not None:
        value = env.get(table.key_env, "")
        why = f"the variable {table.key_env} is not set or empty" if not value else _bearer_key(value)
        where = "[admin] key_env"
    elif table.key is not None:
        value, why, where = table.key, _bearer_key(table.key), "[admin] key"
    else:
        value = env.get("STREAMGW_ADMIN_KEY", "")
        if not value:
            return None
        why = _bearer_key(value)
        if why:
            problems.env("STREAMGW_ADMIN_KEY", why)
            return None
    if why:
        problems.file(where, why)
        return None
    return Secret(value)


def _preset_defaults(name: str, table: ProviderTable, env: Mapping[str, str], problems: Problems) -> dict[str, Any]:
    """Base URL, key variable and flags of the preset this table names (if any)."""
    from streamgw.config_presets import PRESETS

    preset_name = table.preset
    if preset_name is None and table.type is None and name in PRESETS:
        preset_name = name
    if preset_name is None:
        return {}
    preset = PRESETS.get(preset_name)
    if preset is None:
        problems.file(f"[providers.{_toml_key(name)}] preset",
                      f"must be one of {', '.join(sorted(PRESETS))}{_suggestion(preset_name, list(PRESETS))}")
        return {}
    base_url = env.get(preset.base_url_env, "") if preset.base_url_env else ""
    return {"type": "chat", "base_url": base_url or preset.base_url, "api_key_env": preset.key_env,
            "flags": preset.flags, "base_url_env": preset.base_url_env if base_url else ""}


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in url):
        return "must be an http:// or https:// URL with a host"
    return None


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
#: connection-level and framing headers: the transport sets them, a configured one would corrupt the request
_RESERVED_HEADERS = frozenset({"connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer",
                               "transfer-encoding", "upgrade"})


def _headers(where: str, headers: Mapping[str, str], problems: Problems) -> tuple[tuple[str, str], ...]:
    for name, value in headers.items():
        at = f"[{where}.headers] {_toml_key(name)}"
        if not _TOKEN.match(name):
            problems.file(at, "is not a valid HTTP header name")
        elif name.lower() in _RESERVED_HEADERS:
            problems.file(at, "is set by the gateway's transport and cannot be configured")
        elif not _HEADER_VALUE.match(value):
            problems.file(at, "the value must be printable ASCII (no line breaks or control characters)")
    return tuple(headers.items())


def _provider(name: str, table: ProviderTable, env: Mapping[str, str], problems: Problems) -> ProviderConfig:
    where = f"providers.{_toml_key(name)}"
    if not name or "/" in name or not _TOKEN.match(name):
        problems.file(f"[{where}]", 'a provider name must be letters, digits and ._- (no "/": it separates '
                      'provider and model)')
    defaults = _preset_defaults(name, table, env, problems)
    ptype = table.type or defaults.get("type", "chat")
    if ptype not in supported_types():
        problems.file(f"[{where}] type", f"must be one of {', '.join(supported_types())}"
                      f"{_suggestion(ptype, supported_types())}")
    keys = _provider_keys(where, table, defaults.get("api_key_env"), env, problems)
    base_url = table.base_url if table.base_url is not None else defaults.get("base_url", "")
    if ptype != "demo":
        _check_base_url(where, base_url, ptype, table, defaults, problems)
    # Keys of another type's dialect would be ignored without a word: as much a typo as an unknown key.
    misplaced = [(k, "chat") for k in _FLAG_KEYS if ptype != "chat"] + [(k, "demo") for k in _DEMO_KEYS
                                                                        if ptype != "demo"]
    for key_name, owner in misplaced:
        if key_name in table.model_fields_set:
            problems.file(f"[{where}] {key_name}", f'only applies to type "{owner}" (this provider is "{ptype}")')
    flags = replace(defaults.get("flags", ChatFlags()), **_set(table, *_FLAG_KEYS))
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=base_url.rstrip("/"),
        api_key=keys[0] if keys else Secret(""),
        extra_keys=keys[1:],
        models=tuple(table.models or ()),
        chat=flags,
        demo=DemoSettings(**_set(table, *_DEMO_KEYS)),
        timeouts=_overrides(table.timeouts),
        max_connections=table.max_connections or 0,
        headers=_headers(where, table.headers or {}, problems),
    )


def _provider_keys(where: str, table: ProviderTable, preset_key_env: str | None, env: Mapping[str, str],
                   problems: Problems) -> tuple[Secret, ...]:
    """The provider's keys, first the main one: ``api_key`` (or its variable), ``api_keys``, ``api_key_envs``.

    A variable that is not set gives no key (a provider may need none); an empty ``api_keys`` entry is a problem.
    """
    if table.api_key is not None and table.api_key_env is not None:
        problems.file(f"[{where}] api_key", "set api_key or api_key_env, not both")
    key = table.api_key
    key_env = table.api_key_env or preset_key_env
    if key is None and key_env:
        key = env.get(key_env, "")
    for index, extra in enumerate(table.api_keys or ()):
        if not extra:
            problems.file(f"[{where}] api_keys[{index}]", "is empty")
    extra_keys = [k for k in table.api_keys or () if k]
    extra_keys += [env.get(var, "") for var in table.api_key_envs or ()]
    if not key and extra_keys:
        key, extra_keys = extra_keys[0], extra_keys[1:]
    if not key and not extra_keys:
        return ()
    return (Secret(key or ""), *(Secret(k) for k in extra_keys if k))


def _check_base_url(where: str, base_url: str, ptype: str, table: ProviderTable, defaults: Mapping[str, Any],
                    problems: Problems) -> None:
    if not base_url:
        problems.file(f"[{where}] base_url", f"is required for type {ptype!r}")
        return
    why = _url_problem(base_url)
    if why is None:
        return
    if table.base_url is None and defaults.get("base_url_env"):
        problems.env(defaults["base_url_env"], why)  # the preset's base URL variable
    else:
        problems.file(f"[{where}] base_url", why)


def _overrides(table: TimeoutsTable | None) -> tuple[tuple[str, float], ...]:
    """Only the timeouts the table sets, in a fixed order (see ``Timeouts.merged``)."""
    if table is None:
        return ()
    order = list(TimeoutsTable.model_fields)
    return tuple(sorted(((k, float(v)) for k, v in _set(table).items()), key=lambda kv: order.index(kv[0])))


def _env_providers(env: Mapping[str, str], problems: Problems) -> dict[str, ProviderConfig]:
    """Providers implied by API-key variables (and ``OLLAMA_BASE_URL``) alone."""
    from streamgw.config_presets import PRESETS

    found: dict[str, ProviderConfig] = {}
    kinds = supported_types()
    for name, (ptype, base_url, key_var) in ENV_NATIVE.items():
        if env.get(key_var) and ptype in kinds:
            found[name] = ProviderConfig(name=name, type=ptype, base_url=base_url, api_key=Secret(env[key_var]))
    if env.get("OPENAI_API_KEY") and "openai" not in found:  # no native dialect: OpenAI's chat endpoint
        found["openai"] = _provider("openai", ProviderTable(preset="openai-chat"), env, problems)
    for name, preset in PRESETS.items():
        has_key = bool(preset.key_env and env.get(preset.key_env))
        has_url = bool(preset.base_url_env and env.get(preset.base_url_env))
        if name not in ("openai-chat", "ollama-v1") and (has_key or (has_url and name == "vllm")):
            if preset.base_url or has_url:
                found[name] = _provider(name, ProviderTable(preset=name), env, problems)
    ollama_url = env.get("OLLAMA_BASE_URL", "")
    if ollama_url and "ollama" in kinds:
        why = _url_problem(ollama_url)
        if why:
            problems.env("OLLAMA_BASE_URL", why)
        found["ollama"] = ProviderConfig(name="ollama", type="ollama", base_url=ollama_url.rstrip("/"))
    return found


def _route(name: str, table: RouteTable, providers: Mapping[str, ProviderConfig], problems: Problems) -> RouteConfig:
    where = f"routes.{_toml_key(name)}"
    for index, target in enumerate(table.targets):
        provider, sep, model = target.partition("/")
        if not sep or not model:
            problems.file(f"[{where}] targets[{index}]", 'must be "provider/model"')
        elif provider not in providers:
            problems.file(f"[{where}] targets[{index}]",
                          f"names no configured provider: {provider!r}{_suggestion(provider, list(providers))}")
    if name in providers:
        problems.file(f"[{where}]", "a route cannot have the name of a provider")
    weights = tuple(table.weights or ())
    if weights and (len(weights) != len(table.targets) or not any(weights)):
        problems.file(f"[{where}] weights", "needs one weight >= 0 per target, not all zero")
    numbers = _set(table, "strategy", "hedge_delay", "max_attempts", "retries", "backoff", "backoff_max",
                   "cooldown_failures", "cooldown_seconds")
    return RouteConfig(name=name, targets=tuple(table.targets), weights=weights, timeouts=_overrides(table.timeouts),
                       **numbers)


def _store(table: StoreTable, environment: Environment, problems: Problems) -> StoreConfig:
    """``[store]``, then the environment overrides; sqlite at ``./streamgw.db`` when nothing is said."""
    values = _set(table)
    overrides = {"backend": environment.text("STREAMGW_STORE_BACKEND"),
                 "path": environment.text("STREAMGW_STORE_PATH"), "url": environment.text("STREAMGW_REDIS_URL")}
    values.update({k: v for k, v in overrides.items() if v is not None})
    store = StoreConfig(**values)
    if store.backend not in STORE_BACKENDS:
        message = f"must be one of {', '.join(STORE_BACKENDS)}{_suggestion(store.backend, STORE_BACKENDS)}"
        problems.env("STREAMGW_STORE_BACKEND", f"{message}, got {json.dumps(store.backend[:40])}")
    elif store.backend == "redis":
        try:
            RedisURL.parse(store.url)
        except ValueError:
            # Not the parser's reason: it quotes the URL, which may hold a password.
            message = "must be a redis://[user:password@]host[:port][/db] URL"
            if overrides["url"] is not None:
                problems.env("STREAMGW_REDIS_URL", message)
            else:
                problems.file("[store] url", message)
    return store


def _logging(table: LoggingTable, environment: Environment, problems: Problems) -> LoggingConfig:
    """``[logging]``, then ``STREAMGW_LOG_FORMAT``, ``STREAMGW_LOG_FILE`` and ``STREAMGW_LOG_PHASES``."""
    values = _set(table)
    if "bodies" in values:
        values["bodies"] = tuple(values["bodies"])
    log_format = environment.text("STREAMGW_LOG_FORMAT")
    if log_format is not None:
        if log_format in LOG_FORMATS:
            values["format"] = log_format
        else:
            problems.env("STREAMGW_LOG_FORMAT", f"must be one of {', '.join(LOG_FORMATS)}, "
                         f"got {json.dumps(log_format[:40])}")
    log_file = environment.text("STREAMGW_LOG_FILE")
    if log_file is not None:
        values["file"] = log_file
    phases = environment.flag("STREAMGW_LOG_PHASES")
    if phases is not None:
        values["phases"] = phases
    return LoggingConfig(**values)


def _tracing(table: TracingTable, environment: Environment, problems: Problems) -> TracingConfig:
    """``[tracing]``, then ``STREAMGW_TRACING``; turned on without the ``otel`` extra installed is a problem."""
    tracing = TracingConfig(**_set(table))
    enabled = environment.flag("STREAMGW_TRACING")
    if enabled is not None:
        tracing = TracingConfig(enabled=enabled)
    missing = missing_otel() if tracing.enabled else []
    if missing:
        message = (f"tracing needs the otel extra: pip install 'streamgw[otel]' ({', '.join(missing)} "
                   "not installed)")
        if enabled is not None:
            problems.env("STREAMGW_TRACING", message)
        else:
            problems.file("[tracing] enabled", message)
    return tracing


def build_config(raw: Mapping[str, Any], env: Mapping[str, str], *, source: str | None) -> Config:
    """``Config`` from a parsed TOML document and the environment; ``ConfigError`` lists every problem.

    ``source`` is the file's name for the messages (None: there is no file).
    """
    problems = Problems(source)
    # An invalid document still goes on as an empty one: the environment's problems (and nothing
    # else: an empty document has none) are then reported together with the file's.
    document = validate_file(raw, problems) or ConfigFile()
    environment = Environment(env, problems)
    server = _server(document.server, environment, problems)
    auth_keys, auth_tenants = _auth(document.auth, env, problems)
    providers = _env_providers(env, problems)
    for name, table in document.providers.items():
        providers[name] = _provider(name, table, env, problems)
    if "demo" not in providers:
        providers["demo"] = ProviderConfig(name="demo", type="demo")
    routes = {name: _route(name, table, providers, problems) for name, table in document.routes.items()}
    store = _store(document.store, environment, problems)
    fetch_values: dict[str, Any] = _set(document.fetch)
    if "allow_hosts" in fetch_values:
        fetch_values["allow_hosts"] = tuple(fetch_values["allow_hosts"])
    fetch = FetchConfig(**fetch_values)
    require_key = environment.flag("STREAMGW_METRICS_REQUIRE_KEY")
    metrics = MetricsConfig(**_set(document.metrics))
    if require_key is not None:
        metrics = MetricsConfig(require_key=require_key)
    keys = _keys(document, env, auth_keys, problems)
    admin_key = _admin(document.admin, env, problems)
    if admin_key is not None and (admin_key in auth_keys or any(k.secret == admin_key for k in keys)):
        problems.file("[admin] key", "must differ from every gateway key")
    control = ControlConfig(**_set(document.control))
    if control.url:
        try:
            RedisURL.parse(control.url)
        except ValueError:
            problems.file("[control] url", "must be a redis://[user:password@]host[:port][/db] URL")
    logging = _logging(document.logging, environment, problems)
    tracing = _tracing(document.tracing, environment, problems)
    tenant_limits = {name: _limits(table) for name, table in document.tenants.items()}
    prices = tuple(Price(pattern, table.input, table.cached_input, table.output)
                   for pattern, table in document.prices.items())
    problems.check()
    return Config(server=server, auth_keys=auth_keys, auth_tenants=auth_tenants, providers=providers,
                  timeouts=Timeouts(**_set(document.timeouts)), routes=routes, store=store, fetch=fetch,
                  metrics=metrics, control=control, keys=keys, admin_key=admin_key, logging=logging,
                  tracing=tracing, tenant_limits=tenant_limits, prices=prices)

