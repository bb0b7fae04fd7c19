"""Helpers for the stored-responses end-to-end tests: gateways with a store config of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamgw.testing.process import start_gateway

from .conftest import GATEWAY_KEY, Gateway

STORE_ENV = ("STREAMGW_STORE_BACKEND", "STREAMGW_STORE_PATH", "STREAMGW_REDIS_URL")


def start_store_gateway(config_text: str, workdir: Path, name: str = "gateway") -> Gateway:
    """Start ``streamgw serve`` with ``config_text``; the session's store overrides are not passed on."""
    config = workdir / f"{name}.toml"
    config.write_text(f'[auth]\nkeys = ["{GATEWAY_KEY}"]\n\n{config_text}')
    log = workdir / f"{name}.log"
    with pytest.MonkeyPatch.context() as patch:
        for variable in STORE_ENV:
            patch.delenv(variable, raising=False)
        proc, url = start_gateway(config, log)
    return Gateway(url, proc, log)
