"""Recording one response in the store: its ``in_progress`` snapshot when a stream starts, its final object at the end.

The snapshot is pending at once (this instance reads it), but the service writes it only if the
stream outlives ``[store] snapshot_after``: a short stream costs one write, not two.

``finish`` runs before the terminal event goes out, and (with ``confirm_writes``) waits until
the record is written, so a client that chains as soon as it saw ``response.completed`` finds
it, through this instance or another one sharing the store.  A stream the client
left before its end is stored as ``failed`` with the output it had so far; the run's own
emitter is left untouched (the request's metrics still see it unfinished).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from streamgw.engine.run import ResponseRun
from streamgw.store.calls import StoreCall
from streamgw.store.chain import Expansion, record_for
from streamgw.store.service import StoreService

_ABANDONED = {"code": "server_error", "message": "the client disconnected before the response finished"}


def _abandoned(response: dict[str, Any]) -> dict[str, Any]:
    """The final object of a response nobody read to its end."""
    output = response.get("output")
    return {**response, "status": "failed", "completed_at": None, "error": dict(_ABANDONED),
            "output": list(output) if isinstance(output, list) else []}


class Recorder:
    """Submits the records of one response to the store service."""

    def __init__(self, service: StoreService, expansion: Expansion, calls: list[StoreCall] | None = None,
                 created_at: float | None = None) -> None:
        """``calls`` (tracing): receives the final record's write, timed (with ``confirm_writes``: until written).
        ``created_at``: the records' creation time (``time.time()``; default: now)."""
        self._service = service
        self._expansion = expansion
        self._created_at = time.time() if created_at is None else created_at
        self._finished = False
        self._calls = calls
        self._write: StoreCall | None = None

    async def started(self, run: ResponseRun) -> None:
        """A stream starts: store its snapshot (``in_progress``, no output yet), or the end if it is already over."""
        if run.done:
            await self.finish(run)
            return
        snapshot = run.emitter.in_progress()
        self._submit(snapshot, run, snapshot=True)

    async def finish(self, run: ResponseRun) -> None:
        """The response ended: store it and, with ``confirm_writes``, wait (bounded) until it is written."""
        self.finished(run)
        config = self._service.config
        if config.confirm_writes:
            with trio.move_on_after(config.timeout) as waited:
                await self._service.wait_written(str(run.emitter.response["id"]))
            if self._write is not None:
                self._write.end("timeout" if waited.cancelled_caught else "written")

    def finished(self, run: ResponseRun) -> None:
        """The response ended (or was abandoned): store its final object, once."""
        if self._finished:
            return
        self._finished = True
        response = run.emitter.response if run.done else _abandoned(run.emitter.response)
        if self._calls is not None:
            self._write = StoreCall("write", trio.current_time())
            self._calls.append(self._write)
        self._submit(response, run)
        if self._write is not None and not self._service.config.confirm_writes:
            self._write.end("queued")

    def _submit(self, response: dict[str, Any], run: ResponseRun, *, snapshot: bool = False) -> None:
        provider = run.opened.target.provider
        record = record_for(self._expansion, response, provider.name, provider.type, self._created_at)
        self._service.submit(record, snapshot=snapshot)
