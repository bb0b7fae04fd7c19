"""``bench/timeline.py``: requests told apart by the client's pauses, their shapes, and a real run."""

from __future__ import annotations

from bench.timeline import Mark, record, requests_of, summarize


def _request(t0: float, upstream_wait: float) -> list[Mark]:
    """The marks of one request: the connection's step, the application's, the upstream wait, the write."""
    return [(t0, "wait", ""), (t0 + 0.00001, "run", "conn"), (t0 + 0.0003, "step", "conn"),
            (t0 + 0.00031, "idle", ""), (t0 + 0.00032, "wait", ""), (t0 + 0.00033, "run", "app"),
            (t0 + 0.0008, "step", "app @ receive:1"), (t0 + 0.00081, "idle", ""),
            (t0 + 0.00081 + upstream_wait, "wait", ""), (t0 + 0.00082 + upstream_wait, "run", "app"),
            (t0 + 0.00100 + upstream_wait, "write", "2634"), (t0 + 0.0011 + upstream_wait, "step", "app")]


def test_requests_are_cut_at_the_pauses_and_after_their_first_write() -> None:
    marks = _request(1.0, 0.0005) + _request(1.1, 0.0007) + [(1.2, "run", "timer"), (1.2001, "step", "timer")]
    runs = requests_of(marks)
    assert len(runs) == 2  # the timer's lone step has no write: not a request
    assert all(run[-1][1] == "write" for run in runs)
    report = summarize(runs)
    assert report["requests"] == 2 and report["shape_share"] == 1.0
    kinds = [row["kind"] for row in report["rows"]]
    assert kinds == ["step", "idle", "wait", "step", "idle", "wait", "write"]
    waits = [row["us"] for row in report["rows"] if row["kind"] == "wait"]
    assert waits[-1] == 600.0  # the median of the two upstream waits (500 and 700 µs)
    assert report["steps_us"] == 290.0 + 470.0  # the two task steps before the upstream wait


def test_a_shape_seen_less_often_is_left_out_of_the_rows() -> None:
    odd = _request(2.0, 0.0005)
    odd.insert(3, (2.00030, "step", "other"))
    runs = requests_of(_request(1.0, 0.0005) + _request(1.1, 0.0005) + odd)
    report = summarize(runs)
    assert report["requests"] == 3 and report["shape_share"] == round(2 / 3, 3)
    assert all(row["what"] != "other" for row in report["rows"])


def test_a_real_gateway_run_shows_the_server_and_the_application_steps() -> None:
    marks, firsts = record(15, "memory")
    report = summarize(requests_of(marks))
    assert len(firsts) == 15 and all(t > 0 for t in firsts)
    assert report["requests"] >= 10
    assert report["rows"][-1]["kind"] == "write"
    names = {row["what"] for row in report["rows"] if row["kind"] == "step"}
    # the connection's task reads the request and runs the application itself (no task of the request's own)
    assert any(name.endswith("_serve_one") for name in names)
    assert not any(name.endswith("_serve_asgi") for name in names)
    assert 0 < report["steps_us"] < report["total_us"]
