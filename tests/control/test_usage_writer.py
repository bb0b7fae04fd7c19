"""The usage writer: ``add`` never waits, rows are aggregated and bounded, and kept while the backend is down."""

from __future__ import annotations

from streamgw.control.base import UsageCounts
from streamgw.control.memory import MemoryControl
from streamgw.control.redis import RedisControl
from streamgw.control.usage import UsageWriter
from streamgw.testing.process import free_port


def row(key: str) -> tuple[str, str, str, str, str, str]:
    return ("2026-01-01", key, "", "m", "p", "u")


async def test_rows_are_aggregated_then_written() -> None:
    backend = MemoryControl()
    writer = UsageWriter(backend)
    for _ in range(3):
        assert writer.add(row("a"), UsageCounts(requests=1, input_tokens=2))
    assert writer.pending == 1 and backend.rows == {}  # nothing written on the request path
    await writer.flush()
    assert writer.pending == 0 and backend.rows[row("a")].input_tokens == 6


async def test_pending_rows_are_bounded() -> None:
    dropped: list[int] = []
    writer = UsageWriter(MemoryControl(), max_rows=2, dropped=dropped.append)
    assert writer.add(row("a"), UsageCounts(requests=1)) and writer.add(row("b"), UsageCounts(requests=1))
    assert writer.add(row("a"), UsageCounts(requests=1))  # an existing row still takes more
    assert not writer.add(row("c"), UsageCounts(requests=1))
    assert dropped == [1] and writer.pending == 2


async def test_rows_wait_while_the_backend_is_down() -> None:
    down = RedisControl(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    writer = UsageWriter(down)
    writer.add(row("a"), UsageCounts(requests=1))
    await writer.flush()  # no exception: the row stays for the next round
    writer.add(row("a"), UsageCounts(requests=1))
    assert writer.pending == 1
    memory = MemoryControl()
    writer.backend = memory  # the backend is back (here: another one)
    await writer.flush()
    assert memory.rows[row("a")].requests == 2
