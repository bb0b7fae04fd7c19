"""Provider ``type`` -> wire dialect module.  One module per dialect, not per vendor."""

from __future__ import annotations

import importlib
from functools import cache

from streamgw.providers.base import Dialect, LocalProvider

#: config ``type`` -> module exporting ``DIALECT``
DIALECT_MODULES: dict[str, str] = {
    "chat": "streamgw.providers.chat_completions",
    "openai": "streamgw.providers.openai_responses",
    "anthropic": "streamgw.providers.anthropic",
    "gemini": "streamgw.providers.gemini",
    "ollama": "streamgw.providers.ollama",
}


@cache
def dialects() -> dict[str, Dialect]:
    """Every dialect that is installed, by provider type."""
    found: dict[str, Dialect] = {}
    for ptype, module in DIALECT_MODULES.items():
        try:
            found[ptype] = importlib.import_module(module).DIALECT
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return found


#: config ``type`` -> module exporting ``LOCAL``: provider types answered in-process
LOCAL_MODULES: dict[str, str] = {
    "demo": "streamgw.providers.demo",
}


@cache
def local_providers() -> dict[str, LocalProvider]:
    """Every in-process provider type, by provider type."""
    return {ptype: importlib.import_module(module).LOCAL for ptype, module in LOCAL_MODULES.items()}

