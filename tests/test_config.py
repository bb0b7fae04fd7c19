"""Configuration: TOML, presets, environment detection, secrets that never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgw.config import ConfigError, Secret
from streamgw.config_loader import load_config
from streamgw.config_presets import PRESETS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_no_file_no_env_still_has_demo() -> None:
    config = load_config(None, env={})
    assert list(config.providers) == ["demo"] and config.auth_keys == ()
    assert config.server.port == 8080 and config.timeouts.first_token == 30


def test_env_detection_uses_presets_and_native_dialects() -> None:
    env = {"GROQ_API_KEY": "gsk_abc", "DEEPSEEK_API_KEY": "sk-ds", "XIAOMI_API_KEY": "x", "ORACLE_API_KEY": "o",
           "ANTHROPIC_API_KEY": "sk-ant", "OLLAMA_BASE_URL": "http://box:11434/"}
    providers = load_config(None, env=env).providers
    assert providers["groq"].base_url == "https://api.groq.com/openai/v1"
    assert providers["groq"].api_key.get() == "gsk_abc" and providers["groq"].type == "chat"
    assert providers["deepseek"].chat.replay_reasoning == "reasoning_content"
    assert providers["xiaomi"].chat.max_tokens_param == "max_completion_tokens"
    assert "oracle" not in providers, "Oracle needs ORACLE_BASE_URL: its URL depends on region and tenancy"
    if "anthropic" in providers:  # the native dialect is installed
        assert providers["anthropic"].type == "anthropic"
    assert "demo" in providers


def test_oracle_with_its_base_url() -> None:
    env = {"ORACLE_API_KEY": "o", "ORACLE_BASE_URL": "https://inference.example/openai/v1"}
    assert load_config(None, env=env).providers["oracle"].base_url == "https://inference.example/openai/v1"


def test_preset_in_file_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """
[auth]
keys = ["sk-gw"]
[providers.ds]
preset = "deepseek"
api_key = "sk-file"
system_role = "developer"
[providers.zai]
api_key_env = "MY_ZAI"
[timeouts]
idle = 5
""")
    config = load_config(path, env={"MY_ZAI": "z-key", "DEEPSEEK_BASE_URL": "https://ds.internal/v1"})
    ds = config.providers["ds"]
    assert ds.base_url == "https://ds.internal/v1" and ds.api_key.get() == "sk-file"
    assert ds.chat.system_role == "developer" and ds.chat.reasoning_style == "thinking"
    zai = config.providers["zai"]
    assert zai.base_url == PRESETS["zai"].base_url and zai.api_key.get() == "z-key"
    assert config.timeouts.idle == 5 and config.timeouts.first_token == 30
    assert [k.get() for k in config.auth_keys] == ["sk-gw"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[providers.x]\ntype = "nope"\nbase_url = "http://x"', r"\[providers\.x\] type: must be one of"),
        ('[providers.x]\ntype = "chat"', r"\[providers\.x\] base_url: is required"),
        ('[providers.x]\npreset = "unknown"', r"\[providers\.x\] preset: must be one of"),
        ('[providers.x]\ntype = "chat"\nbase_url = "http://x"\nmodels = "m"',
         r"\[providers\.x\] models: must be an array, got a string"),
        ("[timeouts]\nidle = -1", r"\[timeouts\] idle: must be a number >= 0"),
        ("not toml [", "is not valid TOML"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", env={})


def test_secrets_never_show() -> None:
    secret = Secret("sk-very-secret-value")
    config = load_config(None, env={"GROQ_API_KEY": "gsk_very_secret_value", "STREAMGW_API_KEYS": "sk-gw-1,sk-gw-2"})
    for text in (repr(secret), str(secret), repr(config), str(config.providers["groq"])):
        assert "very" not in text and "secret_value" not in text and "sk-gw-1" not in text
    assert sorted(config.secrets()) == ["gsk_very_secret_value", "sk-gw-1", "sk-gw-2"]


def test_websocket_max_age_from_file_and_environment(tmp_path: Path) -> None:
    assert load_config(None, env={}).server.websocket_max_age == 3600
    path = write(tmp_path, "[server]\nwebsocket_max_age = 90\n")
    assert load_config(path, env={}).server.websocket_max_age == 90
    assert load_config(path, env={"STREAMGW_WEBSOCKET_MAX_AGE": "0.5"}).server.websocket_max_age == 0.5
    assert load_config(path, env={"STREAMGW_WEBSOCKET_MAX_AGE": "0"}).server.websocket_max_age == 0  # no limit
    for text, env in (("[server]\nwebsocket_max_age = -1\n", {}), ('[server]\nwebsocket_max_age = "1h"\n', {}),
                      ("", {"STREAMGW_WEBSOCKET_MAX_AGE": "soon"}), ("", {"STREAMGW_WEBSOCKET_MAX_AGE": "nan"})):
        with pytest.raises(ConfigError, match=r"(?i)websocket_max_age"):
            load_config(write(tmp_path, text), env=env)


def test_drain_timeout_from_file_and_environment(tmp_path: Path) -> None:
    server = load_config(None, env={}).server
    assert (server.drain_timeout, server.graceful_timeout) == (30, 3)
    path = write(tmp_path, "[server]\ndrain_timeout = 12.5\ngraceful_timeout = 2\n")
    assert load_config(path, env={}).server.drain_timeout == 12.5
    assert load_config(path, env={"STREAMGW_DRAIN_TIMEOUT": "4"}).server.drain_timeout == 4
    assert load_config(path, env={"STREAMGW_DRAIN_TIMEOUT": "0"}).server.drain_timeout == 0  # cut at once
    file = tmp_path / "gw.toml"
    errors = [
        ("[server]\ndrain_timeout = -1\n", {}, f"{file}: [server] drain_timeout: must be a number >= 0"),
        ('[server]\ndrain_timeout = "30s"\n', {}, f"{file}: [server] drain_timeout: must be a number, got a string"),
        ("[server]\ndrain_timeout = nan\n", {}, f"{file}: [server] drain_timeout: must be a finite number"),
        ("", {"STREAMGW_DRAIN_TIMEOUT": "soon"}, 'STREAMGW_DRAIN_TIMEOUT: must be a finite number >= 0, got "soon"'),
        ("", {"STREAMGW_DRAIN_TIMEOUT": "-3"}, 'STREAMGW_DRAIN_TIMEOUT: must be a finite number >= 0, got "-3"'),
        ("", {"STREAMGW_DRAIN_TIMEOUT": "inf"}, 'STREAMGW_DRAIN_TIMEOUT: must be a finite number >= 0, got "inf"'),
    ]
    for text, env, message in errors:
        with pytest.raises(ConfigError) as raised:
            load_config(write(tmp_path, text), env=env)
        assert str(raised.value) == message


def test_http2_and_tls_from_file_and_environment(tmp_path: Path) -> None:
    server = load_config(None, env={}).server
    assert (server.http2, server.certfile, server.keyfile) == (True, "", "")  # h2c accepted, no TLS
    path = write(tmp_path, '[server]\nhttp2 = false\ncertfile = "/etc/gw/cert.pem"\nkeyfile = "/etc/gw/key.pem"\n')
    server = load_config(path, env={}).server
    assert (server.http2, server.certfile, server.keyfile) == (False, "/etc/gw/cert.pem", "/etc/gw/key.pem")
    env = {"STREAMGW_HTTP2": "on", "STREAMGW_CERTFILE": "c.pem", "STREAMGW_KEYFILE": "k.pem"}
    server = load_config(path, env=env).server
    assert (server.http2, server.certfile, server.keyfile) == (True, "c.pem", "k.pem")
    assert load_config(None, env={"STREAMGW_HTTP2": "0"}).server.http2 is False
    errors = [
        ('[server]\nhttp2 = "yes"\n', {}, r"\[server\] http2: must be true or false, got a string"),
        ("", {"STREAMGW_HTTP2": "maybe"}, r'STREAMGW_HTTP2: must be 1 or 0 \(.*\), got "maybe"'),
        ('[server]\ncertfile = "c.pem"\n', {}, r"\[server\] certfile, keyfile: must be set together"),
        ("", {"STREAMGW_KEYFILE": "k.pem"}, r"\[server\] certfile, keyfile: must be set together"),
    ]
    for text, env, message in errors:
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path, text), env=env)


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from streamgw.cli import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_auth_keys_with_tenants(tmp_path: Path) -> None:
    path = write(tmp_path, """
[auth]
keys = [
  "sk-alone",
  { key = "sk-team-1", tenant = "team-a" },
  { key_env = "TEAM_KEY", tenant = "team-a" },
  { key_env = "SOLO_KEY" },
]
""")
    config = load_config(path, env={"TEAM_KEY": "sk-team-2", "SOLO_KEY": "sk-solo"})
    assert [k.get() for k in config.auth_keys] == ["sk-alone", "sk-team-1", "sk-team-2", "sk-solo"]
    assert config.auth_tenants == ("", "team-a", "team-a", "")
    assert "sk-team-2" not in repr(config), "keys from tables stay secrets"


def test_auth_keys_from_the_environment_are_their_own_tenants() -> None:
    config = load_config(None, env={"STREAMGW_API_KEYS": "sk-1, sk-2"})
    assert [k.get() for k in config.auth_keys] == ["sk-1", "sk-2"] and config.auth_tenants == ("", "")


@pytest.mark.parametrize(("keys", "message"), [
    ('"sk-gw"', r"\[auth\] keys: must be an array"),
    ("[42]", r"\[auth\] keys\[0\]: must be a key string or an inline table"),
    ('[""]', r"\[auth\] keys\[0\]: is empty"),
    ('["sk-1", "  "]', r"\[auth\] keys\[1\]: must be printable ASCII"),
    ('[{ key_env = "UNSET_VARIABLE" }]', "the variable UNSET_VARIABLE is not set or empty"),
    ('[{ tenant = "a" }]', "exactly one of key or key_env"),
    ('[{ key = "k", key_env = "V" }]', "exactly one of key or key_env"),
    ('[{ key = "k", team = "a" }]', r"keys\[0\].team: unknown key"),
    ('[{ key = "k", tenant = "" }]', r"keys\[0\].tenant: must be"),
    ('[{ key = "k", tenant = 7 }]', r"keys\[0\].tenant: must be"),
    ('[{ key = "k", tenant = "a\\nb" }]', r"keys\[0\].tenant: must be"),
    ('["k", { key = "k", tenant = "a" }]', r"keys\[1\]: repeats an earlier key with another tenant"),
])
def test_bad_auth_keys_are_refused(tmp_path: Path, keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"[auth]\nkeys = {keys}\n"), env={})


def test_fetch_section_defaults_and_values(tmp_path: Path) -> None:
    default = load_config(None, env={}).fetch
    assert default.allow_hosts == () and default.max_urls == 16 and default.concurrency == 4
    assert default.max_bytes == 20 * 1024 * 1024 and default.max_total_bytes == 50 * 1024 * 1024
    assert default.timeout == 15.0 and default.max_redirects == 3
    path = write(tmp_path, """
[fetch]
allow_hosts = ["images.internal", "10.0.0.0/8", "127.0.0.1"]
max_urls = 4
max_bytes = 1000
max_total_bytes = 3000
concurrency = 2
timeout = 2.5
max_redirects = 0
""")
    fetch = load_config(path, env={}).fetch
    assert fetch.allow_hosts == ("images.internal", "10.0.0.0/8", "127.0.0.1")
    assert (fetch.max_urls, fetch.max_bytes, fetch.max_total_bytes) == (4, 1000, 3000)
    assert (fetch.concurrency, fetch.timeout, fetch.max_redirects) == (2, 2.5, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fetch]\nconcurrency = 0", r"\[fetch\] concurrency: must be an integer >= 1"),
        ("[fetch]\nmax_bytes = 1.5", r"\[fetch\] max_bytes: must be an integer"),
        ("[fetch]\nmax_redirects = -1", r"\[fetch\] max_redirects: must be an integer >= 0"),
        ("[fetch]\ntimeout = 0", r"\[fetch\] timeout: must be a number > 0"),
        ("[fetch]\ntimeout = inf", r"\[fetch\] timeout: must be a finite number"),
        ('[fetch]\nallow_hosts = "10.0.0.0/8"', r"\[fetch\] allow_hosts: must be an array"),
        ('[fetch]\nallow_hosts = [""]', r"\[fetch\] allow_hosts\[0\]: must be a host name"),
        ("[fetch]\nmax_url = 3", r'\[fetch\] max_url: unknown key \(did you mean "max_urls"\?\)'),
    ],
)
def test_fetch_section_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


# --- the schema: every table and key checked, every problem named ------------------------------------------


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problems ``load_config`` reports for ``text``, without the file name in front."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env=env or {})
    return [p.removeprefix(f"{path}: ") for p in raised.value.problems]


def test_auth_keys_as_a_string_is_an_error_not_one_key_per_character(tmp_path: Path) -> None:
    # Iterating the string used to accept "s", "k", "-" ... as keys and reject the real one.
    found = problems(tmp_path, '[auth]\nkeys = "sk-gw-secret"\n')
    assert found == ["[auth] keys: must be an array, got a string"]


@pytest.mark.parametrize(("text", "problem"), [
    ('[auth]\nkey = ["sk-gw-1"]\n', '[auth] key: unknown key (did you mean "keys"?)'),
    ('[provider.groq]\napi_key_env = "GROQ_API_KEY"\n', '[provider] unknown table (did you mean "providers"?)'),
    ('[providers.groq]\napi_key_evn = "GROQ_KEY"\n',
     '[providers.groq] api_key_evn: unknown key (did you mean "api_key_env"?)'),
    ("[timeout]\nidle = 5\n", '[timeout] unknown table (did you mean "timeouts"?)'),
    ("[providers.demo]\ntype = \"demo\"\n[providers.demo.timeout]\nidle = 5\n",
     '[providers.demo.timeout] unknown table (did you mean "timeouts"?)'),
    ("port = 9000\n", "port: unknown key (it belongs in [server])"),
    ('[providers.x.timeouts]\nidle = 5\nbase_url = "http://x"\n',
     "[providers.x.timeouts] base_url: unknown key (it belongs in [providers.x])"),
    ('[routes.r]\ntargets = ["demo/m"]\nstratgy = "hedge"\n',
     '[routes.r] stratgy: unknown key (did you mean "strategy"?)'),
    ("[fetch]\nmax_url = 3\n", '[fetch] max_url: unknown key (did you mean "max_urls"?)'),
    ("[metrics]\nrequire_keys = true\n", '[metrics] require_keys: unknown key (did you mean "require_key"?)'),
])
def test_typos_are_errors_with_a_suggestion(tmp_path: Path, text: str, problem: str) -> None:
    assert problems(tmp_path, text) == [problem]


@pytest.mark.parametrize(("text", "problem"), [
    ('[server]\nport = "8080"\n', "[server] port: must be an integer, got a string"),
    ("[server]\nport = 70000\n", "[server] port: must be an integer <= 65535"),
    ("[server]\nport = 0\n", "[server] port: must be an integer >= 1"),
    ("[server]\nworkers = 0\n", "[server] workers: must be an integer >= 1"),
    ("[server]\nworkers = 2.5\n", "[server] workers: must be an integer, got a float"),
    ("[server]\nbacklog = true\n", "[server] backlog: must be an integer, got a boolean"),
    ("[server]\nmax_body_bytes = [1]\n", "[server] max_body_bytes: must be an integer, got an array"),
    ('[server]\nhost = ["a", "b"]\n', "[server] host: must be a string, got an array"),
    ("[server]\ngraceful_timeout = inf\n", "[server] graceful_timeout: must be a finite number"),
    ("[server]\nhttp2 = 1\n", "[server] http2: must be true or false, got an integer"),
    ("server = 5\n", "server: must be a table, got an integer"),
    ('[providers.x]\ntype = "demo"\ntokens_per_second = 0\n', "[providers.x] tokens_per_second: must be a number > 0"),
    ('[providers.x]\ntype = "demo"\nmax_connections = "many"\n',
     "[providers.x] max_connections: must be an integer, got a string"),
    ('[providers.x]\ntype = "demo"\nmax_connections = -1\n', "[providers.x] max_connections: must be an integer >= 0"),
    ('[providers.x]\npreset = "groq"\nreasoning_style = "deep"\n',
     "[providers.x] reasoning_style: must be one of 'reasoning_effort', 'openrouter', 'thinking', "
     "'enable_thinking' or 'none'"),
    ('[routes.r]\ntargets = "demo/m"\n', "[routes.r] targets: must be an array, got a string"),
    ("[routes.r]\ntargets = []\n", "[routes.r] targets: must not be empty"),
    ('[routes.r]\nstrategy = "hedge"\n', "[routes.r] targets: is required"),
    ('[routes.r]\ntargets = ["demo/m"]\nretries = 1.5\n', "[routes.r] retries: must be an integer, got a float"),
    ('[routes.r]\ntargets = ["demo/m"]\nweights = [true]\n', "[routes.r] weights[0]: must be a number, got a boolean"),
    ('[routes.r]\ntargets = ["demo/m", "nope/m", "m"]\n',
     "[routes.r] targets[1]: names no configured provider: 'nope'"),
    ("[store]\nretention_days = nan\n", "[store] retention_days: must be a finite number"),
    ("[timeouts]\nidle = 1979-05-27\n", "[timeouts] idle: must be a number, got a date/time"),
])
def test_wrong_types_and_ranges_are_errors(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in problems(tmp_path, text)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = '[server]\nport = "x"\nworkers = 0\n[auth]\nkey = ["k"]\n[timeout]\nidle = 1\n'
    found = problems(tmp_path, text, env={"STREAMGW_DRAIN_TIMEOUT": "soon"})
    assert sorted(found) == sorted([
        "[server] port: must be an integer, got a string", "[server] workers: must be an integer >= 1",
        '[auth] key: unknown key (did you mean "keys"?)', '[timeout] unknown table (did you mean "timeouts"?)',
        'STREAMGW_DRAIN_TIMEOUT: must be a finite number >= 0, got "soon"',
    ])


@pytest.mark.parametrize(("env", "problem"), [
    ({"STREAMGW_PORT": "x"}, 'STREAMGW_PORT: must be an integer, got "x"'),
    ({"STREAMGW_PORT": "65536"}, 'STREAMGW_PORT: must be an integer between 1 and 65535, got "65536"'),
    ({"STREAMGW_PORT": "8080.0"}, 'STREAMGW_PORT: must be an integer, got "8080.0"'),
    ({"STREAMGW_WEBSOCKET_MAX_AGE": "nan"}, 'STREAMGW_WEBSOCKET_MAX_AGE: must be a finite number >= 0, got "nan"'),
    ({"STREAMGW_MAX_CONNECTIONS": "-1"}, 'STREAMGW_MAX_CONNECTIONS: must be an integer >= 0, got "-1"'),
    ({"STREAMGW_METRICS_REQUIRE_KEY": "sure"},
     'STREAMGW_METRICS_REQUIRE_KEY: must be 1 or 0 (true/false, yes/no, on/off), got "sure"'),
    ({"STREAMGW_STORE_BACKEND": "mongo"}, 'STREAMGW_STORE_BACKEND: must be one of sqlite, redis, memory, none, '
                                          'got "mongo"'),
    ({"STREAMGW_HOST": "a\nb"}, "STREAMGW_HOST: must not contain control characters"),
    ({"DEEPSEEK_API_KEY": "k", "DEEPSEEK_BASE_URL": "deepseek.internal"},
     "DEEPSEEK_BASE_URL: must be an http:// or https:// URL with a host"),
])
def test_wrong_environment_values_are_errors(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, env=env)
    assert raised.value.problems == (problem,)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml is not UTF-8 text"):
        load_config(tmp_path / "latin1.toml", env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, env={})  # a directory


def test_values_that_may_be_secret_never_appear_in_an_error(tmp_path: Path) -> None:
    text = ('[auth]\nkeys = ["sk-ok-1", "sk secret one"]\n'
            '[store]\nbackend = "redis"\nurl = "http://user:hunter2secret@cache:6379"\n'
            '[providers.x]\ntype = "chat"\nbase_url = "api.example:s3cretpath"\n'
            'headers = { Authorization = "Bearer tok\\nen-secret" }\n')
    found = problems(tmp_path, text)
    assert found == [
        "[auth] keys[1]: must be printable ASCII without spaces (it is sent as a bearer token)",
        "[providers.x] base_url: must be an http:// or https:// URL with a host",
        "[providers.x.headers] Authorization: the value must be printable ASCII (no line breaks or control characters)",
        "[store] url: must be a redis://[user:password@]host[:port][/db] URL",
    ]
    env = {"STREAMGW_API_KEYS": "sk-ok,sk secret two", "STREAMGW_STORE_BACKEND": "redis",
           "STREAMGW_REDIS_URL": "redis://:pw-secret@cache:notaport"}
    with pytest.raises(ConfigError) as raised:
        load_config(None, env=env)
    assert "secret" not in str(raised.value) and len(raised.value.problems) == 2


def test_auth_keys_with_tenants_and_key_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\nkeys = ["sk-plain", { key = "sk-a", tenant = "team-a" }, '
                           '{ key_env = "GW_KEY_B", tenant = "team-b" }, { key_env = "GW_KEY_C" }]\n')
    config = load_config(path, env={"GW_KEY_B": "sk-b", "GW_KEY_C": "sk-c"})
    assert [k.get() for k in config.auth_keys] == ["sk-plain", "sk-a", "sk-b", "sk-c"]
    assert config.auth_tenants == ("", "team-a", "team-b", "")
    config = load_config(path, env={"GW_KEY_B": "sk-b", "GW_KEY_C": "sk-c", "STREAMGW_API_KEYS": "k1, k2"})
    assert [k.get() for k in config.auth_keys] == ["k1", "k2"] and config.auth_tenants == ("", "")
    assert load_config(None, env={}).auth_tenants == ()


@pytest.mark.parametrize(("entries", "problem"), [
    ('{ key_env = "GW_UNSET", tenant = "t" }', "[auth] keys[0]: key_env: the variable GW_UNSET is not set or empty"),
    ('""', "[auth] keys[0]: is empty"),
    ('{ key = "k", key_env = "GW_KEY" }', "[auth] keys[0]: needs exactly one of key or key_env"),
    ('{ tenant = "t" }', "[auth] keys[0]: needs exactly one of key or key_env"),
    ('{ key = "k", tenant = "team a" }',
     "[auth] keys[0].tenant: must be a short identifier (letters, digits, . _ : -; at most 64 characters)"),
    ('{ key = "k", team = "a" }', '[auth] keys[0].team: unknown key'),
    ("42", '[auth] keys[0]: must be a key string or an inline table { key = "...", tenant = "..." }, got an integer'),
    ('{ key_env = "not a name" }', "[auth] keys[0].key_env: must be an environment variable name"),
])
def test_bad_auth_key_entries(tmp_path: Path, entries: str, problem: str) -> None:
    assert problems(tmp_path, f"[auth]\nkeys = [{entries}]\n") == [problem]


def test_tenants_must_match_the_keys_one_to_one() -> None:
    from streamgw.config import Config

    assert Config(auth_keys=(Secret("a"), Secret("b"))).auth_tenants == ()  # built in code: no tenants
    assert Config(auth_keys=(Secret("a"),), auth_tenants=("t",)).auth_tenants == ("t",)
    with pytest.raises(ValueError, match="one entry per auth key"):
        Config(auth_keys=(Secret("a"),), auth_tenants=("t", "u"))


def test_new_server_fields(tmp_path: Path) -> None:
    server = load_config(None, env={}).server
    assert (server.max_connections, server.body_timeout, server.max_body_bytes_in_flight) == (0, 30.0, 64 << 20)
    path = write(tmp_path, "[server]\nmax_connections = 5000\nbody_timeout = 2.5\nmax_body_bytes_in_flight = 0\n")
    server = load_config(path, env={}).server
    assert (server.max_connections, server.body_timeout, server.max_body_bytes_in_flight) == (5000, 2.5, 0)
    assert load_config(path, env={"STREAMGW_MAX_CONNECTIONS": "300"}).server.max_connections == 300
    text = "[server]\nbody_timeout = -1\nmax_body_bytes_in_flight = -1\nmax_connections = 1.0\n"
    assert problems(tmp_path, text) == [
        "[server] max_connections: must be an integer, got a float",
        "[server] body_timeout: must be a number >= 0",
        "[server] max_body_bytes_in_flight: must be an integer >= 0",
    ]


def test_fetch_table(tmp_path: Path) -> None:
    from streamgw.config import Config, FetchConfig

    assert load_config(None, env={}).fetch == FetchConfig() == Config().fetch
    assert FetchConfig() == FetchConfig((), 16, 20 << 20, 50 << 20, 4, 15.0, 3)
    path = write(tmp_path, '[fetch]\nallow_hosts = ["10.0.0.0/8", "fd00::/8", "127.0.0.1", "Images.Internal", '
                           '"media_cache"]\nmax_urls = 4\nmax_bytes = 1000\nmax_total_bytes = 2000\nconcurrency = 2\n'
                           "timeout = 2.5\nmax_redirects = 0\n")
    fetch = load_config(path, env={}).fetch
    assert fetch == FetchConfig(("10.0.0.0/8", "fd00::/8", "127.0.0.1", "images.internal", "media_cache"),
                                4, 1000, 2000, 2, 2.5, 0)
    bad = ('[fetch]\nallow_hosts = ["10.0.0.1/8", "bad host", "-x.example", "300.1.2.3/33"]\nconcurrency = 0\n'
           "timeout = 0\nmax_redirects = -1\nmax_bytes = 0\n")
    assert problems(tmp_path, bad) == [
        "[fetch] allow_hosts[0]: is not a valid CIDR network (e.g. 10.0.0.0/8; the host bits must be zero)",
        "[fetch] allow_hosts[1]: must be a host name, an IP address or a CIDR network",
        "[fetch] allow_hosts[2]: must be a host name, an IP address or a CIDR network",
        "[fetch] allow_hosts[3]: is not a valid CIDR network (e.g. 10.0.0.0/8; the host bits must be zero)",
        "[fetch] max_bytes: must be an integer >= 1",
        "[fetch] concurrency: must be an integer >= 1",
        "[fetch] timeout: must be a number > 0",
        "[fetch] max_redirects: must be an integer >= 0",
    ]


def test_metrics_table_and_environment(tmp_path: Path) -> None:
    assert load_config(None, env={}).metrics.require_key is False
    path = write(tmp_path, "[metrics]\nrequire_key = true\n")
    assert load_config(path, env={}).metrics.require_key is True
    assert load_config(path, env={"STREAMGW_METRICS_REQUIRE_KEY": "off"}).metrics.require_key is False
    assert load_config(None, env={"STREAMGW_METRICS_REQUIRE_KEY": "1"}).metrics.require_key is True
    assert problems(tmp_path, '[metrics]\nrequire_key = "yes"\n') == [
        "[metrics] require_key: must be true or false, got a string"]


def test_provider_max_connections_defaults_to_no_cap(tmp_path: Path) -> None:
    from streamgw.config import ProviderConfig

    assert ProviderConfig(name="p", type="demo").max_connections == 0
    path = write(tmp_path, '[providers.a]\ntype = "demo"\n[providers.b]\ntype = "demo"\nmax_connections = 50\n')
    providers = load_config(path, env={}).providers
    assert (providers["a"].max_connections, providers["b"].max_connections) == (0, 50)


def test_provider_keys_that_do_not_apply_and_bad_headers(tmp_path: Path) -> None:
    text = ('[providers.claude]\ntype = "anthropic"\nbase_url = "https://api.anthropic.com"\n'
            'system_role = "developer"\ntokens_per_second = 5\napi_key = "k"\napi_key_env = "ANTHROPIC_API_KEY"\n'
            '[providers.claude.headers]\n"Content-Length" = "5"\n"X Bad" = "v"\nX-Ok = "v"\n'
            '[providers."a/b"]\ntype = "demo"\n')
    assert problems(tmp_path, text) == [
        "[providers.claude] api_key: set api_key or api_key_env, not both",
        '[providers.claude] system_role: only applies to type "chat" (this provider is "anthropic")',
        '[providers.claude] tokens_per_second: only applies to type "demo" (this provider is "anthropic")',
        "[providers.claude.headers] Content-Length: is set by the gateway's transport and cannot be configured",
        '[providers.claude.headers] "X Bad": is not a valid HTTP header name',
        '[providers."a/b"]: a provider name must be letters, digits and ._- (no "/": it separates provider and model)',
    ]


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    """Each ``toml`` block of the README, and the keys it names in prose, pass the schema."""
    import re
    import tomllib

    from streamgw.config_schema import Problems, validate_file

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 5
    prose = """
[server]
workers = 2
backlog = 4096
websocket_max_age = 3600
http2 = false
certfile = "c.pem"
keyfile = "k.pem"
[providers.pool]
preset = "groq"
api_keys = ["k1", "k2"]
api_key_envs = ["K1", "K2"]
reasoning_style = "none"
replay_reasoning = "reasoning_content"
stream_usage = false
max_connections = 100
headers = { X-Team = "a" }
[providers.pool.timeouts]
idle = 5
"""
    for block in [*blocks, prose]:
        found = Problems("README")
        assert validate_file(tomllib.loads(block), found) is not None, found.items


def test_config_with_every_new_field_survives_pickling(tmp_path: Path) -> None:
    """``--workers`` sends the loaded config to each worker pickled."""
    import pickle

    path = write(tmp_path, '[server]\nmax_connections = 9\n[fetch]\nallow_hosts = ["10.0.0.0/8"]\n'
                           '[metrics]\nrequire_key = true\n[auth]\nkeys = [{ key = "sk-1", tenant = "t" }]\n')
    config = load_config(path, env={})
    assert pickle.loads(pickle.dumps(config)) == config


# --- startup: a bad config is one clear message and exit status 2 -----------------------------------------


def run_streamgw(args: list[str], env: dict[str, str] | None = None,
                 module: str = "streamgw") -> tuple[int, str]:
    """Run ``python -m module *args`` (the environment without STREAMGW_* and provider keys)."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGW_") and not k.endswith("_API_KEY")}
    done = subprocess.run([sys.executable, *(["-m", module] if module else []), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    return done.returncode, done.stderr


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]])
def test_serve_with_a_bad_config_exits_2_without_a_traceback(tmp_path: Path, extra: list[str]) -> None:
    from streamgw.testing.process import free_port

    path = write(tmp_path, '[auth]\nkey = ["sk-gw-1"]\n')
    status, stderr = run_streamgw(["serve", "--config", str(path), "--port", str(free_port()), *extra])
    assert status == 2
    assert stderr == f'streamgw: {path}: [auth] key: unknown key (did you mean "keys"?)\n'


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--log-level", "verbose"], {}, "streamgw: --log-level (or STREAMGW_LOG_LEVEL) must be one of debug, info, "
                                     "warning, error, critical, got 'verbose'\n"),
    ([], {"STREAMGW_LOG_LEVEL": "loud"}, "streamgw: --log-level (or STREAMGW_LOG_LEVEL) must be one of debug, "
                                         "info, warning, error, critical, got 'loud'\n"),
    (["--workers", "0"], {}, "streamgw: --workers must be at least 1, got 0\n"),
    (["--port", "70000"], {}, "streamgw: --port must be between 1 and 65535, got 70000\n"),
    ([], {"STREAMGW_PORT": "x"}, 'streamgw: STREAMGW_PORT: must be an integer, got "x"\n'),
])
def test_serve_with_bad_arguments_or_environment_exits_2(args: list[str], env: dict[str, str], message: str) -> None:
    from streamgw.testing.process import free_port

    port = [] if "--port" in args or "STREAMGW_PORT" in env else ["--port", str(free_port())]
    status, stderr = run_streamgw(["serve", *port, *args], env)
    assert (status, stderr) == (2, message)


def test_serve_with_an_unreadable_certificate_exits_2(tmp_path: Path) -> None:
    from streamgw.testing.process import free_port

    args = ["serve", "--port", str(free_port()), "--certfile", str(tmp_path / "no.pem"), "--keyfile",
            str(tmp_path / "no.key")]
    status, stderr = run_streamgw(args)
    assert status == 2 and stderr.startswith("streamgw: cannot load the TLS certificate") and "Traceback" not in stderr


def test_asgi_app_with_a_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    """What ``hypercorn -k trio streamgw.asgi:app`` runs in its worker process: the import of the app."""
    path = write(tmp_path, "[server]\nport = true\n")
    status, stderr = run_streamgw(["-c", "import streamgw.asgi"], {"STREAMGW_CONFIG": str(path)}, module="")
    assert (status, stderr) == (2, f"streamgw: {path}: [server] port: must be an integer, got a boolean\n")


def test_connection_and_body_limits_from_file_and_environment(tmp_path: Path) -> None:
    server = load_config(None, env={}).server
    assert (server.max_connections, server.body_timeout, server.max_body_bytes_in_flight) == (0, 30, 64 << 20)
    path = write(tmp_path, "[server]\nmax_connections = 20\nbody_timeout = 2.5\nmax_body_bytes_in_flight = 0\n")
    server = load_config(path, env={}).server
    assert (server.max_connections, server.body_timeout, server.max_body_bytes_in_flight) == (20, 2.5, 0)
    assert load_config(path, env={"STREAMGW_MAX_CONNECTIONS": "7"}).server.max_connections == 7
    assert load_config(path, env={"STREAMGW_BODY_TIMEOUT": "0"}).server.body_timeout == 0
    errors = [
        ("[server]\nmax_connections = -1\n", {}, "[server] max_connections: must be an integer >= 0"),
        ("[server]\nmax_connections = 2.5\n", {}, "[server] max_connections: must be an integer, got a float"),
        ("", {"STREAMGW_MAX_CONNECTIONS": "many"}, "STREAMGW_MAX_CONNECTIONS: must be an integer"),
        ("[server]\nbody_timeout = -1\n", {}, "[server] body_timeout: must be a number >= 0"),
        ('[server]\nmax_body_bytes_in_flight = "64M"\n', {},
         "[server] max_body_bytes_in_flight: must be an integer, got a string"),
    ]
    for text, env, message in errors:
        with pytest.raises(ConfigError) as raised:
            load_config(write(tmp_path, text), env=env)
        assert message in str(raised.value)
