"""The HTTP edge: how long a client may take, and how many may connect at once.

What aiohttp 3.14 (the pinned version) offers, and what this module relies on:

- ``RequestHandler(keepalive_timeout=...)``: a timer armed in ``connection_made`` and after
  every response; when it fires it closes the connection if no complete request is waiting.
  Incoming bytes do not push it back, so it also ends a half-sent head, but only after the
  whole keep-alive time (3630 s by default). We keep it as a backstop set beyond our own
  timers (``handler_kwargs``), which time each phase separately and count it.
- ``max_line_size`` / ``max_field_size`` / ``max_headers`` bound the *size* of a head (400
  beyond), not the time it takes; ``Application(client_max_size=...)`` bounds a body read
  with ``request.read()`` / ``json()`` / ``post()`` (``HTTPRequestEntityTooLarge``, which
  the API answers as ``413 request-too-large``), not the time it takes; after a response,
  unread body bytes are read and dropped for at most ``lingering_time`` (10 s).
- Nothing times the reading of a head or a body, and the accept loop is asyncio's. Python
  3.11's ``selector_events._accept_connection`` logs a traceback for each EMFILE and, not
  leaving its loop, retries ``accept()`` up to ``backlog`` times, each failure scheduling
  another restart a second later: the restarts multiply, every one of them logging (273,000
  tracebacks in 30 s were seen) and keeping a core busy.

What this module adds, through aiohttp's public extension points only:

- :class:`EdgeRequestHandler`, a ``web.RequestHandler`` subclass (the protocol aiohttp's
  low-level ``Server`` makes per connection) that overrides the public ``connection_made``,
  ``data_received``, ``finish_response`` and ``connection_lost``, and learns that a request
  head is complete from the low-level ``Server.request_factory`` hook (called with the
  protocol for every parsed request, bad ones included). It keeps one timer per
  connection: **idle** (keep-alive) until the first byte of a request, then **header**
  until the head is complete (not pushed back by more bytes: a client trickling one byte
  a second is closed all the same), then **body** until the body is complete. The
  handler's own work and the response are not timed here (the POP3 layer times its
  steps; streaming has its own rules).
- :class:`EdgeSite`, a ``web.BaseSite`` with its own accept loop on its own listening
  sockets: at most ``max_connections`` connections, the listener paused beyond (the
  oldest idle keep-alive connection is closed first to make room) and resumed as
  connections close; accept failures (EMFILE, ENFILE, ...) pause that listener with a
  backoff (no busy loop) and are logged at most once per ``accept_log_interval`` with a
  count of the lines left out.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from .config import ConfigError
from .metrics import Metrics

log = logging.getLogger("gateway.http")

#: the cap when none is configured and the file-descriptor limit allows it: enough for a
#: replica whose pool holds 64 POP3 sessions, small enough that open connections (read
#: buffers, parser, task) cannot take much memory
DEFAULT_MAX_CONNECTIONS = 1024
#: fewer connections than this is no server: refuse to start
MIN_CONNECTIONS = 8
#: file descriptors kept for the process itself whatever the configuration: stdin/out/err,
#: the event loop's selector and self-pipe, log files, password and token files read on
#: demand, DNS lookups, the demo server's sockets
PROCESS_FDS = 64
#: errors accept() returns when the process or system is out of descriptors or memory
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: errors that Linux accept(2) returns for a connection that died in the queue: retry now
#: (by name: ENONET, for one, is Linux only)
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: at most one log line per this many seconds about failed accepts
    accept_log_interval: float = 10.0
    #: pause after a failed accept: the first, and the most it doubles to
    accept_backoff: tuple[float, float] = (0.1, 2.0)


def fd_reserve(pop3_sessions: int, redis_connections: int, parse_workers: int = 0) -> int:
    """Descriptors kept out of the HTTP connection cap: one socket per POP3 session plus
    one more per session for what a session may hold open beside it (a spool or
    certificate file), the Redis client's connections, four per message parser (its two
    pipes, and those of one being replaced), and :data:`PROCESS_FDS`."""
    return 2 * pop3_sessions + redis_connections + 4 * parse_workers + PROCESS_FDS


def connection_cap(requested: int | None, reserve: int, nofile: int | None = None) -> int:
    """The connection cap under the soft ``RLIMIT_NOFILE`` (read now unless given), less
    ``reserve``; :class:`ConfigError` when it cannot hold."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if nofile is None else nofile
    if soft == resource.RLIM_INFINITY or soft > 1 << 24:
        soft = 1 << 24
    room = soft - reserve
    if room < MIN_CONNECTIONS:
        raise ConfigError(
            f"invalid configuration:\n  http.max_connections: the file-descriptor limit "
            f"(ulimit -n) is {soft}; {reserve} are kept for POP3 sessions (pool.max_total), "
            f"Redis and files, which leaves {max(room, 0)} for HTTP connections (at least "
            f"{MIN_CONNECTIONS} needed): raise the limit or lower pool.max_total"
        )
    if requested is None:
        return min(DEFAULT_MAX_CONNECTIONS, room)
    if requested > room:
        raise ConfigError(
            f"invalid configuration:\n  http.max_connections: {requested} is more than the "
            f"file-descriptor limit allows: {soft} (ulimit -n) less {reserve} kept for POP3 "
            f"sessions, Redis and files = {room}; lower it or raise the limit"
        )
    return requested


def handler_kwargs(
    limits: EdgeLimits, *, access_log_class: Any, access_log: logging.Logger
) -> dict[str, Any]:
    """What each connection's ``RequestHandler`` is made with (also given to ``AppRunner``,
    whose ``Server`` would make them the same way)."""
    return {
        # aiohttp's own keep-alive timer is a backstop only: ours fire first (idle, then
        # header), and count what they close
        "keepalive_timeout": limits.keepalive_timeout + limits.header_timeout + 1,
        # unread body bytes after a response are drained at most this long
        "lingering_time": min(10.0, limits.body_timeout),
        "access_log_class": access_log_class,
        "access_log": access_log,
    }


class RateLimitedLog:
    """At most one line per ``interval`` seconds; the next one says how many were left
    out."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar lines left out in the last %.0f s)"
            args = (*args, self._suppressed, now - (self._last or now))
        self._logger.warning(message, *args)
        self._last = now
        self._suppressed = 0

    def flush(self) -> None:
        """Say how many lines were left out since the last one (at shutdown)."""
        if self._suppressed:
            self._logger.warning("%d more similar lines left out", self._suppressed)
            self._suppressed = 0


class _Slot:
    """One accepted connection's place under the cap; released exactly once."""

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.released()


class ConnectionGate:
    """Counts the connections of every listener of a site against the cap."""

    def __init__(self, limits: EdgeLimits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        self.paused = False
        self.listeners: list[Listener] = []
        #: idle keep-alive connections, oldest first (a dict keeps insertion order)
        self._idle: dict[EdgeRequestHandler, None] = {}
        #: idle connections closed to make room, not yet gone
        self._reclaiming = 0
        #: every connection's transport while it lives (what is still unsent at exit is
        #: waited for: see ``gateway.__main__``); kept per connection, not per response
        self.transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()
        self.accept_log = RateLimitedLog(log, limits.accept_log_interval)
        self._cap_log = RateLimitedLog(log, limits.accept_log_interval)
        self.malformed_log = RateLimitedLog(log, limits.accept_log_interval)

    def stats(self) -> tuple[int, int]:
        return self.open, self.limits.max_connections

    def take(self) -> _Slot | None:
        """A slot for one more connection, or None (and the listeners paused) at the cap."""
        if self.open < self.limits.max_connections:
            self.open += 1
            return _Slot(self)
        if not self.paused:
            self.paused = True
            self.metrics.accept_paused("max_connections")
            self._cap_log.warning(
                "%d HTTP connections open, the most allowed (http.max_connections): not "
                "accepting more until some close",
                self.open,
            )
            self._update_listeners()
        return None

    def released(self) -> None:
        self.open -= 1
        self._reclaiming = max(0, self._reclaiming - 1)
        if self.paused and self.open < self.limits.max_connections:
            self.paused = False
            self._update_listeners()

    def accepting(self) -> bool:
        """Whether listeners should watch for connections: below the cap, or at it while an
        idle connection could make room (and none is already closing for that)."""
        return not self.paused or (bool(self._idle) and not self._reclaiming)

    def idle(self, handler: EdgeRequestHandler, idle: bool) -> None:
        if idle:
            self._idle[handler] = None
        elif self._idle.pop(handler, False) is False:
            return
        if self.paused:
            self._update_listeners()

    def make_room(self) -> None:
        """Someone waits to connect (the listener is readable) at the cap: close the oldest
        idle keep-alive connection, if any (RFC 9112 9.6: a server may close an idle
        connection at any time; clients retry). Its slot lets the waiting one in."""
        if not self._idle or self._reclaiming:
            return
        handler = next(iter(self._idle))
        del self._idle[handler]
        self._reclaiming += 1
        self.metrics.connection_reclaimed()
        handler.force_close()
        self._update_listeners()

    def _update_listeners(self) -> None:
        for listener in self.listeners:
            listener.update()


_IDLE, _HEAD, _BUSY = "keepalive", "header", "body"
#: A timer may run a hair before its time (the loop's clock resolution): within this of the
#: deadline, it counts as passed.
_TIMER_SLACK = 0.001


class EdgeRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with the edge's timers (see the module doc)."""

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        gate: ConnectionGate,
        slot: _Slot,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._edge_gate = gate
        self._edge_slot = slot
        #: fires at or before ``_edge_deadline``; when the deadline moved later meanwhile, it
        #: is set again for it (see :meth:`_arm`)
        self._edge_timer: asyncio.TimerHandle | None = None
        #: when the current phase's timeout passes (None: the phase is not timed)
        self._edge_deadline: float | None = None
        self._edge_phase = _IDLE
        #: counts requests, so that a late end-of-body callback of an earlier one is ignored
        self._edge_request = 0
        self._edge_body_done = True
        self._edge_responded = False
        #: bytes of a next request arrived while this one was being answered (pipelining)
        self._edge_early = False
        self._edge_gone = False

    # -- aiohttp's protocol methods -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.Transport):
            self._edge_gate.transports.add(transport)
        self._enter(_IDLE)

    def data_received(self, data: bytes) -> None:
        if data and not self._edge_gone:
            if self._edge_phase == _IDLE:
                # Armed after parsing: a whole head in this read (the common case) moves
                # on to the next phase at once, and no timer is set for this one.
                self._enter(_HEAD, arm=False)
            elif self._edge_body_done:
                self._edge_early = True
        try:
            super().data_received(data)
        finally:
            self._arm()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # aiohttp calls this once per request, after the handler, to send the response
        result = await super().finish_response(request, resp, start_time)
        self._edge_responded = True
        if self._edge_body_done:
            self._after_response()
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._edge_gone = True
            self._edge_deadline = None
            self._cancel_timer()
            self._edge_gate.idle(self, False)
            self._edge_slot.release()
        finally:
            super().connection_lost(exc)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp logs every request its parser refuses (a NUL in a header, a line too
        long...) as an error with a traceback: anyone could fill the logs with them. Those
        are counted instead, and logged at most once per interval, without their content
        (which may hold a credential); any other exception is logged as before."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            kind = type(exc).__name__
            self._edge_gate.metrics.http_malformed(kind)
            self._edge_gate.malformed_log.warning("refused a malformed HTTP request (%s)", kind)
            return
        if isinstance(exc, ConnectionError):
            # A transfer its client stopped reading or dropped: the API logged it once
            # ("stream aborted") and counted it; aiohttp's error traceback would be a
            # second line, an error one, that any client could cause at will.
            log.debug("a response ended with its connection: %s", type(exc).__name__)
            return
        super().log_exception(*args, **kwargs)

    # -- the edge's own ---------------------------------------------------------------------

    def request_started(self, payload: StreamReader) -> None:
        """A request head is complete (called from the request factory)."""
        if self._edge_gone:
            return
        self._edge_request += 1
        self._edge_responded = False
        self._edge_early = False
        self._edge_body_done = payload.is_eof()
        self._enter(_BUSY)
        if not self._edge_body_done:
            request = self._edge_request
            payload.on_eof(lambda: self._body_complete(request))

    def _body_complete(self, request: int) -> None:
        if request != self._edge_request or self._edge_gone:
            return
        self._edge_body_done = True
        self._edge_deadline = None  # the handler's work and the response are not timed here
        if self._edge_responded:
            self._after_response()

    def _after_response(self) -> None:
        if not self._edge_gone:
            self._enter(_HEAD if self._edge_early else _IDLE)

    def _enter(self, phase: str, *, arm: bool = True) -> None:
        """Start ``phase``: its timeout runs from now (see the module doc).

        Timers are not set and cancelled phase by phase (three times per request): only the
        deadline moves, and one timer per connection fires by it, set again when it fires
        early (the deadline moved later) and replaced only when a deadline comes sooner
        than it. A keep-alive connection sets about one timer per keep-alive timeout, not
        two per request."""
        self._edge_phase = phase
        limits = self._edge_gate.limits
        timeout = None
        if phase == _IDLE:
            timeout = limits.keepalive_timeout
        elif phase == _HEAD:
            timeout = limits.header_timeout
        elif not self._edge_body_done:
            timeout = limits.body_timeout
        # else: the handler's work and the response are not timed here
        self._edge_deadline = None if timeout is None else self._loop.time() + timeout
        if arm:
            self._arm()
        self._edge_gate.idle(self, phase == _IDLE)  # last: it may close this connection

    def _arm(self) -> None:
        """Make sure the timer fires by the deadline, if there is one."""
        deadline = self._edge_deadline
        if deadline is None or self._edge_gone:
            return
        timer = self._edge_timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._edge_timer = self._loop.call_at(deadline, self._tick)

    def _cancel_timer(self) -> None:
        if self._edge_timer is not None:
            self._edge_timer.cancel()
            self._edge_timer = None

    def _tick(self) -> None:
        self._edge_timer = None
        deadline = self._edge_deadline
        if deadline is None or self._edge_gone:
            return
        if deadline - self._loop.time() > _TIMER_SLACK:
            self._arm()  # the deadline moved later since the timer was set
            return
        self._expired(self._edge_phase)

    def _expired(self, phase: str) -> None:
        self._edge_deadline = None
        if self._edge_gone:
            return
        self._edge_gate.metrics.http_timeout(phase)
        log.debug("closing an HTTP connection: %s timeout", phase)
        self.force_close()


class _ObservedRequestFactory:
    """Wraps ``Server.request_factory`` to tell our protocol that a head is complete."""

    def __init__(self, factory: Callable[..., web.BaseRequest]) -> None:
        self.factory = factory

    def __call__(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if isinstance(protocol, EdgeRequestHandler):
            protocol.request_started(payload)
        return self.factory(message, payload, protocol, writer, task)


class Listener:
    """One listening socket and its accept loop."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[_Slot], asyncio.Protocol],
        gate: ConnectionGate,
        *,
        backlog: int,
    ) -> None:
        self.sock = sock
        self._factory = protocol_factory
        self._gate = gate
        self._backlog = backlog
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._closed = False
        self._backoff: asyncio.TimerHandle | None = None
        self._delay = gate.limits.accept_backoff[0]
        self._tasks: set[asyncio.Task[None]] = set()

    def update(self) -> None:
        """Read the socket exactly when accepting is allowed."""
        want = not self._closed and self._backoff is None and self._gate.accepting()
        if want and not self._reading:
            self._loop.add_reader(self.sock.fileno(), self._accept)
        elif self._reading and not want:
            self._loop.remove_reader(self.sock.fileno())
        self._reading = want

    def close(self) -> None:
        self._closed = True
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        self.update()
        self.sock.close()

    def _accept(self) -> None:
        # bounded: at most `backlog` connections per wake-up, then the loop runs others
        for attempt in range(self._backlog):
            if self._closed:
                return
            slot = self._gate.take()
            if slot is None:
                if attempt == 0:
                    # woken with no room: someone is waiting (after an accept in this
                    # wake-up we do not know; if someone is, we are woken again)
                    self._gate.make_room()
                return
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                slot.release()
                return
            except OSError as exc:
                slot.release()
                if exc.errno in _CONNECTION_ERRORS:
                    continue  # that connection died in the queue; the next may be fine
                self._failed(exc)
                return
            self._delay = self._gate.limits.accept_backoff[0]
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn, slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, slot: _Slot) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: self._factory(slot), conn)
        except Exception as exc:
            conn.close()
            slot.release()
            self._gate.accept_log.warning("could not set up an HTTP connection: %s", exc)

    def _failed(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "unknown")
        gate = self._gate
        gate.metrics.accept_failed(name)
        reason = "fd_exhausted" if exc.errno in _RESOURCE_ERRORS else "accept_error"
        gate.metrics.accept_paused(reason)
        delay = self._delay
        self._delay = min(delay * 2, gate.limits.accept_backoff[1])
        gate.accept_log.warning(
            "accepting HTTP connections failed: %s (%s); pausing the listener for %.1f s",
            exc.strerror or exc,
            name,
            delay,
        )
        self._backoff = self._loop.call_later(delay, self._resume)
        self.update()

    def _resume(self) -> None:
        self._backoff = None
        self.update()


class EdgeSite(web.BaseSite):
    """A TCP site whose connections are capped and timed (see the module doc)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: EdgeLimits,
        metrics: Metrics,
        handler_kwargs: Mapping[str, Any],
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._edge_runner = runner
        self._host = host
        self._port = port
        self._edge_backlog = backlog
        self._handler_kwargs = dict(handler_kwargs)
        self.gate = ConnectionGate(limits, metrics)
        self.listeners: list[Listener] = []
        metrics.watch_http_connections(self.gate.stats)

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one until started: 0 picks a free one)."""
        if self.listeners:
            port: int = self.listeners[0].sock.getsockname()[1]
            return port
        return self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._edge_runner.server
        assert server is not None  # BaseSite.__init__ checked that the runner is set up
        if not isinstance(server.request_factory, _ObservedRequestFactory):
            server.request_factory = _ObservedRequestFactory(server.request_factory)
        kwargs = self._handler_kwargs
        gate = self.gate

        def protocol(slot: _Slot) -> asyncio.Protocol:
            return EdgeRequestHandler(server, loop=loop, gate=gate, slot=slot, **kwargs)

        for sock in await self._bind(loop):
            listener = Listener(sock, protocol, gate, backlog=self._edge_backlog)
            self.listeners.append(listener)
            gate.listeners.append(listener)
            listener.update()

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> list[socket.socket]:
        infos = await loop.getaddrinfo(
            self._host or None, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        seen: set[tuple[int, Any]] = set()
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"cannot listen on {self._host}:{self._port}: {exc.strerror}"
                    ) from None
                sock.listen(self._edge_backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.gate.accept_log.flush()
        await super().stop()
