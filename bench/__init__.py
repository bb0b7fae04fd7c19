"""streamgw's benchmark suite: ``python -m bench`` (or ``streamgw-bench``).

It starts real processes on 127.0.0.1 — the Chat Completions mock upstream (``bench.procs``), the gateway
under hypercorn (``--http2``; HTTPS with ``--tls``), and the load generator (``bench.loadgen``) — pins the
gateway to one core and everything else to another where it can, runs the scenarios of ``bench.scenarios``
and writes, under
``bench/results/<UTC timestamp>/``: ``results.json``, ``report.md``, PNG plots, the gateways' configs and logs
(and ``raw/`` load generator output with ``--keep-raw``).

Modules: ``__main__`` (command line), ``scenarios`` (the scenarios and their statistics), ``loadgen``
(the load generator process: HTTP/1.1 and HTTP/2 client, SSE scanner, per-request timing), ``procs``
(processes, pinning, /proc sampling, environment), ``report`` (targets verdicts, markdown, plots, progress).

Results JSON (``results.json``, schema ``streamgw-bench/1``); times are milliseconds where a key ends in
``_ms``, seconds in ``_s``; every distribution is ``{"n", "mean", "p50", "p90", "p99", "max"}``::

    schema        "streamgw-bench/1"
    mode          "quick" | "full"
    started_at, finished_at   ISO 8601 UTC;  duration_s   float;  argv   [str]
    settings      the run's settings: quick, repeats, out_dir, http2, pin, knobs {ttft, token_delay, tokens,
                  token_bytes, fault_rate, heavy_tail, seed}, target {base_url, path, model, pid, api_key:
                  "set"|null} | null, open_levels [int], concurrencies [int], keep_raw, store, tls,
                  h2_streams_per_connection, workers (``--workers``: every gateway's worker count), paced_streams
                  [int], paced_rate (scenario 12)
    environment   cpu_model, cores, usable_cores, python, implementation, platform, git_commit (read from
                  .git, null outside a checkout), packages {name: version}, pinning {applied, gateway_cpus,
                  load_cpus, mock_cpus, usable_cpus, reason, note (why the gateway got fewer cores than workers,
                  or ""), description}, open_files_limit [soft, hard], loadavg [3],
                  memory_total_bytes
    targets       [{key, measure, floor, target, unit, measured, display, met, note}] — the issue's targets
                  (streams_c64, added_ttfe_c1, cpu_per_event, open_streams, paced_cpu_ratio); met is
                  "yes (target)" | "yes (floor)" | "no" | "n/a" | "n/a (--target)"
    plots         [file name];  files   [file name]
    scenarios     {name: scenario}; every scenario has key, title, skipped (reason | null), started_at,
                  finished_at, environment (the environment above plus loadavg at start, loadavg_end), or
                  {key, error} when it crashed.  Per scenario:

      throughput, non_streamed, http_versions:
        rows [{target: "gateway"|"bare"|"direct"|"target" (http_versions: "http/1.1"|"h2"), concurrency,
               median {<run keys below>}, runs [run], invariants_checked, invariant_failures [str]}]
        run: target, window_s, requests, completed_in_window, streams_per_s (completed requests/s),
             events_per_s, events_in_window, errors, error_kinds {kind: n}, held, headers_ms, first_event_ms,
             first_token_ms, total_ms, gaps_ms (distributions), events_per_request, bytes_per_request,
             invariants {checked, failures}, gw_cpu_pct, gw_cpu_us_per_event, gw_cpu_us_per_request (the
             gateway's CPU is its whole process tree's: with ``--workers N`` the supervisor and its workers),
             mock_cpu_pct, mock_cpu_us_per_request, load_core_busy_pct, gw_core_others_pct,
             loadgen_cpu_pct, loadgen_cpu_us_per_event, loadgen_capacity_per_s, first_event_p50_ms,
             first_event_p99_ms, total_p50_ms, total_p99_ms.  "bare" is the bare proxy (``bench.bareproxy``, chat
             chunks; its gw_* figures are its own process's); the gateway row's median also has vs_bare_<figure>
        throughput only: vs_bare [{concurrency, streams_per_s, gw_cpu_us_per_event, gw_cpu_us_per_request,
             first_event_p50_ms (each gateway / bare, median over rounds), <figure>_rounds [ratio per round]}]
      ttfe:
        levels {"1"|"16": {median {added_p50_ms, added_p99_ms, paired_added_p50_ms, gateway_p50_ms,
                gateway_p90_ms, gateway_p99_ms, direct_p50_ms, direct_p90_ms, direct_p99_ms,
                gw_cpu_us_per_event, gw_cpu_pct, errors, bare_p50_ms, bare_p90_ms, bare_p99_ms, bare_added_p50_ms,
                bare_added_p99_ms, paired_bare_added_p50_ms, bare_cpu_us_per_event, ttfe_ratio_vs_bare,
                added_ratio_vs_bare}, runs [{targets [run summary], gateway_first_event_ms,
                direct_first_token_ms, added_p50_ms, added_p99_ms, paired_added_ms (c=1), gw_cpu_*,
                bare_first_token_ms, bare_added_*, paired_bare_added_ms, bare_cpu_*, *_ratio_vs_bare}],
                samples_ms {gateway: [ms], direct: [ms], bare: [ms]}}}
      open_streams:
        levels [{streams, opened, ramp_s, window_s, loadgen_processes, events_per_s (delivered, median of
                 the window's thirds), delivered_ratio, gw_cpu_pct, gw_cpu_us_per_event, thirds [{events_per_s,
                 gw_cpu_pct, gw_cpu_us_per_event}], idle_rss_bytes, rss_bytes, rss_per_stream_kb, open_files,
                 errors, error_kinds, held, gaps_ms, invariant_failures, ok, bare {the same for the bare proxy},
                 vs_bare {gw_cpu_us_per_event, gw_cpu_pct, rss_per_stream_kb, delivered_ratio: gateway / bare}}]
                 (RSS and open files: the gateway's whole process tree)
      paced (scenario 12):
        config {rate, token_delay_s, streams [int], window_s, models [str]}, cpu_per_event_ratio_max,
        levels [{streams, rate, offered_events_per_s, gateway {an open_streams level plus window_gaps_ms
                 (distribution of the client's gaps in the window), offered_events_per_s, pacing_ms,
                 delivered_ratio (of offered), added_gap_p50_ms, added_gap_p99_ms, added_gap_max_ms}, bare {the
                 same}, vs_bare {open_streams' ratios, added_gap_p99_ms_over_bare}}]
      hedging:
        config {model, hedge_delay_s, concurrency, pareto_alpha, ttft_scale_s}, median {single_p50_ms,
        single_p90_ms, single_p99_ms, single_max_ms, hedged_..., errors}, samples_ms {single, hedged},
        runs [{single: run summary, hedged: run summary}]
      cancellation:
        config {model, cancel_after_events, pause_s}, targets {gateway|direct: {latency_ms, cancels,
        not_observed, samples_ms}}
      http_versions (scenario 7, ``--compare-http2``): the rows above plus
        config {concurrency, model, tls, http1_connections, h2_connections, h2_streams_per_connection},
        comparison {http1_streams_per_s, h2_streams_per_s, h2_over_http1, errors}
      workers (scenario 8, ``--compare-workers``): the rows above (target "1 worker" | "2 workers"; each run
        also has worker_cpu_pct [% of a core per worker], and each median the per-worker medians) plus
        config {concurrency, model, http2, tls, configurations [{name, workers, pinned, cpus [int], pinning}]},
        comparison {workers_1_streams_per_s, workers_2_streams_per_s, ratio_2_over_1, errors}, note (what the
        pinning let the comparison show)

The load generator's own output (``raw/*.out.json``) is documented in ``bench.loadgen``.
"""
