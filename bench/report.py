"""Turning bench results into files and words: results.json, report.md, PNG plots, the end summary.

``write_report(results, out_dir)`` adds the ``targets`` verdicts and the list of written files to the
results document (schema in ``bench/__init__.py``) and writes everything under ``out_dir``.  ``Progress``
is the progress bar the bench shows on stderr while it runs.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

Json = dict[str, Any]


# ------------------------------------------------------------------------------------------ progress


class Progress:
    """A one-line progress bar on a terminal (plain step lines otherwise); safe to call from threads."""

    def __init__(self, total_steps: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(1, total_steps)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.completed = 0
        self.label = ""
        self.info = ""
        self._current = False
        self._lock = threading.Lock()

    def step(self, label: str) -> None:
        """A new step starts (the previous one, if any, is complete)."""
        with self._lock:
            if self._current:
                self.completed = min(self.total, self.completed + 1)
            self._current = True
            self.label, self.info = label, ""
            if not self.tty and self.enabled:
                self.stream.write(f"[{self.completed + 1}/{self.total}] {label}\n")
                self.stream.flush()
            self._render()

    def update(self, info: str) -> None:
        """Live counters of the current step."""
        with self._lock:
            self.info = info
            self._render()

    def note(self, message: str) -> None:
        """A line printed above the bar."""
        with self._lock:
            if self.enabled:
                self.stream.write(("\r\x1b[K" if self.tty else "") + message + "\n")
            self._render()

    def close(self) -> None:
        """The run is over: fill the bar and end its line."""
        with self._lock:
            self.completed = self.total
            self._current = False
            self._render()
            if self.enabled and self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def render_line(self, width: int = 100) -> str:
        """The bar as text (also used by tests)."""
        elapsed = int(time.monotonic() - self.started)
        cells = 24
        filled = int(cells * self.completed / self.total)
        bar = "█" * filled + "░" * (cells - filled)
        text = f"[{bar}] {self.completed}/{self.total} {elapsed // 60}:{elapsed % 60:02d} {self.label}"
        if self.info:
            text += f" · {self.info}"
        return text[:width]

    def _render(self) -> None:
        if not (self.enabled and self.tty):
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\x1b[K" + self.render_line(width))
        self.stream.flush()


# ------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets table."""

    key: str
    measure: str
    floor: float
    target: float
    unit: str
    higher_is_better: bool


TARGETS = (
    Target("streams_c64", "translated 20-chunk streams/s at c=64", 400, 650, "streams/s", True),
    Target("added_ttfe_c1", "added time to first event at c=1, p50", 1.0, 0.5, "ms", False),
    Target("cpu_per_event", "gateway CPU per relayed event (c=64)", 120, 70, "µs", False),
    Target("open_streams", "open streams at 1 event/s, no errors (KB RSS each)", 5000, 9000, "streams", True),
    Target("paced_cpu_ratio", "CPU per event at N x 50 events/s, gateway ÷ bare proxy (worst N)", 1.15, 1.15, "x",
           False),
)
_OPEN_KB = {5000: 25.0, 9000: 20.0}  # RSS per stream allowed at the floor / target stream counts


def _grade(t: Target, value: float | None) -> str:
    if value is None:
        return "n/a"
    better: Callable[[float, float], bool] = (lambda a, b: a >= b) if t.higher_is_better else (lambda a, b: a <= b)
    if better(value, t.target):
        return "yes (target)"
    if better(value, t.floor):
        return "yes (floor)"
    return "no"


def _row(results: Json, target: str, concurrency: int) -> Json | None:
    scenario = results["scenarios"].get("throughput") or {}
    for row in scenario.get("rows", []):
        if row["target"] == target and row["concurrency"] == concurrency:
            found: Json = row["median"]
            return found
    return None


def _open_verdict(results: Json) -> Json:
    t = TARGETS[3]
    levels = (results["scenarios"].get("open_streams") or {}).get("levels") or []
    good = [lv for lv in levels if lv.get("ok") and lv.get("rss_per_stream_kb") is not None]
    if not good:
        note = "not run" if not levels else "no level without errors"
        return {"measured": None, "display": "—", "met": "n/a" if not levels else "no", "note": note}
    best = max(good, key=lambda lv: lv["streams"])
    n, kb = best["streams"], best["rss_per_stream_kb"]
    display = f"{n:,} streams at {kb:.1f} KB each"
    if n >= t.target and kb <= _OPEN_KB[9000]:
        met = "yes (target)"
    elif n >= t.floor and kb <= _OPEN_KB[5000]:
        met = "yes (floor)"
    elif n < t.floor:
        met = "n/a"
    else:
        met = "no"
    note = f"largest level run: {max(lv['streams'] for lv in levels):,}" if met == "n/a" else ""
    return {"measured": n, "rss_per_stream_kb": kb, "display": display, "met": met, "note": note}


def evaluate_targets(results: Json) -> list[Json]:
    """The four targets with the measured value and whether floor/target were met."""
    remote = results["settings"].get("target") is not None
    gw64 = _row(results, "target" if remote else "gateway", 64)
    ttfe_level = ((results["scenarios"].get("ttfe") or {}).get("levels") or {}).get("1") or {}
    paced = results["scenarios"].get("paced") or {}
    values: dict[str, float | None] = {
        "paced_cpu_ratio": paced.get("cpu_per_event_ratio_max"),
        "streams_c64": (gw64 or {}).get("streams_per_s"),
        "added_ttfe_c1": (ttfe_level.get("median") or {}).get("added_p50_ms"),
        "cpu_per_event": (gw64 or {}).get("gw_cpu_us_per_event"),
    }
    out = []
    for t in TARGETS:
        base = {"key": t.key, "measure": t.measure, "floor": t.floor, "target": t.target, "unit": t.unit}
        if t.key == "open_streams":
            out.append({**base, "floor": "5,000 at ≤ 25 KB", "target": "9,000 at ≤ 20 KB", **_open_verdict(results)})
            continue
        value = values[t.key]
        out.append({**base, "measured": value, "display": "—" if value is None else f"{value:g} {t.unit}",
                    "met": _grade(t, value), "note": ""})
    if remote:
        for row in out:
            row["met"], row["note"] = "n/a (--target)", ""
    return out


# ------------------------------------------------------------------------------------------ markdown


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines


def targets_table(targets: Sequence[Json]) -> list[str]:
    """The floor/target/measured/met? table."""
    floor = {"ms": "≤", "µs": "≤", "streams/s": "≥", "x": "≤"}
    rows = []
    for t in targets:
        if isinstance(t["floor"], str):
            f, g = t["floor"], t["target"]
        else:
            op = floor.get(t["unit"], "")
            f, g = f"{op} {t['floor']:g} {t['unit']}", f"{op} {t['target']:g} {t['unit']}"
        met = t["met"] + (f" ({t['note']})" if t.get("note") else "")
        rows.append([t["measure"], f, g, t["display"], met])
    return _table(["measure", "floor (must)", "target", "measured", "met?"], rows)


def _conditions(results: Json) -> list[str]:
    env = results["environment"]
    pin = env["pinning"]["description"]
    lines = [
        f"- mode: **{results['mode']}**, {results.get('duration_s', '?')} s, started {results['started_at']}",
        f"- machine: {env['cpu_model']}, {env['cores']} cores ({env['usable_cores']} usable), "
        f"Python {env['python']}, {env['platform']}",
        f"- pinning: {pin}; gateway response store: {results['settings'].get('store', 'sqlite')}; "
        f"gateway workers: {results['settings'].get('workers', 1)} (scenario 8: 1 and 2)",
        f"- git commit: {env.get('git_commit') or 'unknown'}; packages: "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        f"- load average at start: {', '.join(f'{x:.2f}' for x in env['loadavg'])} "
        "(other work on the machine makes absolute numbers noisy)",
    ]
    target = results["settings"].get("target")
    if target:
        lines.append(f"- target: {target['base_url']}{target['path']} model `{target['model']}` "
                     "(client-side figures; CPU only with --target-pid)")
    if results["mode"] == "quick":
        lines.append("- quick mode: short runs, one repeat, few open streams — a smoke test, not a measurement")
    return lines + [f"- **warning**: {w}" for w in warnings(results)]


def warnings(results: Json) -> list[str]:
    """Conditions that make the gateway figures doubtful: a saturated load core, a busy gateway core."""
    found = []
    for lv in (results["scenarios"].get("open_streams") or {}).get("levels", []):
        if (lv.get("gw_core_others_pct") or 0) >= 10:
            found.append(f"open_streams {lv['streams']}: other processes used {lv['gw_core_others_pct']:.0f}% "
                         "of the gateway's core")
        if lv.get("opened", 0) < lv["streams"]:
            found.append(f"open_streams {lv['streams']}: only {lv['opened']} streams opened within the ramp limit")
    for lv in (results["scenarios"].get("paced") or {}).get("levels", []):
        for server in ("gateway", "bare"):
            x = lv.get(server) or {}
            if (x.get("load_core_busy_pct") or 0) >= 90:
                found.append(f"paced {lv['streams']} {server}: the client side's core was "
                             f"{x['load_core_busy_pct']:.0f}% busy (mock and load generator), so it may have capped "
                             "the delivered events")
            if (x.get("gw_core_others_pct") or 0) >= 10:
                found.append(f"paced {lv['streams']} {server}: other processes used {x['gw_core_others_pct']:.0f}% "
                             "of the server's core")
    for key in ("throughput", "non_streamed", "http_versions", "workers", "request_log"):
        for row in (results["scenarios"].get(key) or {}).get("rows", []):
            m, where = row["median"], f"{key} {row['target']} c={row['concurrency']}"
            if row["target"] != "direct" and (m.get("load_core_busy_pct") or 0) >= 90:
                found.append(f"{where}: the client side's core was {m['load_core_busy_pct']:.0f}% busy (mock, load "
                             "generator and anything else on it), so it may have capped the rate")
            if (m.get("gw_core_others_pct") or 0) >= 10:
                found.append(f"{where}: other processes used {m['gw_core_others_pct']:.0f}% of the gateway's core")
    return found + _ceiling_warning(results)


def _ceiling_warning(results: Json) -> list[str]:
    """The most the client side delivered straight from the mock: the gateway cannot be measured above it."""
    direct = [r["median"] for r in (results["scenarios"].get("throughput") or {}).get("rows", [])
              if r["target"] == "direct" and r["median"].get("streams_per_s")]
    if not direct:
        return []
    best = max(direct, key=lambda m: m["streams_per_s"])
    if (best.get("load_core_busy_pct") or 0) < 90:
        return []
    text = (f"client-side ceiling: straight to the mock, the mock and load generator peaked at "
            f"{best['streams_per_s']:.0f} streams/s with their core {best['load_core_busy_pct']:.0f}% busy "
            f"(mock {best.get('mock_cpu_us_per_request') or 0:.0f} µs CPU per stream)")
    if best["streams_per_s"] < TARGETS[0].target:
        text += f"; the {TARGETS[0].target:g} streams/s target cannot be verified with this pinning"
    return [text]


def _throughput_md(s: Json, title: str) -> list[str]:
    rows = s.get("rows", [])
    bare = bool(s.get("vs_bare"))  # the bare proxy ran beside the gateway: ratio columns
    perf = ["target", "c", "req/s", "events/s", "TTFE p50 ms", "TTFE p99 ms", "total p50 ms", "total p99 ms",
            "errors", *(["req/s ÷ bare"] if bare else [])]
    perf_rows = [[r["target"], r["concurrency"], m["streams_per_s"], m["events_per_s"], m["first_event_p50_ms"],
                  m["first_event_p99_ms"], m["total_p50_ms"], m["total_p99_ms"], m["errors"],
                  *([_fmt(m.get("vs_bare_streams_per_s"), 3)] if bare else [])]
                 for r in rows for m in [r["median"]]]
    cost = ["target", "c", "GW CPU %", "GW µs/event", "GW µs/req", "mock µs/req", "loadgen µs/event",
            "loadgen capacity req/s", "load core busy %", "others on GW core %",
            *(["µs/event ÷ bare", "µs/req ÷ bare"] if bare else [])]
    cost_rows = [[r["target"], r["concurrency"], m["gw_cpu_pct"], m["gw_cpu_us_per_event"],
                  m["gw_cpu_us_per_request"], m["mock_cpu_us_per_request"], m["loadgen_cpu_us_per_event"],
                  m["loadgen_capacity_per_s"], m["load_core_busy_pct"], m["gw_core_others_pct"],
                  *([_fmt(m.get(f"vs_bare_gw_cpu_us_per_{unit}"), 3) for unit in ("event", "request")]
                    if bare else [])]
                 for r in rows for m in [r["median"]]]
    checked = sum(r["invariants_checked"] for r in rows)
    failures = [f for r in rows for f in r["invariant_failures"]]
    note = f"Invariants checked on {checked} sampled streams/bodies: {len(failures)} failures."
    intro = [_BARE_NOTE, ""] if bare else []
    return [f"## {title}", "", *intro, *_table(perf, perf_rows), "",
            "CPU (medians; \"loadgen capacity\" is the request rate one core of the load generator could drive at "
            "its measured cost):", "", *_table(cost, cost_rows),
            "", note, *[f"- {f}" for f in failures[:3]], ""]


_BARE_NOTE = ("`bare` is the bare trio + h11 pass-through proxy (`bench.bareproxy`: no framework, no translation) "
              "on the gateway's core in front of the same mock: the floor for this stack. It relays the chat chunks "
              "as they are (21 events a 20-token answer, where the gateway writes 28 Responses events), so each "
              "target's events are its own; its GW columns are its own process's CPU. ÷ bare: gateway / bare proxy "
              "in the same round (median over rounds).")


def _http_versions_md(s: Json) -> list[str]:
    cfg, cmp = s.get("config") or {}, s.get("comparison") or {}
    ratio = cmp.get("h2_over_http1")
    intro = (f"The same gateway{' over TLS' if cfg.get('tls') else ''}, `{cfg.get('model')}` at "
             f"c={cfg.get('concurrency')}: HTTP/1.1 on {cfg.get('http1_connections')} connections, HTTP/2 on "
             f"{cfg.get('h2_connections')} ({cfg.get('h2_streams_per_connection')} streams each); runs interleaved, "
             f"medians. **HTTP/1.1 {_fmt(cmp.get('http1_streams_per_s'))} streams/s, HTTP/2 "
             f"{_fmt(cmp.get('h2_streams_per_s'))} streams/s** (h2/h1 = {_fmt(ratio, 2)}).")
    return [*_throughput_md(s, "7. HTTP/1.1 vs HTTP/2")[:2], intro, "", *_throughput_md(s, "")[2:]]


def _request_log_md(s: Json) -> list[str]:
    cmp = s.get("comparison") or {}
    intro = (f"Two gateways, one without a request log (`[logging] requests = false`) and one writing a JSON line per "
             f"request to a file, `mock/text:tokens=20` at c={(s.get('config') or {}).get('concurrency')}; runs "
             f"interleaved, medians. **Off {_fmt(cmp.get('off_streams_per_s'))} streams/s, JSON log "
             f"{_fmt(cmp.get('json_streams_per_s'))} streams/s (loss {_fmt(cmp.get('throughput_loss_pct'), 2)} %); "
             f"TTFE p50 {_fmt(cmp.get('off_ttfe_p50_ms'))} vs {_fmt(cmp.get('json_ttfe_p50_ms'))} ms, p99 "
             f"{_fmt(cmp.get('off_ttfe_p99_ms'))} vs {_fmt(cmp.get('json_ttfe_p99_ms'))} ms; gateway CPU "
             f"{_fmt(cmp.get('off_gw_cpu_us_per_request'))} vs {_fmt(cmp.get('json_gw_cpu_us_per_request'))} "
             "µs/request**; "
             f"{cmp.get('lines_written')} lines written.")
    return [*_throughput_md(s, "9. Request log off vs on")[:2], intro, "", *_throughput_md(s, "")[2:]]


def _workers_md(s: Json) -> list[str]:
    cfg, cmp = s.get("config") or {}, s.get("comparison") or {}
    pinning = {c["name"]: c["pinning"] for c in cfg.get("configurations", [])}
    workers = {c["name"]: c["workers"] for c in cfg.get("configurations", [])}
    intro = (f"A gateway with 1 worker and one with 2 workers (`streamgw serve --workers 2`: a supervisor and two "
             f"worker processes on one socket), both running, `{cfg.get('model')}` at c={cfg.get('concurrency')}"
             f"{' over HTTP/2' if cfg.get('http2') else ''}{' with TLS' if cfg.get('tls') else ''}; runs "
             f"interleaved, medians. Gateway CPU is the whole process tree's (supervisor and workers). "
             f"**1 worker {_fmt(cmp.get('workers_1_streams_per_s'))} streams/s, 2 workers "
             f"{_fmt(cmp.get('workers_2_streams_per_s'))} streams/s** (2/1 = {_fmt(cmp.get('ratio_2_over_1'), 2)}).")
    headers = ["workers", "pinning", "streams/s", "TTFE p50 ms", "GW CPU µs/event", "GW CPU %",
               "CPU % per worker", "errors"]
    rows = []
    for r in sorted(s.get("rows", []), key=lambda r: workers.get(r["target"], 0)):
        m = r["median"]
        shares = " / ".join(_fmt(v) for v in m.get("worker_cpu_pct") or []) or "—"
        rows.append([workers.get(r["target"], r["target"]), pinning.get(r["target"], "—"), m["streams_per_s"],
                     _fmt(m["first_event_p50_ms"], 3), m["gw_cpu_us_per_event"], m["gw_cpu_pct"], shares,
                     m["errors"]])
    checked = sum(r["invariants_checked"] for r in s.get("rows", []))
    failures = [f for r in s.get("rows", []) for f in r["invariant_failures"]]
    note = [f"Note: {s['note']}", ""] if s.get("note") else []
    shared = _workers_shared_core(s)
    if shared:
        note += [f"Note: {shared}", ""]
    return ["## 8. 1 vs 2 gateway workers", "", intro, "", *_table(headers, rows), "", *note,
            f"Invariants checked on {checked} sampled streams: {len(failures)} failures.",
            *[f"- {f}" for f in failures[:3]], ""]


def _otel_md(s: Json) -> list[str]:
    cfg, cmp = s.get("config") or {}, s.get("comparison") or {}
    intro = (f"A gateway with tracing off and one with `[tracing] enabled`, exporting OTLP/HTTP to "
             f"{cfg.get('exporter', 'a local receiver')}; `{cfg.get('model')}` at c={cfg.get('concurrency')}, then "
             f"TTFE at c=1 with both targets alternating in the same workers; runs interleaved, medians. "
             f"**Tracing off {_fmt(cmp.get('off_streams_per_s'))} streams/s, on {_fmt(cmp.get('on_streams_per_s'))} "
             f"streams/s: {_fmt(cmp.get('throughput_loss_pct'))} % throughput loss; gateway CPU per request "
             f"{_fmt(cmp.get('cpu_us_per_request_off'))} vs {_fmt(cmp.get('cpu_us_per_request_on'))} µs "
             f"({_fmt(cmp.get('cpu_per_request_added_pct'))} % more)**; added TTFE with tracing on: "
             f"c=1 p50 {_fmt(cmp.get('added_ttfe_c1_p50_ms'), 3)} ms, p99 {_fmt(cmp.get('added_ttfe_c1_p99_ms'), 3)} "
             f"ms; c={cfg.get('concurrency')} p50 {_fmt(cmp.get('added_ttfe_c64_p50_ms'), 3)} ms, p99 "
             f"{_fmt(cmp.get('added_ttfe_c64_p99_ms'), 3)} ms.")
    headers = ["tracing", "streams/s", "TTFE p50 ms", "TTFE p99 ms", "GW CPU µs/request", "GW CPU µs/event",
               "GW CPU %", "others on GW core %", "errors"]
    rows = [[r["target"], m["streams_per_s"], _fmt(m["first_event_p50_ms"], 3), _fmt(m["first_event_p99_ms"], 3),
             m["gw_cpu_us_per_request"], m["gw_cpu_us_per_event"], m["gw_cpu_pct"], m["gw_core_others_pct"],
             m["errors"]] for r in s.get("rows", []) for m in [r["median"]]]
    c1 = s.get("ttfe_c1") or {}
    c1_rows = [[name, _fmt(v.get("p50"), 3), _fmt(v.get("p90"), 3), _fmt(v.get("p99"), 3)]
               for name, v in c1.items() if name != "runs"]
    exported = (f"The receiver got {cmp.get('export_requests')} export requests ({cmp.get('export_bytes')} bytes, "
                f"{cmp.get('receiver_errors')} undecodable).")
    return ["## 10. OpenTelemetry tracing off vs on", "", intro, "", *_table(headers, rows), "",
            "Time to first event at c=1:", "", *_table(["tracing", "p50 ms", "p90 ms", "p99 ms"], c1_rows), "",
            exported, ""]


def _workers_shared_core(s: Json) -> str:
    """When other processes used the gateway's core during scenario 8: why streams/s do not compare then."""
    others = {r["target"]: r["median"].get("gw_core_others_pct") for r in s.get("rows", [])}
    if max((v for v in others.values() if v is not None), default=0) < 10:
        return ""
    each = ", ".join(f"{_fmt(v)}% ({name})" for name, v in sorted(others.items()))
    return (f"other processes used the gateway's core during these runs: {each}. The kernel shares a busy core "
            "per process, so two workers get a larger share of it than one: compare GW CPU µs/event here, "
            "not streams/s.")


def _ttfe_md(s: Json) -> list[str]:
    headers = ["c", "gateway TTFE p50/p90/p99 ms", "direct TTFT p50/p90/p99 ms", "added p50 ms", "added p99 ms",
               "paired added p50 ms", "GW µs/event", "errors"]
    bare_headers = ["c", "bare TTFT p50/p90/p99 ms", "bare added p50 ms", "bare added p99 ms",
                    "paired bare added p50 ms", "bare µs/event", "TTFE ÷ bare", "added ÷ bare"]
    rows, bare_rows = [], []
    for c, level in sorted((s.get("levels") or {}).items(), key=lambda kv: int(kv[0])):
        m = level["median"]
        gw = "/".join(_fmt(m.get(f"gateway_{q}_ms"), 3) for q in ("p50", "p90", "p99"))
        direct = "/".join(_fmt(m.get(f"direct_{q}_ms"), 3) for q in ("p50", "p90", "p99"))
        rows.append([c, gw, direct, _fmt(m["added_p50_ms"], 3), _fmt(m["added_p99_ms"], 3),
                     _fmt(m["paired_added_p50_ms"], 3), m["gw_cpu_us_per_event"], m["errors"]])
        if m.get("bare_p50_ms") is not None:
            bare = "/".join(_fmt(m.get(f"bare_{q}_ms"), 3) for q in ("p50", "p90", "p99"))
            bare_rows.append([c, bare, _fmt(m.get("bare_added_p50_ms"), 3), _fmt(m.get("bare_added_p99_ms"), 3),
                              _fmt(m.get("paired_bare_added_p50_ms"), 3), m.get("bare_cpu_us_per_event"),
                              _fmt(m.get("ttfe_ratio_vs_bare"), 3), _fmt(m.get("added_ratio_vs_bare"), 3)])
    lines = ["## 2. Added time to first event", "", *_table(headers, rows), ""]
    if bare_rows:
        lines += ["The bare proxy in the same workers (its time to the first content chunk it relayed, like "
                  "direct's; added: over direct). ÷ bare: gateway / bare proxy, the p50s of each round, median "
                  "over rounds:", "", *_table(bare_headers, bare_rows), ""]
    return lines


def _open_row(lv: Json, server: str) -> list[Any]:
    return [lv["streams"], server, lv["opened"], lv["ramp_s"], lv["events_per_s"], lv["delivered_ratio"],
            lv["gw_cpu_pct"], lv["gw_cpu_us_per_event"], lv.get("gw_core_others_pct"),
            None if not lv.get("rss_bytes") else round(lv["rss_bytes"] / 2**20, 1), lv.get("rss_per_stream_kb"),
            lv["open_files"], lv["errors"], lv["gaps_ms"]["p99"], "yes" if lv["ok"] else "no"]


def _vs_bare_cells(ratios: Json | None) -> list[str]:
    r = ratios or {}
    return [_fmt(r.get(k), 3) for k in ("gw_cpu_us_per_event", "gw_cpu_pct", "rss_per_stream_kb", "delivered_ratio")]


_VS_BARE_HEADERS = ["µs/event", "CPU %", "KB/stream", "delivered"]


def _open_md(s: Json) -> list[str]:
    headers = ["streams", "server", "opened", "ramp s", "delivered events/s", "delivered/N", "CPU %", "µs/event",
               "others on GW core %", "RSS MB", "KB/stream", "open files", "errors", "gap p99 ms", "ok"]
    rows = []
    for lv in s.get("levels", []):
        rows.append(_open_row(lv, "gateway"))
        if lv.get("bare"):
            rows.append(_open_row(lv["bare"], "bare"))
    note = [s["note"], ""] if s.get("note") else []
    lines = ["## 3. Open streams at 1 event/s", "", *note, *_table(headers, rows), ""]
    ratios = [[lv["streams"], *_vs_bare_cells(lv["vs_bare"])] for lv in s.get("levels", []) if lv.get("vs_bare")]
    if ratios:
        lines += ["Gateway ÷ bare proxy (each on a fresh process on the gateway's core; CPU and RSS its own):", "",
                  *_table(["streams", *_VS_BARE_HEADERS], ratios), ""]
    return lines


def _paced_md(s: Json) -> list[str]:
    cfg = s.get("config") or {}
    headers = ["streams", "server", "offered events/s", "delivered events/s", "delivered ÷ offered", "CPU %",
               "µs/event", "others on GW core %", "KB/stream", "gap p50/p99 ms", "added gap p99 ms", "errors",
               "load core busy %"]
    rows, ratios = [], []
    for lv in s.get("levels", []):
        for server in ("gateway", "bare"):
            x = lv.get(server) or {}
            gaps = x.get("window_gaps_ms") or {}
            rows.append([lv["streams"], server, lv["offered_events_per_s"], x.get("events_per_s"),
                         _fmt(x.get("delivered_ratio"), 3), x.get("gw_cpu_pct"), x.get("gw_cpu_us_per_event"),
                         x.get("gw_core_others_pct"), x.get("rss_per_stream_kb"),
                         f"{_fmt(gaps.get('p50'), 2)}/{_fmt(gaps.get('p99'), 2)}", _fmt(x.get("added_gap_p99_ms"), 2),
                         x.get("errors"), x.get("load_core_busy_pct")])
        v = lv.get("vs_bare") or {}
        ratios.append([lv["streams"], *_vs_bare_cells(v), _fmt(v.get("added_gap_p99_ms_over_bare"), 2)])
    intro = (f"Each stream gets one token every {_fmt(cfg.get('token_delay_s'), 3)} s from the mock "
             f"({_fmt(cfg.get('rate'), 0)} events/s), through a fresh gateway and a fresh bare proxy in turn (each on "
             f"the gateway's core); a {_fmt(cfg.get('window_s'))} s window once every stream is open. Gap: between "
             "consecutive reads with events, as the client saw them in the window; added: minus the pacing. "
             f"**Worst gateway ÷ bare CPU per event: {_fmt(s.get('cpu_per_event_ratio_max'), 3)}** (target ≤ 1.15).")
    return ["## 12. Paced streams: gateway vs bare proxy", "", intro, "", *_table(headers, rows), "",
            "Gateway ÷ bare proxy:", "", *_table(["streams", *_VS_BARE_HEADERS, "added gap p99 over bare ms"], ratios),
            ""]


def _hedging_md(s: Json) -> list[str]:
    m, cfg = s["median"], s["config"]
    rows = [[name, m[f"{name}_p50_ms"], m[f"{name}_p90_ms"], m[f"{name}_p99_ms"], m[f"{name}_max_ms"]]
            for name in ("single", "hedged")]
    intro = (f"Model `{cfg['model']}` (Pareto alpha={cfg['pareto_alpha']}, scale {cfg['ttft_scale_s']} s), "
             f"hedge_delay {cfg['hedge_delay_s']} s, concurrency {cfg['concurrency']}; errors: {m['errors']}.")
    return ["## 5. Hedging under a heavy-tailed upstream", "", intro, "",
            *_table(["route", "TTFT p50 ms", "p90 ms", "p99 ms", "max ms"], rows), ""]


def _cancel_md(s: Json) -> list[str]:
    rows = [[name, t["cancels"], t["latency_ms"]["p50"], t["latency_ms"]["p90"], t["latency_ms"]["p99"],
             t["latency_ms"]["max"], t["not_observed"]] for name, t in s.get("targets", {}).items()]
    headers = ["path", "cancels", "p50 ms", "p90 ms", "p99 ms", "max ms", "upstream close not seen"]
    return ["## 6. Cancellation latency (client close → mock sees the close)", "", *_table(headers, rows), ""]


def _limits_md(s: Json) -> list[str]:
    cfg, cmp = s.get("config") or {}, s.get("comparison") or {}
    parts = []
    for name in ("sqlite", "redis"):
        c = cmp.get(name)
        if c:
            parts.append(f"**{name}: throughput {_fmt(c.get('throughput_ratio'), 3)} of off, "
                         f"{_fmt(c.get('added_p50_ms'), 3)} ms added p50 per request** "
                         f"(first event {_fmt(c.get('added_first_event_p50_ms'), 3)} ms)")
    intro = (f"`{cfg.get('model')}` at c={cfg.get('concurrency')} with a key whose limits ({cfg.get('limits')}) "
             "are on, far above the load, against each control backend, and the same key without limits; runs "
             "interleaved, medians. " + "; ".join(parts) + ".")
    return [*_throughput_md(s, "11. Limits on vs off")[:2], intro, "", *_throughput_md(s, "")[2:]]


def _scenario_md(name: str, s: Json) -> list[str]:
    if s.get("error"):
        return [f"## {name}", "", f"Failed: `{s['error']}`", ""]
    if s.get("skipped"):
        return [f"## {s['title']}", "", f"Skipped: {s['skipped']}", ""]
    writers: dict[str, Callable[[Json], list[str]]] = {
        "throughput": lambda x: _throughput_md(x, "1. Throughput: translated 20-chunk streams"),
        "ttfe": _ttfe_md, "open_streams": _open_md,
        "non_streamed": lambda x: _throughput_md(x, "4. Non-streamed requests"),
        "hedging": _hedging_md, "cancellation": _cancel_md, "http_versions": _http_versions_md,
        "workers": _workers_md, "request_log": _request_log_md, "otel": _otel_md, "limits": _limits_md,
        "paced": _paced_md,
    }
    return writers[name](s)


def markdown(results: Json) -> str:
    """The whole report as markdown."""
    lines = ["# streamgw bench", "", "## Targets (gateway on one core, medians, same run as the direct baseline)",
             "", *targets_table(results["targets"]), "", "## Conditions", "", *_conditions(results), ""]
    for name, scenario in results["scenarios"].items():
        lines += _scenario_md(name, scenario)
    if results.get("plots"):
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({Path(p).name})" for p in results["plots"]], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values: Sequence[float], label: str) -> None:
    if not values:
        return
    ordered = sorted(values)
    ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
    ax.step(ordered, ys, where="post", label=f"{label} (n={len(ordered)})")


def _plot_throughput(results: Json, out: Path) -> Path | None:
    rows = (results["scenarios"].get("throughput") or {}).get("rows") or []
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in sorted({r["target"] for r in rows}):
        mine = sorted((r for r in rows if r["target"] == name), key=lambda r: r["concurrency"])
        cs = [r["concurrency"] for r in mine]
        left.plot(cs, [r["median"]["streams_per_s"] or 0 for r in mine], marker="o", label=name)
        cpu = [r["median"]["gw_cpu_us_per_event"] for r in mine]
        if any(v is not None for v in cpu):
            right.plot(cs, [v if v is not None else float("nan") for v in cpu], marker="o", label=f"{name} CPU")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
    left.axhline(400, color="tab:red", ls=":", lw=1, label="floor 400/s")
    left.axhline(650, color="tab:green", ls=":", lw=1, label="target 650/s")
    left.set_ylabel("completed 20-chunk streams/s")
    left.set_title("Throughput vs concurrency")
    left.legend()
    right.axhline(120, color="tab:red", ls=":", lw=1, label="floor 120 µs")
    right.axhline(70, color="tab:green", ls=":", lw=1, label="target 70 µs")
    right.set_ylabel("gateway CPU µs per relayed event")
    right.set_title("Gateway CPU per event")
    right.legend()
    return _save(fig, plt, out / "throughput.png")


def _plot_ttfe(results: Json, out: Path) -> Path | None:
    levels = (results["scenarios"].get("ttfe") or {}).get("levels") or {}
    if not levels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels), 4.2), squeeze=False)
    for ax, (c, level) in zip(axes[0], sorted(levels.items(), key=lambda kv: int(kv[0])), strict=True):
        _cdf(ax, level["samples_ms"].get("gateway", []), "gateway: first event")
        _cdf(ax, level["samples_ms"].get("direct", []), "direct: first token")
        _cdf(ax, level["samples_ms"].get("bare", []), "bare proxy: first token")
        ax.set_xscale("log")
        ax.set_xlabel("ms after the request was sent")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"Time to first event, c={c}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return _save(fig, plt, out / "ttfe.png")


def _plot_open(results: Json, out: Path) -> Path | None:
    levels = (results["scenarios"].get("open_streams") or {}).get("levels") or []
    if not levels:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = [lv["streams"] for lv in levels]
    left.plot(ns, [lv.get("rss_per_stream_kb") or float("nan") for lv in levels], marker="o", color="tab:blue")
    left.axhline(25, color="tab:red", ls=":", lw=1, label="floor 25 KB")
    left.axhline(20, color="tab:green", ls=":", lw=1, label="target 20 KB")
    left.set_ylabel("gateway RSS per open stream (KB)")
    left.set_title("Memory per open stream")
    left.legend()
    right.plot(ns, [lv["gw_cpu_pct"] or float("nan") for lv in levels], marker="o", label="gateway CPU %")
    right.plot(ns, [100 * (lv["delivered_ratio"] or 0) for lv in levels], marker="s",
               label="delivered / expected events %")
    right.set_ylabel("percent")
    right.set_title("CPU and delivery at 1 event/s per stream")
    right.legend()
    for ax in (left, right):
        ax.set_xlabel("open streams")
        ax.set_xlim(left=0, right=max(ns) * 1.1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    return _save(fig, plt, out / "open_streams.png")


def _plot_pair(results: Json, out: Path, key: str, title: str, xlabel: str) -> Path | None:
    scenario = results["scenarios"].get(key) or {}
    if key == "hedging":
        samples = scenario.get("samples_ms") or {}
    else:
        samples = {k: v.get("samples_ms", []) for k, v in (scenario.get("targets") or {}).items()}
    if not any(samples.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, values in samples.items():
        _cdf(ax, values, name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, plt, out / f"{key}.png")


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: Json, out: Path) -> list[Path]:
    """Every plot the results allow; a plot that fails is reported, not fatal."""
    makers: list[Callable[[], Path | None]] = [
        lambda: _plot_throughput(results, out),
        lambda: _plot_ttfe(results, out),
        lambda: _plot_open(results, out),
        lambda: _plot_pair(results, out, "hedging", "Time to first token: single vs hedged", "ms"),
        lambda: _plot_pair(results, out, "cancellation", "Cancellation latency", "ms from client close"),
    ]
    written = []
    for make in makers:
        try:
            path = make()
        except Exception as exc:  # a plotting bug must not lose the measurements
            print(f"bench: plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if path is not None:
            written.append(path)
    return written


# -------------------------------------------------------------------------------------------- output


def write_report(results: Json, out: Path, *, plots: bool = True) -> Json:
    """Add targets and file names to ``results``; write results.json, report.md and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = evaluate_targets(results)
    results["plots"] = [p.name for p in plot_all(results, out)] if plots else []
    results["files"] = ["results.json", "report.md", *results["plots"]]
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text(markdown(results))
    return results


def summary(results: Json, out: Path) -> str:
    """The short text printed at the end of a run."""
    lines = ["", f"streamgw bench ({results['mode']}, {results.get('duration_s', '?')} s) — "
             f"{results['environment']['pinning']['description']}", "", *targets_table(results["targets"]), ""]
    cmp = (results["scenarios"].get("http_versions") or {}).get("comparison")
    if cmp:
        lines.append(f"HTTP/1.1 vs HTTP/2 at c=64: {_fmt(cmp['http1_streams_per_s'])} vs "
                     f"{_fmt(cmp['h2_streams_per_s'])} streams/s (h2/h1 = {_fmt(cmp['h2_over_http1'], 2)})")
    workers = results["scenarios"].get("workers") or {}
    if workers.get("comparison"):
        cmp, cfg = workers["comparison"], workers.get("config") or {}
        where = {c["workers"]: c["pinning"] for c in cfg.get("configurations", [])}
        cpus = [c["cpus"] for c in cfg.get("configurations", [])]
        same = len(cpus) == 2 and cpus[0] and cpus[0] == cpus[1]
        lines.append(f"1 vs 2 gateway workers at c=64: {_fmt(cmp['workers_1_streams_per_s'])} "
                     f"({where.get(1, '?')}) vs {_fmt(cmp['workers_2_streams_per_s'])} ({where.get(2, '?')}) "
                     f"streams/s (2/1 = {_fmt(cmp['ratio_2_over_1'], 2)}, errors {cmp['errors']})"
                     + ("; one core for both, so no scaling gain can show" if same else "")
                     + ("; other processes used the gateway's core, see the report" if _workers_shared_core(workers)
                        else ""))
    for row in (results["scenarios"].get("throughput") or {}).get("vs_bare") or []:
        lines.append(f"Gateway ÷ bare proxy at c={row['concurrency']}: streams/s {_fmt(row['streams_per_s'], 2)}, "
                     f"CPU per stream {_fmt(row['gw_cpu_us_per_request'], 2)}")
    for lv in (results["scenarios"].get("paced") or {}).get("levels") or []:
        v, gw, bare = (lv.get(k) or {} for k in ("vs_bare", "gateway", "bare"))
        lines.append(f"Paced {lv['streams']} x {_fmt(lv['rate'], 0)}/s: gateway ÷ bare CPU per event "
                     f"{_fmt(v.get('gw_cpu_us_per_event'), 2)}, delivered {_fmt(gw.get('delivered_ratio'), 3)} "
                     f"of offered (bare {_fmt(bare.get('delivered_ratio'), 3)})")
    otel = (results["scenarios"].get("otel") or {}).get("comparison")
    if otel:
        lines.append(f"Tracing off vs on at c=64: {_fmt(otel['off_streams_per_s'])} vs {_fmt(otel['on_streams_per_s'])}"
                     f" streams/s ({_fmt(otel['throughput_loss_pct'])} % loss; CPU per request "
                     f"{_fmt(otel['cpu_per_request_added_pct'])} % more), added TTFE at c=1 p50 "
                     f"{_fmt(otel['added_ttfe_c1_p50_ms'], 3)} ms (errors {otel['errors']})")
    for name, scenario in results["scenarios"].items():
        if scenario.get("error"):
            lines.append(f"! scenario {name} failed: {scenario['error']}")
    lines.append(f"Results: {out}/report.md (and results.json, {len(results.get('plots', []))} plots)")
    return "\n".join(lines)
