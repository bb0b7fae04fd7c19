"""``load_config``: the TOML file and the ``STREAMGW_*`` environment, checked, as a ``Config``.

Kept apart from ``streamgw.config`` (the plain dataclasses every layer reads) so that the
dataclasses never import the schema: ``streamgw.config_schema`` imports them, and this
module imports the schema, lazily, when a config is actually loaded.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamgw.config import Config, ConfigError


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file at ``path`` (or ``$STREAMGW_CONFIG``), falling back to the environment alone.

    The file and the ``STREAMGW_*`` variables are checked against a schema
    (``streamgw.config_schema``): an unknown table or key, a value of the wrong type or out of
    range raises ``ConfigError`` listing every problem.  The schema is imported here, not at
    module import, so that processes which only receive a ready ``Config`` never load it.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get("STREAMGW_CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
    from streamgw.config_schema import build_config

    return build_config(raw, env, source=None if path is None else str(path))


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
