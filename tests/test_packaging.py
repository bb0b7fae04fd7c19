"""What pyproject declares matches what streamgw imports, and the gateway refuses hypercorn releases it
was not written for."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

import streamgw
from streamgw import cli
from streamgw.serving import versions

ROOT = Path(streamgw.__file__).parent
PYPROJECT = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
#: installed with the distribution that provides it, at the exact version that one pins
PROVIDED_BY = {"pydantic-core": "pydantic"}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``quart-trio==0.12.*`` -> ``quart-trio``)."""
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


RUNTIME = {_name(r): r for r in PYPROJECT["project"]["dependencies"]}
TEST = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
OTEL = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["otel"]}
#: ``opentelemetry`` is a namespace many distributions share: which one a module comes from (longest prefix)
OTEL_PACKAGES = {"opentelemetry": "opentelemetry-api", "opentelemetry.sdk": "opentelemetry-sdk",
                 "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http",
                 "opentelemetry.proto": "opentelemetry-proto"}
#: the one module that may import the ``otel`` extra (``[tracing] enabled`` imports it; nothing else does)
OTEL_MODULE = "streamgw/app/tracing.py"
#: test support shipped in the package: it may use what the test extra installs (pytest)
TESTING = ROOT / "testing"


def _imported_modules(*, testing: bool = False) -> Iterator[tuple[str, str]]:
    """(module imported, importing file) for every absolute import of the streamgw modules.

    ``testing``: the modules of ``streamgw.testing`` only, else all the others.
    """
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(TESTING) != testing:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield name, str(path.relative_to(ROOT.parent))


def _otel_distribution(module: str) -> str:
    return OTEL_PACKAGES[max((p for p in OTEL_PACKAGES if module == p or module.startswith(p + ".")), key=len)]


def _imported_distributions(*, testing: bool = False) -> dict[str, str]:
    """Each third-party distribution the streamgw modules import -> one module that imports it.

    ``testing``: the modules of ``streamgw.testing`` only, else all the others.  The ``opentelemetry``
    namespace is resolved by ``OTEL_PACKAGES``.
    """
    owners = metadata.packages_distributions()
    found: dict[str, str] = {}
    for name, where in _imported_modules(testing=testing):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "streamgw":
            continue
        if top == "opentelemetry":
            found.setdefault(_otel_distribution(name), where)
            continue
        for distribution in owners.get(top, [top]):
            found.setdefault(distribution.lower().replace("_", "-"), where)
    return found


def test_every_imported_library_is_a_declared_dependency() -> None:
    undeclared = {name: where for name, where in _imported_distributions().items()
                  if name not in RUNTIME and PROVIDED_BY.get(name) not in RUNTIME
                  and not (name in OTEL and where == OTEL_MODULE)}
    assert undeclared == {}
    undeclared = {name: where for name, where in _imported_distributions(testing=True).items()
                  if name not in RUNTIME and name not in TEST}
    assert undeclared == {}


def test_only_the_tracing_module_imports_opentelemetry() -> None:
    """The otel extra is optional: outside ``streamgw.testing`` one module imports it, and only when tracing is on."""
    importers = {where for name, where in _imported_modules() if name.split(".")[0] == "opentelemetry"}
    assert importers == {OTEL_MODULE}
    assert {_otel_distribution(name) for name, where in _imported_modules() if where == OTEL_MODULE
            and name.split(".")[0] == "opentelemetry"} <= OTEL


def test_every_runtime_dependency_is_imported() -> None:
    """A library only the tests use (trio-websocket) belongs in the test extra."""
    assert set(RUNTIME) - set(_imported_distributions()) == set()


def test_every_runtime_dependency_has_an_upper_bound() -> None:
    unbounded = [r for r in RUNTIME.values() if "<" not in r and not re.search(r"==[\d.]+\*", r)]
    assert unbounded == []


def test_hypercorn_is_pinned_to_the_patched_release_line() -> None:
    line, _ = versions.PATCHED["hypercorn"]
    assert RUNTIME["hypercorn"] == f"hypercorn=={line}.*"
    assert versions.version_problems() == []  # and that is what is installed


@pytest.mark.parametrize(("found", "ok"), [("0.18.0", True), ("0.18.3.post1", True), ("0.19.0", False),
                                           ("0.180.0", False), ("0.1", False), (None, False)])
def test_version_lines(monkeypatch: pytest.MonkeyPatch, found: str | None, ok: bool) -> None:
    monkeypatch.setattr(versions, "installed_version", lambda d: found if d == "hypercorn" else "2.0.0")
    expected = [] if ok else [f"streamgw needs hypercorn 0.18.x (its trio worker is patched), found {found or 'none'}"]
    assert versions.version_problems() == expected


def test_serve_names_a_hypercorn_mismatch_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(versions, "installed_version", lambda d: "0.19.0" if d == "hypercorn" else "2.0.0")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--port", "1"])  # were the check missing, this would try to serve
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "streamgw needs hypercorn 0.18.x (its trio worker is patched), found 0.19.0\n"


_PATCHED_VERSION = "import streamgw.serving.versions as v; v.installed_version = lambda d: '0.19.0'; "


def test_the_check_runs_before_hypercorn_is_imported() -> None:
    """A release without the patched names would fail on import, with an error that does not say why."""
    code = (_PATCHED_VERSION + "import sys\nfrom streamgw.cli import main\ntry:\n    main(['serve'])\n"
            "except SystemExit as e:\n    print(e.code, sorted(m for m in sys.modules if m.startswith('hypercorn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "2 []"
    assert "streamgw needs hypercorn 0.18.x" in out.stderr


def test_asgi_app_refuses_a_mismatch_too() -> None:
    out = subprocess.run([sys.executable, "-c", _PATCHED_VERSION + "import streamgw.asgi"],
                         capture_output=True, text=True, timeout=60, env={"STREAMGW_STORE_BACKEND": "none"})
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["streamgw needs hypercorn 0.18.x (its trio worker is patched), found 0.19.0",
                                       "streamgw needs priority 2.0.x (hypercorn's HTTP/2 scheduler subclasses its "
                                       "PriorityTree), found 0.19.0"]
