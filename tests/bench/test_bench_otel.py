"""The bench's scenario 10 (``--compare-otel``): a gateway with tracing off and one with tracing on, interleaved."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import _parser, selected_scenarios
from bench.report import Progress, markdown, summary
from bench.scenarios import DEFAULT_SCENARIOS, Bench, Settings, otel_cost, planned_steps

from .test_bench_http2 import _ShortRuns


def test_otel_flag_and_steps() -> None:
    parse = _parser().parse_args
    assert selected_scenarios(parse(["--compare-otel"])) == (*DEFAULT_SCENARIOS, 10)
    assert selected_scenarios(parse(["--scenarios", "10", "--compare-otel"])) == (10,)
    assert selected_scenarios(parse(["--compare-logs", "--compare-otel"])) == (*DEFAULT_SCENARIOS, 9, 10)
    assert planned_steps(Settings(repeats=2), (10,)) == 6  # c=64 off and on, then TTFE at c=1, per repeat


def test_tracing_off_against_on_with_real_gateways(tmp_path: Path) -> None:
    settings = _ShortRuns(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory")
    bench = Bench(settings, Progress(3, enabled=False))
    try:
        scenario = otel_cost(bench)
    finally:
        bench.close()
    assert scenario["skipped"] is None
    rows = {row["target"]: row for row in scenario["rows"]}
    assert set(rows) == {"tracing off", "tracing on"}
    for row in rows.values():
        assert row["median"]["errors"] == 0 and row["median"]["streams_per_s"] > 0
    cmp = scenario["comparison"]
    assert cmp["errors"] == 0 and cmp["throughput_loss_pct"] is not None
    assert cmp["export_requests"] >= 1 and cmp["receiver_errors"] == 0  # the tracing gateway did export
    assert set(scenario["ttfe_c1"]) == {"tracing off", "tracing on", "runs"}
    assert "[tracing]\nenabled = true\n" in (tmp_path / "gateway-otel-on.toml").read_text()
    assert "[tracing]" not in (tmp_path / "gateway-otel-off.toml").read_text()
    for name in ("gateway-otel-off", "gateway-otel-on"):
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text()
    doc = {"scenarios": {"otel": scenario}, "targets": [], "mode": "quick", "environment": bench.environment,
           "started_at": "now",
           "settings": settings.to_json()}
    assert "## 10. OpenTelemetry tracing off vs on" in markdown(doc)
    assert "Tracing off vs on at c=64:" in summary(doc, tmp_path)
