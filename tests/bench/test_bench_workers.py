"""The bench's multi-worker paths: ``--workers N``, ``--compare-workers`` (scenario 8), and CPU over a process tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import _parser, selected_scenarios, settings_from_args
from bench.procs import Pinning, Sampler, children_of, cpu_seconds, plan_pinning, tree_cpu_seconds
from bench.report import Progress, markdown, summary, warnings, write_report
from bench.scenarios import (
    DEFAULT_SCENARIOS,
    Bench,
    Settings,
    _warm,
    _workers_note,
    planned_steps,
    worker_scaling,
)

from .test_bench_http2 import _ShortRuns
from .test_bench_report import Json, results, run_row


def test_workers_flags(tmp_path: Path) -> None:
    parse = _parser().parse_args
    assert selected_scenarios(parse(["--compare-workers"])) == (*DEFAULT_SCENARIOS, 8)
    assert selected_scenarios(parse(["--scenarios", "1", "--compare-workers", "--compare-http2"])) == (1, 7, 8)
    assert selected_scenarios(parse(["--scenarios", "8", "--compare-workers"])) == (8,)
    settings = settings_from_args(parse(["--quick", "--workers", "3"]), tmp_path)
    assert settings.workers == 3 and settings.to_json()["workers"] == 3
    assert settings_from_args(parse([]), tmp_path).workers == 1
    assert planned_steps(Settings(repeats=3), (8,)) == 6  # 1 and 2 workers, interleaved, three repeats
    with pytest.raises(SystemExit):
        parse(["--workers", "0"])


@pytest.mark.parametrize(("usable", "cores", "gateway", "mock", "load", "note"), [
    ((0, 1), 1, (0,), (1,), (1,), False),
    ((0, 1), 2, (0,), (1,), (1,), True),  # no free core: every gateway shares CPU 0
    ((0, 1, 2), 2, (0, 1), (2,), (2,), False),
    ((0, 1, 2, 3), 2, (0, 1), (2,), (3,), False),
    ((0, 1, 2, 3), 1, (0,), (1,), (2, 3), False),
])
def test_pinning_for_workers(usable: tuple[int, ...], cores: int, gateway: tuple[int, ...],
                             mock: tuple[int, ...], load: tuple[int, ...], note: bool) -> None:
    pinning = plan_pinning(True, usable, True, gateway_cores=cores)
    assert (pinning.gateway_cpus, pinning.mock_cpus, pinning.load_cpus) == (gateway, mock, load)
    assert bool(pinning.note) == note and (pinning.note in pinning.describe())
    assert pinning.gateway_cores(1) == (0,)
    assert pinning.gateway_cores(2) == gateway
    assert pinning.gateway_prefix(2) == ["taskset", "-c", ",".join(map(str, gateway))]
    assert Pinning(False, reason="x").gateway_cores(2) == ()


def test_tree_cpu_counts_live_and_reaped_children() -> None:
    """A child's CPU counts while it runs and, once reaped, through the parent's cutime."""
    burn = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "print('done', flush=True)\nsys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        assert child.pid in children_of(os.getpid())
        alive = tree_cpu_seconds(os.getpid(), children_of(os.getpid()))
        own = cpu_seconds(os.getpid())
        assert alive - own >= 0.25  # the child's burn is in the tree's total
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.wait()
        child.stdout.close()
    assert child.pid not in children_of(os.getpid())
    reaped = tree_cpu_seconds(os.getpid(), [])
    assert reaped - cpu_seconds(os.getpid()) >= 0.25  # now in our cutime


def test_sampler_follows_a_tree() -> None:
    """``watch(tree=True)`` picks up children started after it, and does not lose them when they exit."""
    sampler = Sampler(interval=0.02, tree_refresh=0.05)
    try:
        sampler.watch(os.getpid(), tree=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                                              "while time.process_time() - t < 0.3: pass"], check=True)
        time.sleep(0.1)
        t1 = time.monotonic()
        used = sampler.cpu_between(os.getpid(), t0, t1)
    finally:
        sampler.close()
    assert used is not None and used >= 0.25


def _with_workers(cpus: list[int], note: str) -> Json:
    doc = results()
    one, two = run_row("1 worker", 64, 280.0, 120.0), run_row("2 workers", 64, 265.0, 131.0)
    one["median"]["worker_cpu_pct"], two["median"]["worker_cpu_pct"] = [99.0], [52.5, 47.0]
    doc["scenarios"]["workers"] = {
        "key": "workers", "title": "t", "skipped": None, "rows": [two, one],
        "config": {"concurrency": 64, "model": "mock/text:tokens=20", "http2": False, "tls": False,
                   "configurations": [
                       {"name": "1 worker", "workers": 1, "pinned": True, "cpus": cpus[:1], "pinning": "CPU 0"},
                       {"name": "2 workers", "workers": 2, "pinned": True, "cpus": cpus,
                        "pinning": "CPU " + ",".join(map(str, cpus))}]},
        "comparison": {"workers_1_streams_per_s": 280.0, "workers_2_streams_per_s": 265.0, "ratio_2_over_1": 0.946,
                       "errors": 0},
        "note": note,
    }
    doc["targets"] = []
    return doc


def test_report_shows_1_against_2_workers(tmp_path: Path) -> None:
    note = _workers_note(plan_pinning(True, (0, 1), True, gateway_cores=2), (0,), (0,))
    assert "2 workers cannot show a scaling gain here" in note and "CPU 0" in note
    doc = write_report(_with_workers([0], note), tmp_path, plots=False)
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## 8. 1 vs 2 gateway workers"):]
    assert "**1 worker 280.0 streams/s, 2 workers 265.0 streams/s** (2/1 = 0.95)" in section
    assert "| workers | pinning | streams/s | TTFE p50 ms | GW CPU µs/event | GW CPU % | CPU % per worker | errors |" \
        in section
    rows = [line for line in section.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert rows == ["| 1 | CPU 0 | 280.0 | 1.000 | 120.0 | 90.0 | 99.0 | 0 |",
                    "| 2 | CPU 0 | 265.0 | 1.000 | 131.0 | 90.0 | 52.5 / 47.0 | 0 |"]  # sorted by workers
    assert f"Note: {note}" in section
    assert any(w.startswith("workers 2 workers c=64: the client side's core") for w in warnings(doc))
    line = summary(doc, tmp_path)
    assert ("1 vs 2 gateway workers at c=64: 280.0 (CPU 0) vs 265.0 (CPU 0) streams/s (2/1 = 0.95, errors 0); "
            "one core for both") in line
    saved = json.loads((tmp_path / "results.json").read_text())["scenarios"]["workers"]
    assert saved["comparison"]["ratio_2_over_1"] == 0.946
    assert [c["cpus"] for c in saved["config"]["configurations"]] == [[0], [0]]
    assert "one core for both" not in summary(_with_workers([0, 1], "n"), tmp_path)
    assert "gateway workers: 1" in markdown(doc)
    assert "other processes used the gateway's core" not in section + line
    busy = _with_workers([0], note)
    busy["scenarios"]["workers"]["rows"][0]["median"]["gw_core_others_pct"] = 17.2  # the 2-worker row
    assert ("Note: other processes used the gateway's core during these runs: 0.0% (1 worker), 17.2% (2 workers)."
            in markdown(busy))
    assert "other processes used the gateway's core, see the report" in summary(busy, tmp_path)


def test_compare_workers_against_real_gateways(tmp_path: Path) -> None:
    """Scenario 8 end to end, briefly: a 1-worker and a 2-worker gateway, CPU summed over the workers."""
    settings = _ShortRuns(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory")
    bench = Bench(settings, Progress(2, enabled=False))
    try:
        scenario = worker_scaling(bench)
    finally:
        bench.close()
    assert scenario["skipped"] is None
    configs = {c["workers"]: c for c in scenario["config"]["configurations"]}
    assert set(configs) == {1, 2} and not configs[2]["pinned"] and configs[2]["cpus"] == []
    assert "Not pinned (disabled with --no-pin)" in scenario["note"]
    rows = {row["target"]: row for row in scenario["rows"]}
    assert set(rows) == {"1 worker", "2 workers"}
    for row in rows.values():
        assert row["median"]["errors"] == 0 and row["median"]["streams_per_s"] > 0
        assert row["invariants_checked"] >= 1 and row["invariant_failures"] == []
    (one,), (two,) = rows["1 worker"]["runs"], rows["2 workers"]["runs"]
    assert len(one["worker_cpu_pct"]) == 1 and len(two["worker_cpu_pct"]) == 2
    # Both workers' CPU is measured; which of them accepts the 64 connections the load generator opens at
    # once is up to the kernel (on a loaded 2-core machine one worker may take them all in a short run).
    assert all(share >= 0 for share in two["worker_cpu_pct"]) and sum(two["worker_cpu_pct"]) > 0
    # the gateway's CPU is the tree's: at least what its workers used (the supervisor itself adds ~0)
    assert two["gw_cpu_pct"] >= 0.9 * sum(two["worker_cpu_pct"])
    assert scenario["comparison"]["errors"] == 0 and scenario["comparison"]["ratio_2_over_1"] > 0
    for name in ("gateway-1w", "gateway-2w"):
        assert "drain_timeout = 1\n" in (tmp_path / f"{name}.toml").read_text()
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text()


def test_workers_setting_starts_every_gateway_with_n_workers(tmp_path: Path) -> None:
    settings = Settings(quick=True, repeats=1, out_dir=tmp_path, pin=False, store="memory", workers=2)
    bench = Bench(settings, Progress(2, enabled=False))
    try:
        gateway = bench.gateway
        args = list(gateway.proc.args)  # type: ignore[arg-type]
        assert args[args.index("--workers") + 1] == "2"
        workers = gateway.worker_pids()
        assert len(workers) == 2 and gateway.pid not in workers
        t0 = time.monotonic()
        _warm(gateway)  # 20 streams, spread over the workers by their race for accept
        time.sleep(0.2)
        t1 = time.monotonic()
        tree = bench.usage(t0, t1, 1, 1)["gw_cpu_pct"]
        shares = bench.worker_cpu_pct(gateway, t0, t1)
        assert len(shares) == 2 and all(share is not None for share in shares)
        assert tree is not None and tree > 0 and tree >= 0.9 * sum(shares)  # type: ignore[arg-type]
    finally:
        bench.close()
    assert gateway.proc.returncode == 0  # the supervisor drained both workers and exited cleanly
