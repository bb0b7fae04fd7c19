"""Report generation and the bench's statistics (synthetic results; no timing thresholds)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import _parser, settings_from_args
from bench.procs import Pinning, environment, git_commit, plan_pinning
from bench.report import Progress, evaluate_targets, markdown, summary, warnings, write_report
from bench.scenarios import (
    Bench,
    Settings,
    _match_cancels,
    distribution_ms,
    percentile,
    summarize_target,
    window_count,
)

Json = dict[str, Any]


def run_row(target: str, c: int, streams: float, cpu: float | None) -> Json:
    median = {"streams_per_s": streams, "events_per_s": streams * 28, "gw_cpu_pct": 90.0,
              "gw_cpu_us_per_event": cpu, "gw_cpu_us_per_request": None, "mock_cpu_pct": 40.0,
              "mock_cpu_us_per_request": 900.0, "loadgen_cpu_pct": 20.0, "loadgen_cpu_us_per_event": 15.0,
              "loadgen_capacity_per_s": 2500.0, "load_core_busy_pct": 95.0, "gw_core_others_pct": 0.0,
              "first_event_p50_ms": 1.0, "first_event_p99_ms": 2.0, "total_p50_ms": 3.0, "total_p99_ms": 4.0,
              "errors": 0}
    return {"target": target, "concurrency": c, "median": median, "runs": [], "invariants_checked": 3,
            "invariant_failures": []}


def open_level(n: int, kb: float, errors: int = 0) -> Json:
    return {"streams": n, "opened": n, "ramp_s": 2.0, "window_s": 9.0, "events_per_s": float(n),
            "delivered_ratio": 1.0, "gw_cpu_pct": 40.0, "gw_cpu_us_per_event": 80.0, "rss_bytes": 10 * 2**20,
            "rss_per_stream_kb": kb, "open_files": 2 * n, "errors": errors, "gaps_ms": distribution_ms([1.0]),
            "ok": errors == 0}


def results(*, streams: float = 700, added: float = 0.7, cpu: float = 130, levels: list[Json] | None = None,
            target: Json | None = None) -> Json:
    levels = [open_level(5000, 22.0), open_level(9000, 21.0)] if levels is None else levels
    ttfe_median = {"added_p50_ms": added, "added_p99_ms": 2.0, "paired_added_p50_ms": added,
                   "gw_cpu_us_per_event": 100.0, "errors": 0,
                   **{f"{w}_{q}_ms": 1.0 for w in ("gateway", "direct") for q in ("p50", "p90", "p99")}}
    return {
        "schema": "streamgw-bench/1", "mode": "full", "started_at": "2026-01-01T00:00:00+00:00", "duration_s": 1.0,
        "settings": {"target": target}, "environment": environment(Pinning(False, reason="test")),
        "scenarios": {
            "throughput": {"key": "throughput", "title": "t", "skipped": None,
                           "rows": [run_row("direct", 64, 900, None), run_row("gateway", 64, streams, cpu)]},
            "ttfe": {"key": "ttfe", "title": "t", "skipped": None,
                     "levels": {"1": {"median": ttfe_median, "runs": [],
                                      "samples_ms": {"gateway": [1.0, 2.0], "direct": [0.5, 0.6]}}}},
            "open_streams": {"key": "open_streams", "title": "o", "skipped": None, "levels": levels},
            "hedging": {"key": "hedging", "title": "Hedging", "skipped": "needs the mock"},
            "cancellation": {"key": "cancellation", "title": "c", "skipped": None,
                             "targets": {"gateway": {"latency_ms": distribution_ms([0.001, 0.002]), "cancels": 2,
                                                     "not_observed": 0, "samples_ms": [1.0, 2.0]}}},
        },
    }


def verdicts(doc: Json) -> dict[str, str]:
    return {t["key"]: t["met"] for t in evaluate_targets(doc)}


def test_targets_graded_against_floor_and_target() -> None:
    assert verdicts(results()) == {"streams_c64": "yes (target)", "added_ttfe_c1": "yes (floor)",
                                   "cpu_per_event": "no", "open_streams": "yes (floor)", "paced_cpu_ratio": "n/a"}
    assert verdicts(results(streams=300, added=0.4, cpu=60))["streams_c64"] == "no"
    assert verdicts(results(streams=300, added=0.4, cpu=60))["added_ttfe_c1"] == "yes (target)"
    assert verdicts(results(cpu=60))["cpu_per_event"] == "yes (target)"


@pytest.mark.parametrize(("levels", "met"), [
    ([open_level(9000, 19.5)], "yes (target)"),
    ([open_level(9000, 26.0)], "no"),
    ([open_level(5000, 24.0), open_level(9000, 19.0, errors=3)], "yes (floor)"),
    ([open_level(300, 60.0)], "n/a"),
    ([], "n/a"),
    ([open_level(5000, 10.0, errors=1)], "no"),
])
def test_open_streams_verdict(levels: list[Json], met: str) -> None:
    assert verdicts(results(levels=levels))["open_streams"] == met


def test_remote_target_is_not_graded() -> None:
    doc = results(target={"base_url": "http://x", "path": "/v1/responses", "model": "m"})
    assert {t["met"] for t in evaluate_targets(doc)} <= {"n/a (--target)", "n/a"}


def test_markdown_has_the_targets_table_and_sections() -> None:
    doc = results()
    doc["targets"] = evaluate_targets(doc)
    text = markdown(doc)
    assert "| measure | floor (must) | target | measured | met? |" in text
    assert "| translated 20-chunk streams/s at c=64 | ≥ 400 streams/s | ≥ 650 streams/s | 700 streams/s |" in text
    assert "9,000 streams at 21.0 KB each" in text
    assert "Skipped: needs the mock" in text
    assert "pinning: not pinned (test)" in text
    found = warnings(doc)
    assert found[0].startswith("throughput gateway c=64: the client side's core was 95% busy")
    assert found[1].startswith("client-side ceiling: straight to the mock") and "cannot be verified" not in found[1]
    assert f"**warning**: {found[0]}" in text


def test_write_report_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    doc = write_report(results(), tmp_path)
    assert (tmp_path / "report.md").read_text().startswith("# streamgw bench")
    assert json.loads((tmp_path / "results.json").read_text())["targets"][0]["key"] == "streams_c64"
    assert set(doc["plots"]) == {"throughput.png", "ttfe.png", "open_streams.png", "cancellation.png"}
    for name in doc["plots"]:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert "report.md" in summary(doc, tmp_path)


def test_progress_bar() -> None:
    out = io.StringIO()
    progress = Progress(4, stream=out)
    progress.step("first")
    progress.update("3 done")
    assert progress.render_line().startswith("[░") and "0/4" in progress.render_line()
    progress.step("second")
    assert "1/4" in progress.render_line() and "second" in progress.render_line()
    progress.close()
    assert "4/4" in progress.render_line()
    assert out.getvalue() == "[1/4] first\n[2/4] second\n"  # not a terminal: one line per step


# ----------------------------------------------------------------------------------- statistics


def test_percentile_and_distribution() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    dist = distribution_ms([0.001, None, 0.003])
    assert dist["n"] == 2 and dist["p50"] == 2.0 and dist["max"] == 3.0


def test_window_count() -> None:
    hist = {"100": 1, "101": 2, "105": 4, "110": 8}
    assert window_count(hist, 10.05, 10.55) == 6  # buckets 101..105
    assert window_count(hist, 10.0, 11.0) == 7


def test_summarize_target() -> None:
    records = {"start": [10.0, 10.1], "head": [0.001, 0.001], "first_event": [0.002, None],
               "first_token": [0.002, None], "total": [0.01, 0.5], "events": [28, 3], "bytes": [900, 100],
               "status": [200, 200], "error": ["", "no_terminal"], "cancel_at": [None, None],
               "max_gap": [0.001, 0.1]}
    phase = {"t_measure": 10.0, "t_stop": 11.0, "targets": [{
        "name": "gateway", "records": records, "gaps": [0.0, 0.001], "errors": {"no_terminal": 1}, "held": 0,
        "event_hist": {"100": 28, "105": 3, "111": 5}, "done_hist": {"100": 1}, "invariants": {"checked": 0,
                                                                                              "failures": []}}]}
    s = summarize_target(phase, 0)
    assert s["streams_per_s"] == 1.0 and s["events_per_s"] == 31.0
    assert s["errors"] == 1 and s["first_event_ms"]["n"] == 1 and s["events_per_request"] == 28


def test_cancels_matched_to_the_next_disconnect() -> None:
    def tally(name: str, cancels: list[float | None]) -> Json:
        return {"name": name, "records": {"cancel_at": cancels}}

    outs = [{"targets": [tally("gateway", [1.0, 3.0]), tally("direct", [2.0, None])]}]
    found = _match_cancels(outs, [1.002, 2.0001, 2.5])  # the gateway's close at 3.0 is never seen
    assert found["gateway"][0] == pytest.approx(0.002)
    assert found["gateway"][1] is None
    assert found["direct"] == [pytest.approx(0.0001)]


# ------------------------------------------------------------------------------------ settings


def test_remote_chat_target(tmp_path: Path) -> None:
    args = _parser().parse_args(["--target", "http://127.0.0.1:9/", "--path", "/v1/chat/completions",
                                 "--model", "llama", "--api-key", "sk-x", "--quick"])
    settings = settings_from_args(args, tmp_path)
    assert settings.repeats == 1 and settings.open_levels == (300,)
    bench = Bench(settings, Progress(1, enabled=False))
    try:
        target = bench.remote_target()
    finally:
        bench.close()
    assert target.url == "http://127.0.0.1:9/v1/chat/completions" and target.dialect == "chat"
    assert json.loads(target.body) == {"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                                       "stream": True}
    assert target.headers == (("authorization", "Bearer sk-x"),)
    assert "sk-x" not in json.dumps(settings.to_json())


def test_settings_defaults(tmp_path: Path) -> None:
    settings = settings_from_args(_parser().parse_args(["--scenarios", "1,3"]), tmp_path)
    assert settings == Settings(out_dir=tmp_path)


def test_git_commit_outside_a_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "packed-refs").write_text("abc123 refs/heads/main\n")
    assert git_commit(tmp_path) == "abc123"


@pytest.mark.parametrize(("usable", "taskset", "expected"), [
    ((0, 1), True, ((0,), (1,), (1,), "gateway on CPU 0; mock, load generator and bench on CPU 1")),
    ((0, 1, 2, 3), True, ((0,), (1,), (2, 3), "gateway on CPU 0; mock on CPU 1; load generator and bench on "
                                               "CPU 2,3")),
    ((3,), True, ((), (), (), "not pinned (only 1 usable core)")),
    ((0, 1), False, ((), (), (), "not pinned (taskset not found)")),
])
def test_pinning_plan(usable: tuple[int, ...], taskset: bool, expected: tuple[Any, ...]) -> None:
    pinning = plan_pinning(True, usable, taskset)
    gateway, mock, _load, _text = expected
    assert (pinning.gateway_cpus, pinning.mock_cpus, pinning.load_cpus, pinning.describe()) == expected
    assert pinning.gateway_prefix() == (["taskset", "-c", "0"] if gateway else [])
    assert pinning.mock_prefix() == (["taskset", "-c", "1"] if mock else [])
    assert plan_pinning(False, usable, taskset).describe() == "not pinned (disabled with --no-pin)"
