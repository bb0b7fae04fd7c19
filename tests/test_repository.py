"""Repository hygiene: every pointer in the tracked sources is one a reader of this repository can follow."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Working notes that live outside the repository.  The names are built here so that this file does
# not match itself.
FORBIDDEN = ("protocols" + ".md", "DESIGN" + ".md")
CHECKED = ("streamgw/", "tests/", "bench/", "README.md")


def _tracked_files() -> list[Path]:
    """The files git tracks under the checked paths (binary files are read as bytes too)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--", *CHECKED],
        check=True, capture_output=True,
    ).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def offending_lines(paths: list[Path], base: Path = ROOT) -> list[str]:
    """``path:line: text`` (``path`` relative to ``base``) for every line of ``paths`` naming a forbidden document."""
    needles = [name.encode() for name in FORBIDDEN]
    found = []
    for path in paths:
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if any(needle in line for needle in needles):
                found.append(f"{path.relative_to(base)}:{number}: {line.decode(errors='replace').strip()}")
    return found


def test_no_references_to_documents_outside_the_repository() -> None:
    paths = _tracked_files()
    assert any(path.name == "README.md" for path in paths)
    assert len(paths) > 100  # the listing really covers the package and the tests
    assert offending_lines(paths) == []


def test_the_check_sees_a_reference(tmp_path: Path) -> None:
    """The scan itself works: a planted reference is reported with its file and line, a clean file is not."""
    planted = tmp_path / "planted.py"
    planted.write_text('"""Fine."""\n# see ' + FORBIDDEN[1] + " section 2\n")
    clean = tmp_path / "clean.py"
    clean.write_text("# see the README\n")
    assert offending_lines([planted, clean], base=tmp_path) == [f"planted.py:2: # see {FORBIDDEN[1]} section 2"]
