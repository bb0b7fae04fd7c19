"""``bench/memfloor.py``: RSS per open stream of a do-nothing relay (stock hypercorn, streamgw's worker) and of
the gateway, each layer in a fresh process holding real streams of the chat mock."""

from __future__ import annotations

from bench.memfloor import LAYERS, measure


def test_each_layer_holds_every_stream_and_the_application_costs_more_than_a_relay() -> None:
    report = measure(150, "none")
    assert report["opened"] == dict.fromkeys(LAYERS, 150)
    kb = report["kb_per_stream"]
    assert all(value > 1.0 for value in kb.values()), kb  # a held stream costs at least its sockets' objects
    # the worker keeps no task or timer per connection that stock hypercorn keeps: a relay costs less under it
    assert kb["worker"] < kb["hypercorn"], kb
    assert kb["gateway"] > kb["worker"] and report["application_kb"] == round(kb["gateway"] - kb["worker"], 2)
