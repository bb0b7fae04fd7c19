"""One gateway process: hypercorn's connection handling under streamgw's own accept loop and drain.

``hypercorn.trio.serve`` decides everything about shutdown at once: when its trigger fires it
stops the listeners *and* sets ``terminated`` (idle keep-alive connections close, busy ones close
after their response, HTTP/2 refuses new streams), then cancels every connection
``graceful_timeout`` later.  The application hears of it only after that, through the lifespan
protocol — too late to end a stream honestly.  So this module runs hypercorn's own pieces
(``Lifespan``, ``TCPServer``, ``WorkerContext``) under a loop of ours, and shuts down in steps:

1. SIGTERM/SIGINT (or the supervisor that started this worker disappearing): the listeners close,
   so new connections are refused;
2. ``Drain.begin(drain_timeout)``: ``/readyz`` answers 503 and every run gets the drain deadline.
   Connections that were already open stay open and are served — a load balancer's health check on
   a kept connection sees the 503 instead of a reset;
3. as soon as no request is in flight, or at the deadline, hypercorn's ``terminated`` is set:
   idle keep-alive connections are closed at once, busy ones after their current response;
4. at the deadline, runs still going end with ``response.failed`` (a non-streamed request with a
   503) — see ``streamgw.engine.drain``;
5. ``graceful_timeout`` after the deadline, connections still open are cancelled (a client that
   stopped reading cannot hold the process);
6. lifespan shutdown (the store writer flushes, upstream clients close), and ``serve`` returns.

Its connections' keep-alive timers are kept by one task per worker (``KeptAlive``) rather than a
task per idle period as in hypercorn; where hypercorn's own connection class serves, its idle task is
fixed for quart-trio (``DetachedSingleTask``): without that an idle keep-alive connection is never
closed at shutdown and holds the process until the hard deadline.  Its accept loop
(``streamgw.serving.connections``) holds the worker to ``max_connections`` open connections and rides
out ``accept()`` failing for lack of file descriptors.

Written against hypercorn 0.18 (``streamgw.serving.versions`` refuses another release line): upstream,
``hypercorn.trio.serve`` would need a hook between closing its listeners and setting ``terminated``.
"""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState, LifespanState, TaskGroup
from hypercorn.utils import LifespanFailureError, LifespanTimeoutError, repr_socket_addr, wrap_app
from quart import Quart

from streamgw.engine.drain import Drain
from streamgw.serving.connections import (
    ConnectionSlots,
    Listener,
    accept_connections,
    automatic_max_connections,
    first_bytes,
)
from streamgw.serving.hypercorn_trio import SerialisedTCPServer
from streamgw.timers import DueHeap, run_local

__all__ = ["DetachedSingleTask", "InFlight", "Sockets", "addresses", "close_sockets", "listen", "run_gateway", "serve"]

log = logging.getLogger("streamgw")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


def listen(hc: HypercornConfig) -> Sockets:
    """Bind and listen on every address of ``hc``; raise ``OSError`` (e.g. the port is in use).

    One socket per address, without ``SO_REUSEPORT``: worker processes share it (they inherit
    it), and a second gateway started on the same port fails here instead of silently sharing
    the port.  HTTP/3 (QUIC) is not served.
    """
    workers, hc.workers = hc.workers, 1  # hypercorn sets SO_REUSEPORT when workers > 1
    try:
        sockets = hc.create_sockets()
    finally:
        hc.workers = workers
    for sock in sockets.quic_sockets:
        sock.close()
    stream_sockets = [*sockets.secure_sockets, *sockets.insecure_sockets]
    try:
        for sock in stream_sockets:
            sock.listen(hc.backlog)
    except OSError:
        for sock in stream_sockets:
            sock.close()
        raise
    return Sockets(sockets.secure_sockets, sockets.insecure_sockets, [])


def addresses(sockets: Sockets) -> list[str]:
    """``http://host:port`` (or ``https://``) for each listening socket."""
    found = [f"https://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.secure_sockets]
    return found + [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.insecure_sockets]


def close_sockets(sockets: Sockets) -> None:
    """Close this process's copies of ``sockets``."""
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


class InFlight:
    """ASGI wrapper that counts the HTTP requests and WebSocket connections in progress.

    One increment and one decrement per request: nothing per event.  A Quart application is called through its
    ``asgi_app``, which is all that ``Quart.__call__`` does: without that frame, which every open stream's task
    would hold for as long as it streams.
    """

    def __init__(self, app: ASGIApp) -> None:
        if isinstance(app, Quart) and type(app).__call__ is Quart.__call__:
            app = app.asgi_app
        self._app = app
        self.count = 0
        self._idle: trio.Event | None = None
        self._ended = self._request_ended  # one bound method for every request (each open stream's task holds it)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, send)
            return
        app, ended = self.begin_request()
        try:
            await app(scope, receive, send)
        finally:
            ended()

    def begin_request(self) -> tuple[ASGIApp, Callable[[], None]]:
        """Count a request in: the application to call for it, and what to call when it is over.

        The worker's task group (``InboxTaskGroup``) calls it rather than this wrapper, so that an open
        stream's task does not hold one more frame (this wrapper's) for as long as it streams.
        """
        self.count += 1
        return self._app, self._ended

    def _request_ended(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight."""
        while self.count:
            self._idle = trio.Event()
            await self._idle.wait()


class DetachedSingleTask(TrioSingleTask):
    """hypercorn's per-connection idle task, started with ``start_soon`` instead of ``start``.

    The idle task closes a keep-alive connection after ``keep_alive_timeout``, and at once when
    the server shuts down.  hypercorn (``TrioSingleTask.restart``) starts it with
    ``nursery.start()`` from the task that reports the connection idle — under quart-trio that is
    the request's handler task, inside quart-trio's per-request nursery, which quart-trio cancels
    the moment the response is complete.  When ``start()``'s caller is already cancelled, trio
    does not move the new task into the target nursery (``TaskStatus.started`` leaves it in the
    caller's cancelled scope), so the idle task dies at its first checkpoint.  After its first
    request such a connection had no idle task: it never timed out, and at shutdown it held the
    process until the hard deadline.  ``start_soon`` puts the task straight into the connection's
    nursery, out of the caller's reach; nothing here awaits, so no lock is needed either.

    Upstream this is one line in ``TrioSingleTask.restart`` (``hypercorn/trio/worker_context.py``):
    ``task_group.spawn`` instead of ``await task_group._nursery.start``; we found no hypercorn issue
    that reports it.  The worker's own connections use ``KeptAlive`` instead (no task at all).
    """

    def __init__(self) -> None:  # no ``super().__init__()``: its lock (one per connection) is never used here
        self._scope: trio.CancelScope | None = None

    async def restart(self, task_group: TaskGroup, action: Callable[[], Awaitable[None]]) -> None:
        """Cancel the running task, if any, and start ``action`` in the connection's nursery."""
        if self._scope is not None:
            self._scope.cancel()
        self._scope = trio.CancelScope()
        task_group.spawn(_run_in_scope, self._scope, action)  # ``start_soon`` in the connection's nursery

    async def stop(self) -> None:
        """Cancel the running task, if any."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


async def _run_in_scope(scope: trio.CancelScope, action: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await action()


class KeptAlive:
    """A connection's keep-alive timer without a task: the worker's one ``DueHeap`` times every connection.

    hypercorn runs a task per connection while it is idle (``restart`` when a response is done,
    ``stop`` when the next request arrives): per request a cancellation, the old task's last step, a
    spawn and the new task's first step — about 5 % of a short stream's instructions, and part of it
    between a request's arrival and its handler.  Here ``restart`` notes when the connection became
    idle and ``stop`` forgets it; the connection is filed in the heap once, by when it would time out,
    and when that comes it is either past its timeout (closed, as hypercorn's task would) or filed
    again by its new due time (or not at all while it is busy: the next ``restart`` files it).

    As with hypercorn's task, the worker's ``ConnectionSlots`` can close an idle connection early
    (``cancel``), and a connection that becomes idle once the worker is terminating closes at once.
    """

    __slots__ = ("_closing", "_filed", "_server", "_since", "_slots", "_timeout")

    def __init__(self, server: SerialisedTCPServer, slots: ConnectionSlots, timeout: float) -> None:
        #: None once the connection has ended: a filing left in the heap must not keep it alive until it is due
        self._server: SerialisedTCPServer | None = server
        self._slots = slots
        self._timeout = timeout
        self._since: float | None = None  # when it became idle; None while it serves (or once closed)
        self._filed = False  # in the heap (at most once)
        self._closing = False  # a close is on its way (until a request arrives first)

    async def restart(self, task_group: TaskGroup, action: Callable[[], Awaitable[None]]) -> None:
        """The connection is idle (``action``, hypercorn's idle task, is not needed)."""
        server = self._server
        if server is None:
            return
        self._since = now = trio.current_time()
        if server.context.terminated.is_set():
            self._close()  # idle once the worker is terminating: closed at once
            return
        self._slots.idle(server.stream, self)
        if not self._filed:
            self._filed = True
            _keep_alive_heap().add(now + self._timeout, self)

    async def stop(self) -> None:
        """The connection is busy (or its client's side is closed)."""
        self._closing = False
        if self._since is not None and self._server is not None:
            self._since = None
            self._slots.busy(self._server.stream)

    def cancel(self) -> None:
        """Close the connection now if it is idle (``ConnectionSlots``: to make room, or at shutdown)."""
        if self._since is not None:
            self._close()

    def ended(self) -> None:
        """The connection has ended: let go of it (its filing, if any, is dropped when it comes up or in a sweep)."""
        self._server = None
        self._since = None
        if self._filed:
            _keep_alive_heap().ended(_alive)

    def _close(self) -> None:
        server = self._server
        self._since = None
        if server is None:
            return
        self._closing = True
        self._slots.busy(server.stream)
        try:
            server.task_group.spawn(self._close_now)
        except RuntimeError:  # the connection's task group has ended: it is closed already
            pass

    async def _close_now(self) -> None:
        server = self._server
        if self._closing and server is not None:  # no request arrived since the close was decided
            await server.close_idle()


def _kept_alive_due(connection: KeptAlive, now: float) -> float | None:
    """The heap's handling of a connection whose time came: when to look again (None: not filed)."""
    since = connection._since
    if since is not None:
        due = since + connection._timeout
        if due > now:
            return due
        connection._close()
    connection._filed = False
    return None


def _alive(connection: KeptAlive) -> bool:
    if connection._server is None:
        connection._filed = False
        return False
    return True


_KEEP_ALIVE: trio.lowlevel.RunVar[DueHeap[KeptAlive]] = trio.lowlevel.RunVar("streamgw_keep_alive")


def _keep_alive_heap() -> DueHeap[KeptAlive]:
    """This trio run's keep-alive heap (a flood of short connections leaves dead filings: ``DueHeap.ended``)."""
    return run_local(_KEEP_ALIVE, lambda: DueHeap(_kept_alive_due, "streamgw keep-alive"))


def _connection_handler(
    app: AppWrapper, hc: HypercornConfig, context: WorkerContext, state: LifespanState, slots: ConnectionSlots
) -> Callable[[trio.abc.Stream], Awaitable[Awaitable[None] | None]]:
    # Looked up at serve time: ``streamgw.serving`` may have put its TCPServer subclass there.
    server_class: type[TCPServer] = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    connection_state = ConnectionState(state.copy())

    async def handle(stream: trio.abc.Stream) -> Awaitable[None] | None:
        """The connection's first bytes; then the server's ``run``, for ``_serve_one`` to await."""
        if not await first_bytes(stream, slots, hc.keep_alive_timeout):
            return None  # closed by the caller
        server = server_class(app, hc, context, connection_state, stream)  # type: ignore[arg-type]
        if not isinstance(server, SerialisedTCPServer):  # hypercorn's own class cannot close idle ones early
            server.idle_task = DetachedSingleTask()
            return server.run()
        server.slots = slots
        server.idle_task = KeptAlive(server, slots, hc.keep_alive_timeout)  # type: ignore[assignment]
        return server.run()  # its end tells the KeptAlive (``SerialisedTCPServer.run``)

    return handle


def _listeners(hc: HypercornConfig, sockets: Sockets) -> list[Listener]:
    listeners: list[Listener] = []
    if sockets.secure_sockets:
        ssl_context = hc.create_ssl_context()
        assert ssl_context is not None, "secure sockets without a certificate"
        listeners += [Listener(sock, ssl_context) for sock in sockets.secure_sockets]
    return listeners + [Listener(sock) for sock in sockets.insecure_sockets]


async def _wait_for_signal(signals: Any, stop: trio.Event) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.info("received %s again: already shutting down", name)
        else:
            log.info("received %s: shutting down", name)
            stop.set()


async def _wait_for_supervisor_exit(sentinel: int, stop: trio.Event) -> None:
    await trio.lowlevel.wait_readable(sentinel)  # the pipe from the supervisor closed: it is gone
    if not stop.is_set():
        log.warning("the supervisor exited: shutting down")
        stop.set()


async def serve(
    app: ASGIApp,
    hc: HypercornConfig,
    sockets: Sockets,
    drain: Drain,
    *,
    drain_timeout: float,
    grace: float,
    on_ready: Callable[[], None] | None = None,
    supervisor_sentinel: int | None = None,
) -> None:
    """Serve ``app`` on ``sockets`` until SIGTERM/SIGINT, then drain (see the module doc) and return.

    ``drain`` is the engine's (``Gateway.drain``); ``grace`` is how long connections get after the
    drain deadline before they are closed hard.  ``on_ready`` is called once the listeners accept;
    ``supervisor_sentinel`` is a file descriptor that becomes readable when the supervisor dies.
    """
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as watchers:
            watchers.start_soon(_wait_for_signal, signals, stop)
            if supervisor_sentinel is not None:
                watchers.start_soon(_wait_for_supervisor_exit, supervisor_sentinel, stop)
            server = _Server(app, hc, drain, drain_timeout, grace)
            await server.run(sockets, stop, on_ready)
            watchers.cancel_scope.cancel()


class _Server:
    """The lifespan, the listeners and the connections of one process, and its drain."""

    def __init__(self, app: ASGIApp, hc: HypercornConfig, drain: Drain, drain_timeout: float, grace: float) -> None:
        hc.set_statsd_logger_class(StatsdLogger)
        self.hc = hc
        self.in_flight = InFlight(app)
        self.app = wrap_app(cast(ASGIFramework, self.in_flight), hc.wsgi_max_body_size, "asgi")
        self.drain = drain
        self.drain_timeout = drain_timeout
        self.grace = grace
        self.context = WorkerContext(None)
        configured = int(getattr(hc, "max_connections", 0))
        self.slots = ConnectionSlots(configured or automatic_max_connections())
        log.info("accepting up to %d client connections in this worker (max_connections = %s)",
                 self.slots.limit, configured or f"0: automatic, from the open-file limit {_open_file_limit()}")

    async def run(self, sockets: Sockets, stop: trio.Event, on_ready: Callable[[], None] | None) -> None:
        state: LifespanState = {}
        lifespan = Lifespan(self.app, self.hc, state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            handler = _connection_handler(self.app, self.hc, self.context, state, self.slots)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener in _listeners(self.hc, sockets):
                        accepting.start_soon(accept_connections, listener, handler, connections, self.slots)
                    if on_ready is not None:
                        on_ready()
                    await stop.wait()
                    accepting.cancel_scope.cancel()  # the listeners close: new connections are refused
                await self._drain(connections.cancel_scope)
            if connections.cancel_scope.cancelled_caught:
                log.warning("connections still open %g s after the drain deadline were closed", self.grace)
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()

    async def _drain(self, connections: trio.CancelScope) -> None:
        started = trio.current_time()
        drain = self.drain
        drain.begin(self.drain_timeout)
        connections.deadline = drain.deadline + self.grace
        log.info("draining: %d request(s) in flight, up to %g s", self.in_flight.count, self.drain_timeout)
        with trio.move_on_at(drain.deadline):
            await self.in_flight.wait_idle()
        if self.in_flight.count:
            log.warning("drain deadline reached: ending %d request(s) still in flight", self.in_flight.count)
        else:
            log.info("drained in %.2f s: nothing in flight", trio.current_time() - started)
        # Idle keep-alive connections close now, busy ones after their current response.
        await self.context.terminated.set()
        self.slots.close_idle()  # also those that have not sent a byte yet (hypercorn does not know them)


def _open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_gateway(serve: Callable[[], Awaitable[None]]) -> int:
    """``trio.run(serve)`` as a process's main: 0 after a clean shutdown, 1 (and why) when it failed."""
    status = 0
    try:
        trio.run(serve)
    except* (LifespanFailureError, LifespanTimeoutError) as group:
        # The application's own startup failed (``before_serving``): its message says why.
        for error in _leaves(group):
            log.error("the gateway failed to start: %s", error)
        status = 1
    except* Exception:
        log.exception("the gateway failed")
        status = 1
    return status


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found
