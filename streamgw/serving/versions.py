"""The release lines of the libraries ``streamgw.serving`` patches, checked before the gateway starts.

``streamgw.serving.hypercorn_trio`` and ``streamgw.serving.worker`` subclass hypercorn's trio worker,
override its private methods and copy parts of them: they are correct for one hypercorn release line
only.  pyproject pins that line, but an environment can still hold another one (``pip install
--no-deps``, a distribution package, a hand-edited lock file).  Rather than fail somewhere inside a
connection, ``streamgw serve`` (and ``streamgw.asgi``) name the mismatch and exit.

This module imports nothing from those libraries: a release that no longer has the patched names
would otherwise fail with an ``ImportError`` before the check could say why.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["PATCHED", "installed_version", "version_problems"]

#: distribution -> (the release line ``serving/`` is written for, what depends on it)
PATCHED: dict[str, tuple[str, str]] = {
    "hypercorn": ("0.18", "its trio worker is patched"),
    "priority": ("2.0", "hypercorn's HTTP/2 scheduler subclasses its PriorityTree"),
}


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``; None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def version_problems() -> list[str]:
    """One line per patched library whose installed version is outside its release line; [] if none."""
    problems = []
    for distribution, (line, why) in PATCHED.items():
        found = installed_version(distribution)
        if found is None or not _in_line(found, line):
            problems.append(f"streamgw needs {distribution} {line}.x ({why}), found {found or 'none'}")
    return problems


def _in_line(version: str, line: str) -> bool:
    """Whether ``version`` (e.g. ``0.18.0``, ``0.18.1.post1``) belongs to ``line`` (e.g. ``0.18``)."""
    return version == line or version.startswith(line + ".")
