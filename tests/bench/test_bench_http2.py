"""The bench's HTTP/2 paths: ``--compare-http2`` (scenario 7), ``--tls``, and the report of both."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import _parser, selected_scenarios, settings_from_args
from bench.procs import Pinning, environment
from bench.report import Progress, markdown, summary, warnings
from bench.scenarios import DEFAULT_SCENARIOS, Bench, Settings, http_versions, planned_steps

from .test_bench_report import Json, results, run_row


def test_compare_http2_adds_scenario_7(tmp_path: Path) -> None:
    parse = _parser().parse_args
    assert selected_scenarios(parse([])) == DEFAULT_SCENARIOS == (1, 2, 3, 4, 5, 6, 12)
    assert selected_scenarios(parse(["--compare-http2"])) == (1, 2, 3, 4, 5, 6, 12, 7)
    assert selected_scenarios(parse(["--scenarios", "7", "--compare-http2"])) == (7,)
    args = parse(["--quick", "--tls", "--h2-streams-per-connection", "10", "--compare-http2"])
    settings = settings_from_args(args, tmp_path)
    assert settings.tls and settings.h2_streams_per_connection == 10 and not settings.http2
    assert planned_steps(settings, (7,)) == 2  # HTTP/1.1 and h2, one repeat each


def _with_comparison() -> Json:
    doc = results()
    doc["scenarios"]["http_versions"] = {
        "key": "http_versions", "title": "t", "skipped": None,
        "rows": [run_row("h2", 64, 512.0, 95.0), run_row("http/1.1", 64, 400.0, 110.0)],
        "config": {"concurrency": 64, "model": "mock/text:tokens=20", "tls": True, "http1_connections": 64,
                   "h2_connections": 1, "h2_streams_per_connection": 64},
        "comparison": {"http1_streams_per_s": 400.0, "h2_streams_per_s": 512.0, "h2_over_http1": 1.28, "errors": 0},
    }
    doc["targets"] = []
    return doc


def test_report_shows_http1_against_h2(tmp_path: Path) -> None:
    doc = _with_comparison()
    text = markdown(doc)
    section = text[text.index("## 7. HTTP/1.1 vs HTTP/2"):]
    assert "The same gateway over TLS" in section and "HTTP/2 on 1 (64 streams each)" in section
    assert "**HTTP/1.1 400.0 streams/s, HTTP/2 512.0 streams/s** (h2/h1 = 1.28)" in section
    assert "| h2 | 64 | 512.0 |" in section and "| http/1.1 | 64 | 400.0 |" in section
    assert "HTTP/1.1 vs HTTP/2 at c=64: 400.0 vs 512.0 streams/s (h2/h1 = 1.28)" in summary(doc, tmp_path)
    assert any(w.startswith("http_versions h2 c=64: the client side's core") for w in warnings(doc))


class _ShortRuns(Settings):
    """Settings whose closed-loop runs last half a second (the scenario's logic, not a measurement)."""

    @property
    def duration(self) -> float:
        return 0.4

    @property
    def warmup(self) -> float:
        return 0.1


def test_http_versions_against_the_bench_gateway_over_tls(tmp_path: Path) -> None:
    """The bench starts its gateway with ``--http2`` and a certificate; both protocols stream through it."""
    settings = _ShortRuns(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory", tls=True,
                          h2_streams_per_connection=8)
    bench = Bench(settings, Progress(2, enabled=False))
    try:
        scenario = http_versions(bench)
        log = bench.gateway.log.read_text()
        assert "--http2" in " ".join(bench.gateway.proc.args)  # type: ignore[arg-type]
        assert bench.gateway.url.startswith("https://")
    finally:
        bench.close()
    assert scenario["config"] == {"concurrency": 64, "model": "mock/text:tokens=20", "tls": True,
                                  "http1_connections": 64, "h2_connections": 8, "h2_streams_per_connection": 8}
    rows = {row["target"]: row for row in scenario["rows"]}
    assert set(rows) == {"http/1.1", "h2"}
    for row in rows.values():
        assert row["median"]["errors"] == 0 and row["median"]["streams_per_s"] > 0
        assert row["invariants_checked"] >= 1 and row["invariant_failures"] == []
    comparison = scenario["comparison"]
    assert comparison["errors"] == 0 and comparison["h2_over_http1"] > 0
    assert "Traceback" not in log
    assert environment(Pinning(False, reason="test"))["packages"]["h2"] != "not installed"
