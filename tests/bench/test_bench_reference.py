"""The bare proxy as the reference target of scenarios 1-3, and scenario 12 (paced streams): their arithmetic on
synthetic input, and tiny real runs (the logic, not a measurement)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.__main__ import _parser, selected_scenarios, settings_from_args
from bench.report import Progress, evaluate_targets, markdown, summary
from bench.scenarios import (
    DEFAULT_SCENARIOS,
    Bench,
    Settings,
    hist_distribution_ms,
    open_streams,
    paced,
    paced_figures,
    paced_vs_bare,
    planned_steps,
    throughput,
    ttfe,
    vs_bare_rows,
    window_gap_hist,
)

from .test_bench_http2 import _ShortRuns
from .test_bench_report import results, run_row


def test_paced_flags_and_default_set(tmp_path: Path) -> None:
    parse = _parser().parse_args
    assert 12 in DEFAULT_SCENARIOS and selected_scenarios(parse([])) == DEFAULT_SCENARIOS
    settings = settings_from_args(parse(["--paced-streams", "10,30", "--paced-rate", "25"]), tmp_path)
    assert settings.paced_streams == (10, 30) and settings.paced_rate == 25.0
    assert planned_steps(settings, (12,)) == 4  # each level: the gateway, then the bare proxy
    assert planned_steps(Settings(open_levels=(100, 200)), (1, 3)) == 4 * 3 * 3 + 2 * 2
    for bad in ("0", "-5", "fast", "5000"):
        with pytest.raises(SystemExit):
            parse(["--paced-rate", bad])


def test_gap_histogram_window_and_quantiles() -> None:
    tallies = [{"gap_hist": {"100": {"200": 3}, "101": {"200": 1, "250": 1}, "130": {"9000": 5}}},
               {"gap_hist": {"101": {"0": 2, "210": 2}}}, {}]
    hist = window_gap_hist(tallies, 10.0, 10.2)  # deciseconds 100 and 101; 130 (13.0 s) is outside
    assert hist == Counter({200: 4, 250: 1, 0: 2, 210: 2})
    dist = hist_distribution_ms(hist)  # 0.1 ms units: 0, 0, 20, 20, 20, 20, 21, 21, 25 ms
    assert dist["n"] == 9 and dist["p50"] == 20.0 and dist["max"] == 25.0
    assert dist["p99"] == pytest.approx(24.68) and dist["mean"] == pytest.approx(147 / 9, abs=1e-3)
    assert hist_distribution_ms(Counter())["p99"] is None


def test_paced_figures_and_ratios_on_synthetic_input() -> None:
    gateway = paced_figures({"events_per_s": 9000.0, "gw_cpu_us_per_event": 110.0, "gw_cpu_pct": 99.0,
                             "rss_per_stream_kb": 40.0, "window_gaps_ms": {"p50": 20.0, "p99": 26.5, "max": 40.0}},
                            200, 50)
    assert gateway["offered_events_per_s"] == 10000 and gateway["delivered_ratio"] == 0.9
    assert gateway["added_gap_p99_ms"] == 6.5 and gateway["added_gap_p50_ms"] == 0.0
    bare = paced_figures({"events_per_s": 10000.0, "gw_cpu_us_per_event": 80.0, "gw_cpu_pct": 80.0,
                          "rss_per_stream_kb": 12.5, "window_gaps_ms": {"p50": 20.0, "p99": 21.0, "max": 22.0}},
                         200, 50)
    ratios = paced_vs_bare(gateway, bare)
    assert ratios == {"gw_cpu_us_per_event": 1.375, "gw_cpu_pct": 1.238, "rss_per_stream_kb": 3.2,
                      "delivered_ratio": 0.9, "added_gap_p99_ms_over_bare": 5.5}
    assert paced_figures({"events_per_s": None}, 10, 50)["delivered_ratio"] is None


def test_vs_bare_rows_pair_each_round() -> None:
    gw, bare = run_row("gateway", 64, 500.0, 100.0), run_row("bare", 64, 1000.0, 50.0)
    gw["runs"] = [{"streams_per_s": 400.0, "gw_cpu_us_per_event": 120.0}, {"streams_per_s": 600.0}]
    bare["runs"] = [{"streams_per_s": 800.0, "gw_cpu_us_per_event": 60.0}, {"streams_per_s": 1000.0}]
    (row,) = vs_bare_rows([gw, bare, run_row("direct", 64, 900.0, None)])
    assert row["streams_per_s_rounds"] == [0.5, 0.6] and row["streams_per_s"] == 0.55
    assert row["gw_cpu_us_per_event"] == 2.0 and gw["median"]["vs_bare_streams_per_s"] == 0.55


def test_paced_target_and_report(tmp_path: Path) -> None:
    doc = results()
    level = {"streams": 200, "rate": 50.0, "offered_events_per_s": 10000.0,
             "gateway": {"delivered_ratio": 0.9, "window_gaps_ms": {"p50": 20.0, "p99": 26.5}, "added_gap_p99_ms": 6.5,
                         "gw_cpu_us_per_event": 110.0, "events_per_s": 9000.0, "errors": 0},
             "bare": {"delivered_ratio": 1.0, "window_gaps_ms": {"p50": 20.0, "p99": 21.0}, "added_gap_p99_ms": 1.0,
                      "gw_cpu_us_per_event": 100.0, "events_per_s": 10000.0, "errors": 0, "load_core_busy_pct": 97.0},
             "vs_bare": {"gw_cpu_us_per_event": 1.1, "added_gap_p99_ms_over_bare": 5.5}}
    doc["scenarios"]["paced"] = {"key": "paced", "title": "p", "skipped": None, "levels": [level],
                                 "config": {"rate": 50.0, "token_delay_s": 0.02, "window_s": 6.0},
                                 "cpu_per_event_ratio_max": 1.1}
    verdict = {t["key"]: t for t in evaluate_targets(doc)}["paced_cpu_ratio"]
    assert verdict["met"] == "yes (target)" and verdict["display"] == "1.1 x"
    doc["scenarios"]["paced"]["cpu_per_event_ratio_max"] = 1.3
    doc["targets"] = evaluate_targets(doc)
    assert doc["targets"][-1]["met"] == "no"
    text = markdown(doc)
    section = text[text.index("## 12. Paced streams"):]
    assert "**Worst gateway ÷ bare CPU per event: 1.300**" in section
    assert "| 200 | gateway | 10,000.0 | 9,000.0 | 0.900 |" in section and "| 200 | bare |" in section
    assert "Paced 200 x 50/s: gateway ÷ bare CPU per event 1.10, delivered 0.900" in summary(doc, tmp_path)
    assert "**warning**: paced 200 bare: the client side's core was 97% busy" in text


def test_bare_proxy_beside_the_gateway_in_scenarios_1_to_3(tmp_path: Path) -> None:
    settings = _ShortRuns(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory", concurrencies=(4,),
                          open_levels=(8,))
    bench = Bench(settings, Progress(10, enabled=False))
    doc = results()
    try:
        doc["scenarios"] = {"throughput": throughput(bench), "ttfe": ttfe(bench), "open_streams": open_streams(bench)}
    finally:
        bench.close()
    rows = {row["target"]: row for row in doc["scenarios"]["throughput"]["rows"]}
    assert set(rows) == {"gateway", "bare", "direct"}
    bare = rows["bare"]["median"]
    assert bare["errors"] == 0 and bare["streams_per_s"] > 0 and bare["gw_cpu_us_per_request"] is not None
    (ratio,) = doc["scenarios"]["throughput"]["vs_bare"]
    assert ratio["concurrency"] == 4 and ratio["streams_per_s"] > 0
    assert rows["gateway"]["median"]["vs_bare_streams_per_s"] == ratio["streams_per_s"]
    for c in ("1", "16"):
        median = doc["scenarios"]["ttfe"]["levels"][c]["median"]
        assert median["errors"] == 0 and median["bare_p50_ms"] > 0 and median["ttfe_ratio_vs_bare"] > 0
    assert doc["scenarios"]["ttfe"]["levels"]["1"]["median"]["paired_bare_added_p50_ms"] is not None
    (level,) = doc["scenarios"]["open_streams"]["levels"]
    assert level["ok"] and level["bare"]["ok"] and level["bare"]["opened"] == 8
    assert level["bare"]["rss_per_stream_kb"] is not None and level["vs_bare"]["delivered_ratio"] is not None
    doc["targets"] = evaluate_targets(doc)
    text = markdown(doc)
    assert "req/s ÷ bare" in text and "TTFE ÷ bare" in text and "| 8 | bare |" in text


def test_paced_tiny_real_run(tmp_path: Path) -> None:
    settings = Settings(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory", paced_streams=(10,),
                        paced_rate=20.0)
    bench = Bench(settings, Progress(2, enabled=False))
    try:
        scenario = paced(bench)
    finally:
        bench.close()
    (level,) = scenario["levels"]
    assert level["offered_events_per_s"] == 200.0 and scenario["config"]["token_delay_s"] == 0.05
    for kind in ("gateway", "bare"):
        figures = level[kind]
        assert figures["errors"] == 0 and figures["opened"] == 10
        assert 0.7 <= figures["delivered_ratio"] <= 1.3  # 200 events/s offered; a loaded machine may lag a little
        assert figures["window_gaps_ms"]["n"] > 100 and figures["window_gaps_ms"]["p50"] == pytest.approx(50, abs=15)
        assert figures["added_gap_p99_ms"] is not None and figures["rss_per_stream_kb"] is not None
    assert level["vs_bare"]["gw_cpu_us_per_event"] is None or level["vs_bare"]["gw_cpu_us_per_event"] > 0
    assert "text:tokens=" in scenario["config"]["models"][0] and "token_delay=0.05" in scenario["config"]["models"][0]
