"""Hypothesis profiles for the fuzz suite.

``ci`` (the default) is derandomized and small, so CI runs the same examples every time
and the whole suite stays within about a minute and a half on two cores.  ``dev`` runs
many more random examples for a local hunt: ``HYPOTHESIS_PROFILE=dev pytest tests/fuzz``.
A failing example is printed with ``print_blob`` so it can be replayed with
``@reproduce_failure``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # a loaded 2-core CI machine makes per-example timing meaningless
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
}
settings.register_profile("ci", derandomize=True, database=None, max_examples=60, **_COMMON)
settings.register_profile("dev", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
