"""``[tenants.NAME]`` and ``[prices."PATTERN"]``: loaded into ``Config``, every mistake reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgw.config import Config, ConfigError, ControlConfig, Price, StoreConfig
from streamgw.config_loader import load_config
from streamgw.engine.limits import price_of

TEXT = """
[tenants.team-a]
requests_per_minute = 100
cost_per_month = 25.5

[prices."openai/gpt-4o*"]
input = 2.5
cached_input = 1.25
output = 10

[prices."*-mini"]
input = 0.15
output = 0.6
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return load_config(str(path), env={})


def test_tenants_and_prices_load(tmp_path: Path) -> None:
    config = load(tmp_path, TEXT)
    assert config.tenant_limits["team-a"].requests_per_minute == 100
    assert config.tenant_limits["team-a"].cost_per_month == 25.5
    gpt, mini = config.prices
    assert gpt == Price("openai/gpt-4o*", 2.5, 1.25, 10.0) and mini.cached_input is None
    # 1000 input tokens of which 400 cached, 200 output
    assert gpt.cost(1000, 400, 200) == pytest.approx((600 * 2.5 + 400 * 1.25 + 200 * 10) / 1e6)
    assert mini.cost(1000, 400, 200) == pytest.approx((1000 * 0.15 + 200 * 0.6) / 1e6)
    # matched against provider/model first, then the bare upstream model; first table wins
    assert price_of(config.prices, "openai", "gpt-4o-mini") is gpt
    assert price_of(config.prices, "groq", "llama-mini") is mini
    assert price_of(config.prices, "groq", "llama") is None


def test_mistakes_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, """
[tenants."bad name!"]
requests_per_minute = 1
[tenants.ok]
request_per_minute = 1
[prices."x"]
input = -1
output = "2"
""")
    text = str(caught.value)
    assert "[tenants" in text and "bad name!" in text
    assert "request_per_minute" in text and 'did you mean "requests_per_minute"' in text
    assert "input" in text and "output" in text
    assert len(caught.value.problems) >= 4


def test_the_control_backend_follows_the_store() -> None:
    assert Config().control_backend() == ("memory", "", "")  # built in code: no file nobody asked for
    auto = ControlConfig()
    assert Config(control=auto, store=StoreConfig(backend="sqlite")).control_backend() == (
        "sqlite", "streamgw-control.db", "")
    assert Config(control=auto, store=StoreConfig(backend="redis", url="redis://h:1/0")).control_backend() == (
        "redis", "redis://h:1/0", "streamgw:")
    assert Config(control=auto, store=StoreConfig(backend="memory")).control_backend() == ("memory", "", "")


def test_budget_periods_are_utc_calendar_days_and_months() -> None:
    from datetime import UTC, datetime

    from streamgw.engine.limits import _periods

    last = datetime(2026, 1, 31, 23, 59, 59, 500000, tzinfo=UTC).timestamp()
    assert _periods(last) == ("2026-01-31", pytest.approx(0.5), "2026-01", pytest.approx(0.5))
    leap = datetime(2028, 2, 28, 12, tzinfo=UTC).timestamp()
    day, day_left, month, month_left = _periods(leap)
    assert (day, month) == ("2028-02-28", "2028-02")
    assert day_left == pytest.approx(12 * 3600) and month_left == pytest.approx((12 + 24) * 3600)
