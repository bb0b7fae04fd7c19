"""core/ is sans-IO: importing it loads no I/O library."""

from __future__ import annotations

import subprocess
import sys


def test_core_is_sans_io() -> None:
    code = (
        "import sys, streamgw.core.sse, streamgw.core.ndjson, streamgw.core.emitter, streamgw.core.deltas,"
        " streamgw.core.request;"
        " print(sorted(m for m in ('trio', 'httpx', 'quart', 'hypercorn', 'h11') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
