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
