"""Every wire dialect is registered by its provider type and satisfies the ``Dialect`` protocol."""

from __future__ import annotations

import pytest

from streamgw.config import ProviderConfig
from streamgw.core.request import parse_request
from streamgw.providers.base import Dialect, StreamTranslator, WireDialect
from streamgw.providers.registry import DIALECT_MODULES, dialects

#: provider type -> (needs_image_bytes, relays_events)
FLAGS = {
    "chat": (False, False),
    "openai": (False, True),
    "anthropic": (False, False),
    "gemini": (True, False),
    "ollama": (True, False),
}


@pytest.mark.parametrize("ptype", sorted(DIALECT_MODULES))
def test_each_dialect_is_registered_and_satisfies_the_protocols(ptype: str) -> None:
    dialect: Dialect = dialects()[ptype]
    assert isinstance(dialect, WireDialect) and dialect.name == ptype
    assert (dialect.needs_image_bytes, dialect.relays_events) == FLAGS[ptype]
    provider = ProviderConfig(name=f"p-{ptype}", type=ptype, base_url="http://127.0.0.1:9")
    request = parse_request(b'{"model": "m", "input": "hi"}')
    first: StreamTranslator = dialect.new_translator(request, provider)
    second = dialect.new_translator(request, provider)
    assert first is not second and first.feed(b"") == []
