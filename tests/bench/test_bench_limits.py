"""Scenario 11 (``--compare-limits``): limits on (SQLite, Redis) vs off, briefly, against real gateways."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import _parser, selected_scenarios
from bench.report import Progress, _scenario_md
from bench.scenarios import DEFAULT_SCENARIOS, Bench, Settings, limits, planned_steps
from streamgw.testing.redis_server import require_redis

from .test_bench_http2 import _ShortRuns


def test_limits_flag() -> None:
    parse = _parser().parse_args
    assert selected_scenarios(parse(["--compare-limits"])) == (*DEFAULT_SCENARIOS, 11)
    assert planned_steps(Settings(repeats=2), (11,)) == 6


class _SecondRuns(_ShortRuns):
    """A one-second window: three fresh gateways on a busy CI machine must each complete some streams in it."""

    @property
    def duration(self) -> float:
        return 1.0


def test_compare_limits_against_real_gateways(tmp_path: Path) -> None:
    require_redis()
    settings = _SecondRuns(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory")
    bench = Bench(settings, Progress(3, enabled=False))
    try:
        scenario = limits(bench)
    finally:
        bench.close()
    rows = {row["target"]: row for row in scenario["rows"]}
    assert set(rows) == {"off", "sqlite", "redis"}
    for row in rows.values():  # limits far above the load: nothing refused
        assert row["median"]["errors"] == 0 and row["median"]["streams_per_s"] > 0, row["runs"]
    for name in ("sqlite", "redis"):
        assert scenario["comparison"][name]["throughput_ratio"] > 0
        assert "concurrent_streams = 100000" in (tmp_path / f"gateway-limits-{name}.toml").read_text()
    assert (tmp_path / "limits.db").exists()  # the SQLite gateway really used its control file
    text = "\n".join(_scenario_md("limits", scenario))
    assert "## 11. Limits on vs off" in text and "**sqlite: throughput" in text
