"""Configuration: TOML, presets, environment detection, secrets that never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgw.config import ConfigError, Secret, load_config
from streamgw.providers.presets import PRESETS


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
        ('[providers.x]\ntype = "nope"\nbase_url = "http://x"', "type must be one of"),
        ('[providers.x]\ntype = "chat"', "base_url is required"),
        ('[providers.x]\npreset = "unknown"', "preset must be one of"),
        ('[providers.x]\ntype = "chat"\nbase_url = "http://x"\nmodels = "m"', "models must be a list"),
        ("[timeouts]\nidle = -1", "timeouts.idle must be a number >= 0"),
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
    errors = [
        ("[server]\ndrain_timeout = -1\n", {}, "server.drain_timeout must be a number >= 0"),
        ('[server]\ndrain_timeout = "30s"\n', {}, "server.drain_timeout must be a number >= 0"),
        ("[server]\ndrain_timeout = nan\n", {}, "server.drain_timeout must be a finite number >= 0"),
        ("", {"STREAMGW_DRAIN_TIMEOUT": "soon"}, "STREAMGW_DRAIN_TIMEOUT must be a number >= 0"),
        ("", {"STREAMGW_DRAIN_TIMEOUT": "-3"}, "STREAMGW_DRAIN_TIMEOUT must be a number >= 0"),
        ("", {"STREAMGW_DRAIN_TIMEOUT": "inf"}, "STREAMGW_DRAIN_TIMEOUT must be a finite number >= 0"),
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
        ('[server]\nhttp2 = "yes"\n', {}, "server.http2 must be true or false"),
        ("", {"STREAMGW_HTTP2": "maybe"}, "STREAMGW_HTTP2 must be 1 or 0"),
        ('[server]\ncertfile = "c.pem"\n', {}, "server.certfile and server.keyfile must be set together"),
        ("", {"STREAMGW_KEYFILE": "k.pem"}, "server.certfile and server.keyfile must be set together"),
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


def test_connection_and_body_limits_from_file_and_environment(tmp_path: Path) -> None:
    server = load_config(None, env={}).server
    assert (server.max_connections, server.body_timeout, server.max_body_bytes_in_flight) == (0, 30, 64 << 20)
    path = write(tmp_path, "[server]\nmax_connections = 20\nbody_timeout = 2.5\nmax_body_bytes_in_flight = 0\n")
    server = load_config(path, env={}).server
    assert (server.max_connections, server.body_timeout, server.max_body_bytes_in_flight) == (20, 2.5, 0)
    assert load_config(path, env={"STREAMGW_MAX_CONNECTIONS": "7"}).server.max_connections == 7
    errors = [
        ("[server]\nmax_connections = -1\n", {}, "server.max_connections must be a whole number >= 0"),
        ("[server]\nmax_connections = 2.5\n", {}, "server.max_connections must be a whole number >= 0"),
        ("", {"STREAMGW_MAX_CONNECTIONS": "many"}, "STREAMGW_MAX_CONNECTIONS must be a whole number >= 0"),
        ("[server]\nbody_timeout = -1\n", {}, "server.body_timeout must be a number >= 0"),
        ('[server]\nmax_body_bytes_in_flight = "64M"\n', {},
         "server.max_body_bytes_in_flight must be a whole number >= 0"),
    ]
    for text, env, message in errors:
        with pytest.raises(ConfigError) as raised:
            load_config(write(tmp_path, text), env=env)
        assert str(raised.value) == message
