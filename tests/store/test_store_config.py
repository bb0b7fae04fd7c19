"""``[store]`` in the config file and its environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgw.config import Config, ConfigError, StoreConfig
from streamgw.config_loader import load_config


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> StoreConfig:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return load_config(path, env=env or {}).store


def test_defaults_sqlite_next_to_the_process() -> None:
    store = load_config(None, env={}).store
    assert store == StoreConfig(backend="sqlite", path="streamgw.db", url="redis://127.0.0.1:6379/0",
                                retention_days=30.0, max_response_bytes=1048576, queue_size=1000)
    assert Config().store.backend == "memory", "a config built in code writes no file"


def test_store_table(tmp_path: Path) -> None:
    store = load(tmp_path, '[store]\nbackend = "redis"\nurl = "redis://cache:6380/2"\nretention_days = 0.5\n'
                           'max_response_bytes = 2048\nqueue_size = 10\ntimeout = 1\nkey_prefix = "gw1:"\n'
                           'confirm_writes = false\nsnapshot_after = 2.5\n')
    assert store == StoreConfig(backend="redis", url="redis://cache:6380/2", retention_days=0.5,
                                max_response_bytes=2048, queue_size=10, timeout=1.0, key_prefix="gw1:",
                                confirm_writes=False, snapshot_after=2.5)
    assert load(tmp_path, "[store]\nsnapshot_after = 0\n").snapshot_after == 0.0, "0: at once, as before"
    assert load_config(None, env={}).store.snapshot_after == 1.0


def test_environment_overrides(tmp_path: Path) -> None:
    env = {"STREAMGW_STORE_BACKEND": "redis", "STREAMGW_STORE_PATH": "/data/gw.db",
           "STREAMGW_REDIS_URL": "redis://other:6379/1"}
    store = load(tmp_path, '[store]\nbackend = "sqlite"\npath = "here.db"\n', env)
    assert (store.backend, store.path, store.url) == ("redis", "/data/gw.db", "redis://other:6379/1")


@pytest.mark.parametrize(("text", "message"), [
    ('backend = "mongo"', r"\[store\] backend: must be one of"),
    ('colour = "blue"', r"\[store\] colour: unknown key"),
    ("retention_days = -1", r"\[store\] retention_days: must be a number >= 0"),
    ("queue_size = 0", r"\[store\] queue_size: must be an integer >= 1"),
    ("queue_size = 1.5", r"\[store\] queue_size: must be an integer, got a float"),
    ('confirm_writes = "yes"', "true or false"),
    ("snapshot_after = -0.5", r"\[store\] snapshot_after: must be a number >= 0"),
    ('snapshot_after = "soon"', r"\[store\] snapshot_after: must be a number"),
    ('backend = "redis"\nurl = "http://cache"', r"\[store\] url: must be a redis://"),
    ('backend = "redis"\nurl = "redis://cache/x"', "redis://"),
])
def test_bad_store_tables(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, f"[store]\n{text}\n")
