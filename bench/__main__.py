"""``python -m bench`` / ``streamgw-bench``: run the benchmark scenarios and write the report.

    python -m bench --quick                      # about two minutes: every default scenario, short runs
    python -m bench                              # the full run (at most ~20 minutes)
    python -m bench --scenarios 1,2 --repeats 5  # pick scenarios
    python -m bench --scenarios 12 --paced-streams 200,400 --paced-rate 50   # paced streams, gateway vs bare proxy
    python -m bench --quick --compare-http2      # also HTTP/1.1 vs HTTP/2 streams/s at c=64 (scenario 7)
    python -m bench --quick --compare-workers    # also a 1-worker vs a 2-worker gateway at c=64 (scenario 8)
    python -m bench --quick --compare-logs       # also no request log vs JSON lines to a file at c=64 (scenario 9)
    python -m bench --quick --compare-otel       # also OpenTelemetry tracing off vs on (scenario 10)
    python -m bench --quick --compare-limits     # also limits on (SQLite, Redis) vs off at c=64 (scenario 11)
    python -m bench --workers 2                  # every scenario against ``streamgw serve --workers 2``
    python -m bench --http2 --tls                # scenarios 1-6 over HTTP/2 with TLS (ALPN h2)
    python -m bench --target https://gw.example/ --api-key KEY --model gpt-4o-mini [--path /v1/chat/completions]

Results go to ``bench/results/<UTC timestamp>/`` (``--out`` to change the parent directory).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.loadgen import raise_fd_limit
from bench.report import Progress, summary, write_report
from bench.scenarios import (
    DEFAULT_SCENARIOS,
    SCENARIOS,
    MockKnobs,
    RemoteTarget,
    Settings,
    planned_steps,
    run_suite,
)

_QUICK_OPEN = (300,)
_FULL_OPEN = (1000, 3000, 5000, 9000)
_SCENARIO_HELP = ", ".join(f"{n}={name}" for n, (name, _) in SCENARIOS.items())


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"expected events per second in (0, 1000], got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamgw-bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="short runs, one repeat, 300 open streams (~2 minutes)")
    p.add_argument("--scenarios", type=_ints, default=DEFAULT_SCENARIOS,
                   help=f"which to run ({_SCENARIO_HELP}; default 1-6 and 12)")
    p.add_argument("--repeats", type=int, help="runs per configuration; medians are reported (default 3, quick 1)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="parent directory of the results")
    p.add_argument("--concurrency", type=_ints, default=(1, 16, 64, 256), help="scenario 1's levels")
    p.add_argument("--open-streams", type=_ints, help="scenario 3's levels (default 1000,3000,5000,9000; quick 300)")
    p.add_argument("--paced-streams", type=_ints, default=(200, 400), metavar="N,N",
                   help="scenario 12's stream counts (default 200,400)")
    p.add_argument("--paced-rate", type=_rate, default=50.0, metavar="R",
                   help="scenario 12: events per second of each stream (default 50)")
    p.add_argument("--http2", action="store_true", help="talk HTTP/2 (h2c prior knowledge, or ALPN over TLS)")
    p.add_argument("--tls", action="store_true",
                   help="the gateway serves HTTPS with a throwaway certificate (needs trustme); clients trust it")
    p.add_argument("--compare-http2", action="store_true",
                   help="add scenario 7: the same gateway at c=64 over HTTP/1.1 and over HTTP/2, interleaved")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="start every gateway with `streamgw serve --workers N` (default 1; CPU and RSS are the "
                        "whole process tree's; pinned to N cores when the machine has N plus one for the client side)")
    p.add_argument("--compare-workers", action="store_true",
                   help="add scenario 8: a 1-worker and a 2-worker gateway at c=64, interleaved")
    p.add_argument("--compare-logs", action="store_true",
                   help="add scenario 9: a gateway without a request log and one writing JSON lines, c=64, interleaved")
    p.add_argument("--compare-otel", action="store_true",
                   help="add scenario 10: a gateway with tracing off and one with tracing on (OTLP/HTTP to a local "
                        "receiver): streams/s at c=64 and TTFE at c=1, interleaved (needs the otel extra)")
    p.add_argument("--compare-limits", action="store_true",
                   help="add scenario 11: limits on (SQLite, Redis) vs off at c=64, interleaved")
    p.add_argument("--h2-streams-per-connection", type=int, default=100, metavar="N",
                   help="HTTP/2 load: concurrent streams per connection (default 100: c=64 is one connection)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores with taskset")
    p.add_argument("--store", choices=("sqlite", "memory", "none"), default="sqlite",
                   help="the gateway's response store (default sqlite, as deployed; the file goes to the results)")
    p.add_argument("--keep-raw", action="store_true", help="keep the load generators' raw per-request output")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    remote = p.add_argument_group("load another endpoint (scenarios 1-4, client-side figures)")
    remote.add_argument("--target", metavar="URL", help="base URL of an OpenAI-compatible server")
    remote.add_argument("--path", default="/v1/responses", help="/v1/responses or /v1/chat/completions")
    remote.add_argument("--model", default="demo/demo", help="model to ask the target for")
    remote.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    remote.add_argument("--target-pid", type=int, help="a local server process whose CPU and RSS to measure")
    mock = p.add_argument_group("mock upstream defaults (scenarios override what they define)")
    mock.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    mock.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    mock.add_argument("--tokens", type=int, default=20, help="tokens per answer")
    mock.add_argument("--token-bytes", type=int, default=0, help="payload bytes per token (0: 'tok{i} ')")
    mock.add_argument("--fault-rate", type=float, default=0.0, help="probability of an upstream 500")
    mock.add_argument("--heavy-tail", type=float, metavar="ALPHA", help="Pareto shape of the first-token delay")
    mock.add_argument("--seed", type=int, default=0)
    return p


def settings_from_args(args: argparse.Namespace, out_dir: Path) -> Settings:
    """The run's settings from parsed arguments."""
    knobs = MockKnobs(args.ttft, args.token_delay, args.tokens, args.token_bytes, args.fault_rate, args.heavy_tail,
                      args.seed)
    target = None
    if args.target:
        target = RemoteTarget(args.target, args.path, args.api_key, args.model, args.target_pid)
    levels = args.open_streams or (_QUICK_OPEN if args.quick else _FULL_OPEN)
    repeats = args.repeats or (1 if args.quick else 3)
    return Settings(quick=args.quick, repeats=repeats, out_dir=out_dir, http2=args.http2, pin=not args.no_pin,
                    knobs=knobs, target=target, open_levels=levels, concurrencies=args.concurrency,
                    keep_raw=args.keep_raw, store=args.store, tls=args.tls,
                    h2_streams_per_connection=max(1, args.h2_streams_per_connection), workers=args.workers,
                    paced_streams=args.paced_streams, paced_rate=args.paced_rate)


def selected_scenarios(args: argparse.Namespace) -> tuple[int, ...]:
    """``--scenarios``, plus 7 with ``--compare-http2``, 8 with ``--compare-workers``, 9 with ``--compare-logs``,
    10 with ``--compare-otel``, 11 with ``--compare-limits``."""
    chosen = tuple(args.scenarios)
    if args.compare_http2 and 7 not in chosen:
        chosen = (*chosen, 7)
    if args.compare_workers and 8 not in chosen:
        chosen = (*chosen, 8)
    if args.compare_logs and 9 not in chosen:
        chosen = (*chosen, 9)
    if args.compare_otel and 10 not in chosen:
        chosen = (*chosen, 10)
    if args.compare_limits and 11 not in chosen:
        chosen = (*chosen, 11)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench`` and ``streamgw-bench``."""
    args = _parser().parse_args(argv)
    scenarios = selected_scenarios(args)
    unknown = [n for n in scenarios if n not in SCENARIOS]
    if unknown:
        print(f"streamgw-bench: unknown scenarios {unknown} (known: {_SCENARIO_HELP})", file=sys.stderr)
        return 2
    raise_fd_limit()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = (args.out / stamp).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_from_args(args, out_dir)
    progress = Progress(planned_steps(settings, scenarios), enabled=not args.no_progress)
    try:
        results = run_suite(settings, scenarios, progress)
    finally:
        progress.close()
    results["argv"] = list(sys.argv[1:] if argv is None else argv)
    write_report(results, out_dir, plots=not args.no_plots)
    print(summary(results, out_dir))
    return 1 if any(s.get("error") for s in results["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
