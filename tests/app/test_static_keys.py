"""``[keys.NAME]``: keys with an identity (name, tenant, limits), by value or by SHA-256; expiry; ``[admin]``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from streamgw.config import ConfigError
from streamgw.config_loader import load_config
from streamgw.testing.harness import running_gateway

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-0123456789"
OLD = "sk-old-0123456789"
OFF = "sk-off-0123456789"
LEGACY = "sk-legacy-0123456789"

CONFIG = f"""
[auth]
keys = ["{LEGACY}"]

[keys.alice]
key = "{ALICE}"
tenant = "team-a"
models = ["demo/*"]
requests_per_minute = 60
tokens_per_day = 1000

[keys.alice.model_limits."demo/fast*"]
concurrent_streams = 2

[keys.bob]
key_sha256 = "{hashlib.sha256(BOB.encode()).hexdigest()}"

[keys.old]
key = "{OLD}"
expires = 2020-01-01T00:00:00Z

[keys.off]
key_env = "OFF_KEY"
disabled = true

[admin]
key = "sk-admin-0123456789"
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "streamgw.toml"
    # The limits' counters and the store in this test's own files: by default they are in the working directory,
    # where a key's daily token budget would carry over from one run of the tests to the next.
    own = f'\n[store]\npath = "{tmp_path / "store.db"}"\n\n[control]\npath = "{tmp_path / "control.db"}"\n'
    path.write_text(text + own if "[store]" not in text and "[control]" not in text else text)
    return load_config(str(path), env=env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return str(caught.value)


def test_keys_tables_become_policies(tmp_path: Path) -> None:
    config = load(tmp_path, CONFIG, {"OFF_KEY": OFF})
    alice, bob, old, off = config.keys
    assert alice.policy.name == "alice" and alice.policy.tenant == "t:team-a"
    assert alice.policy.models == ("demo/*",)
    assert alice.policy.limits.requests_per_minute == 60 and alice.policy.limits.tokens_per_day == 1000
    assert alice.policy.limits.tokens_per_minute == 0
    [(pattern, limits)] = alice.policy.model_limits
    assert pattern == "demo/fast*" and limits.concurrent_streams == 2 and not limits.requests_per_minute
    assert bob.secret is None and bob.digest == hashlib.sha256(BOB.encode()).digest()
    assert bob.policy.tenant == "key:" + hashlib.sha256(BOB.encode()).hexdigest()[:24]
    assert old.expires == 1577836800.0 and off.disabled and off.secret is not None
    assert config.admin_key is not None and config.admin_key.get() == "sk-admin-0123456789"
    assert ALICE in config.secrets() and "sk-admin-0123456789" in config.secrets()
    assert ALICE not in repr(config)


@pytest.mark.parametrize(("text", "problem"), [
    ('[keys.a]\ntenant = "x"', "[keys.a]: needs exactly one of key, key_env or key_sha256"),
    ('[keys.a]\nkey = "k1"\nkey_sha256 = "' + "0" * 64 + '"', "needs exactly one of key, key_env or key_sha256"),
    ('[keys.a]\nkey_sha256 = "ABC"', "[keys.a] key_sha256"),
    ('[keys.a]\nkey = "k 1"', "[keys.a] key: must be printable ASCII"),
    ('[keys.a]\nkey_env = "NOPE"', "[keys.a] key_env: the variable NOPE is not set or empty"),
    ('[keys.a]\nkey = "k1"\nexpires = 2027-01-01T00:00:00', "must name its time zone"),
    ('[keys.a]\nkey = "k1"\nrequests_per_minute = -1', "[keys.a] requests_per_minute"),
    ('[keys.a]\nkey = "k1"\nrequests_per_mintue = 1', "did you mean"),
    ('[keys.a]\nkey = "k1"\n[keys.b]\nkey = "k1"', "[keys.b]: repeats a key"),
    ('[auth]\nkeys = ["k1"]\n[keys.b]\nkey = "k1"', "[keys.b]: repeats a key"),
    ('[keys."bad name"]\nkey = "k1"', "keys"),
    ('[keys.a]\nkey = "k1"\n[admin]\nkey = "k1"', "[admin] key: must differ from every gateway key"),
    ('[keys.a]\nkey = "k1"\n[keys.a.model_limits."x"]\ntokens_per_minut = 3', "tokens_per_minut"),
])
def test_bad_keys_tables_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    message = problems(tmp_path, text)
    assert problem in message
    assert "k1" not in message.replace("[keys.", "")  # a key's value is never shown


async def test_each_key_authenticates_as_itself(tmp_path: Path) -> None:
    config = load(tmp_path, CONFIG, {"OFF_KEY": OFF})
    async with running_gateway(config) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async def status(key: str) -> int:
                answer = await client.post("/v1/responses", json={"model": "demo/x", "input": "hi"},
                                           headers={"authorization": f"Bearer {key}"})
                return answer.status_code

            assert [await status(k) for k in (ALICE, BOB, LEGACY)] == [200, 200, 200]
            assert [await status(k) for k in (OLD, OFF, "sk-nobody", ALICE + "x")] == [401, 401, 401, 401]
            assert (await client.get("/v1/models", headers={"authorization": f"Bearer {OLD}"})).status_code == 401


def test_callers_carry_their_key_policy(tmp_path: Path) -> None:
    from streamgw.app.gateway import Gateway

    gw = Gateway(load(tmp_path, CONFIG, {"OFF_KEY": OFF}))
    alice, bob, legacy = (gw.caller(f"Bearer {k}") for k in (ALICE, BOB, LEGACY))
    assert alice is not None and alice.key is not None and alice.key.name == "alice"
    assert alice.tenant == "t:team-a" and alice.key_index is None
    assert bob is not None and bob.key is not None and bob.key.name == "bob"
    assert legacy is not None and legacy.key is not None and legacy.key.name == "auth-1" and legacy.key_index == 0
    assert gw.caller(f"Basic {ALICE}") is None and gw.caller("Bearer ") is None and gw.caller(None) is None
