"""core/ is sans-IO: importing any of its modules loads no I/O library, and it imports only itself,
``streamgw.errors`` and the standard library."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import streamgw.core

CORE = Path(streamgw.core.__file__).parent
MODULES = sorted(f"streamgw.core.{info.name}" for info in pkgutil.iter_modules([str(CORE)]))
IO_LIBRARIES = ("trio", "httpx", "quart", "quart_trio", "hypercorn", "h11", "h2", "anyio", "asyncio", "socket",
                "ssl", "selectors", "pydantic", "prometheus_client")


def test_every_core_module_is_checked() -> None:
    assert len(MODULES) == len(list(CORE.glob("*.py"))) - 1  # all but __init__


def test_core_is_sans_io() -> None:
    code = (
        f"import sys, {', '.join(MODULES)};"
        f" print(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", MODULES)
def test_core_imports_only_core_errors_and_the_standard_library(module: str) -> None:
    path = CORE / f"{module.rsplit('.', 1)[1]}.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # also imports inside functions
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    allowed = ("streamgw.core", "streamgw.errors")
    foreign = [name for name in names if name.split(".")[0] not in sys.stdlib_module_names
               and not name.startswith(allowed)]
    assert foreign == []
