"""Session-wide test setup.

Gateways that tests start as processes load their config the way users do, so without a
``[store]`` table they would keep responses in ``./streamgw.db`` inside the checkout.  Point
``STREAMGW_STORE_PATH`` at a temporary directory for the whole session instead (tests that
configure a store of their own start their gateways without it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _store_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.environ.get("STREAMGW_STORE_PATH"):
        yield
        return
    os.environ["STREAMGW_STORE_PATH"] = str(tmp_path_factory.mktemp("store") / "streamgw.db")
    try:
        yield
    finally:
        os.environ.pop("STREAMGW_STORE_PATH", None)
