"""A pool of logged-in POP3 sessions, keyed by mailbox (standard library only).

.. code-block:: python

    pool = SessionPool(PoolLimits(max_per_upstream=4))
    async with pool.lease(key, "example", open_and_login) as session:
        uids = await session.client.uidl()
    await pool.close()

The pool knows nothing of accounts: a *key* is an opaque string naming one maildrop (same key,
same mailbox and credentials), an *upstream* names the server it lives on (for the
per-server cap), and the *factory* connects and logs in.

How it works:

- Bookkeeping is synchronous. The pool runs on one event loop, and every change to its state
  (counters, idle lists, the wait queue) happens between two ``await`` points, so no lock is
  needed and none is ever held while connecting, logging in, sending NOOP or QUIT. A lease
  reserves its slot first (counted against every cap), then runs the factory outside of any
  critical section; a failure or a cancellation gives the slot back.
- A slot stays counted until its connection is really gone: a session being QUIT still holds
  its key's slot, so a new login never races the old session's maildrop lock.
- Every lease waits in one FIFO queue; :meth:`SessionPool._dispatch` serves it whenever
  something changes (a lease arrives, a session comes back, a slot frees, a close ends): first
  idle sessions go to the earliest waiter for their key, then free slots go to waiters in
  arrival order. When a waiter is blocked by the per-upstream or the global cap (not by its
  own key's cap), the least recently used idle session of another key is QUIT in the
  background to make room. Fair share per upstream: while a key that holds no session
  waits for an upstream at its cap, keys that hold one there get no other (their idle
  session included), whatever the order of arrival; so one busy mailbox cannot keep the
  others of its server waiting. Waiting is bounded by ``acquire_timeout``; a timer, not a
  cancellation, ends the wait, so a slot handed over at the last moment is never lost.
- Reuse grace: a session given back stays its key's for ``reuse_grace`` seconds (it is not
  closed for another key, and its key's next lease gets it even while another key waits
  with none): a client that lists and then reads a message logs in once, not twice.
- Freshness: POP3 shows the maildrop as of login, so an idle session is reused only while it
  is younger than ``snapshot_max_age`` (and ``max_session_age``), and never once the
  credential it logged in with has expired (``POP3Client.valid_for``). ``fresh=True`` always opens
  a new session; an idle one for the key is QUIT first (one session per maildrop). A reused
  session idle for more than ``noop_after`` seconds is checked with NOOP first; if NOOP fails,
  a new session is opened in its place, and the caller never sees it.
- A session goes back idle only if the lease ended normally and the session is still in the
  TRANSACTION state, open, holds no DELE marks, was not discarded and is young enough to be
  reused (a clean session that is too old is QUIT in the background). Anything else (an
  exception or a cancellation in the block, DELE marks, a discarded or broken session) drops
  the connection without QUIT, so marked deletions are rolled back by the server. A session
  the caller QUIT itself is forgotten.
- ``[IN-USE]`` and ``[LOGIN-DELAY]`` from the factory are retried with exponential backoff
  and jitter within ``retry_budget`` seconds, then re-raised.
- A reaper task (started with the first lease) QUITs idle sessions that are idle too long or
  too old to be reused, a bounded batch per tick.

Ages are measured with the injectable ``clock`` (monotonic seconds); waiting, backoff and the
reaper's tick use the event loop's own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from .client import POP3Client, State
from .errors import POP3Error, POP3InUseError, POP3LoginDelayError, POP3StateError

log = logging.getLogger("gateway.pop3.pool")

SessionFactory = Callable[[], Awaitable[POP3Client]]
_SERIALS = itertools.count(1)
_RELEASE_TASK = "pop3-pool-gate-release"


class SessionGate(Protocol):
    """Mutual exclusion on a maildrop across processes (several replicas of the gateway).

    The pool asks the gate before it opens a session and tells it when the connection is
    gone; a gate lease lives as long as the POP3 session, idle time included, because the
    server's maildrop lock does. Implementations must not raise for their own failures
    (a gate that cannot be reached lets sessions open, and says so in its logs): only
    :class:`PoolTimeoutError` from :meth:`acquire` and :class:`POP3LoginDelayError` from
    :meth:`check_login_delay` reach the caller.
    """

    async def acquire(self, lock: str, timeout: float) -> object | None:
        """Wait up to ``timeout`` seconds for ``lock``; a token to release it with."""
        ...

    async def release(self, lock: str, token: object) -> None: ...

    async def renew(self, held: Sequence[tuple[str, object]]) -> None:
        """Keep the given locks alive (called every reaper tick)."""
        ...

    async def wanted(self, locks: Sequence[str]) -> set[str]:
        """Which of these locks another process is waiting for."""
        ...

    async def check_login_delay(self, lock: str) -> None:
        """Raise :class:`POP3LoginDelayError` if a login to ``lock`` must wait (a
        ``[LOGIN-DELAY]`` seen by any process)."""
        ...

    async def note_login_delay(self, lock: str) -> None:
        """Remember, for every process, that the server answered ``[LOGIN-DELAY]``."""
        ...


class PoolTimeoutError(POP3Error, TimeoutError):
    """No session could be had within ``acquire_timeout`` (every slot stayed busy)."""

    reason: ClassVar[str] = "pool-timeout"


class PoolClosedError(POP3Error):
    """The pool is closed (or closing): no new leases."""

    reason: ClassVar[str] = "pool-closed"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Caps and timings of a :class:`SessionPool` (counts, and seconds)."""

    max_per_key: int = 1  #: sessions per maildrop: RFC 1939 servers lock it
    max_per_upstream: int = 8  #: sessions per upstream server
    max_total: int = 64  #: sessions overall
    acquire_timeout: float = 10.0  #: how long a lease may queue for a slot (not the login)
    snapshot_max_age: float = 5.0  #: an idle session older than this is not reused
    idle_timeout: float = 120.0  #: idle sessions are QUIT after this (autologout is >= 600)
    noop_after: float = 30.0  #: NOOP before reusing a session idle for longer than this
    max_session_age: float = 300.0  #: sessions older than this are closed
    retry_budget: float = 8.0  #: time spent retrying [IN-USE] / [LOGIN-DELAY] logins
    backoff_initial: float = 0.25  #: first pause between login attempts
    backoff_max: float = 2.0  #: longest pause between login attempts
    quit_timeout: float = 5.0  #: bound on a QUIT sent by the pool
    reap_interval: float = 1.0  #: how often the reaper looks at idle sessions
    reap_batch: int = 8  #: at most this many sessions closed per reaper tick
    #: a session just given back is kept this long for its key's next lease (a client that
    #: lists, then reads a message) rather than closed to make room for another key
    reuse_grace: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_per_key", "max_per_upstream", "max_total", "reap_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "acquire_timeout",
            "idle_timeout",
            "max_session_age",
            "backoff_initial",
            "quit_timeout",
            "reap_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("snapshot_max_age", "noop_after", "retry_budget", "reuse_grace"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")
        if not self.backoff_max >= self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A point-in-time view of a pool, for metrics."""

    open: int  #: connections counted against the caps (idle + leased + closing)
    idle: int  #: sessions waiting in the pool for a lease
    leased: int  #: leases granted and not yet returned (including ones still logging in)
    closing: int  #: idle sessions being QUIT by the pool
    waiting: int  #: leases queued for a slot


class PooledSession:
    """A logged-in session lent by a :class:`SessionPool`.

    ``serial`` names this login among every session the process ever opened (never reused):
    what a caller keeps about a session (its snapshot, say) is matched by it.
    ``opened_at_wall`` (UTC) and ``opened_at`` (the pool's clock) are taken
    just before the login that produced this session: the maildrop shown is at least that
    recent.
    """

    __slots__ = (
        "_discarded",
        "_ended",
        "client",
        "expires_at",
        "gate_token",
        "identity",
        "key",
        "last_used",
        "lock",
        "opened_at",
        "opened_at_wall",
        "quit_on_close",
        "serial",
        "upstream",
    )

    def __init__(
        self,
        client: POP3Client,
        *,
        key: str,
        upstream: str,
        opened_at: float,
        opened_at_wall: datetime,
        quit_on_close: bool,
        lock: str | None = None,
        gate_token: object | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.lock = lock or key
        self.gate_token = gate_token
        self.upstream = upstream
        self.opened_at = opened_at
        self.opened_at_wall = opened_at_wall
        self.last_used = opened_at
        #: when the credential it logged in with stops being good (``client.valid_for``
        #: after the login began): never reused from then on
        self.expires_at = opened_at + client.valid_for if client.valid_for is not None else None
        self.quit_on_close = quit_on_close
        self.serial = next(_SERIALS)
        #: who logged in (set by the pool from the lease that opened it)
        self.identity: str | None = None
        self._discarded = False
        self._ended = False

    def discard(self) -> None:
        """Do not return this session to the pool: it is dropped when the lease ends."""
        self._discarded = True

    @property
    def discarded(self) -> bool:
        return self._discarded

    def __repr__(self) -> str:
        return f"<PooledSession upstream={self.upstream!r} client={self.client!r}>"


class _Waiter:
    """One queued lease. Its future gets an idle session, or ``None`` for a reserved slot."""

    __slots__ = ("evicting", "future", "key", "upstream")

    def __init__(
        self, key: str, upstream: str, future: asyncio.Future[PooledSession | None]
    ) -> None:
        self.key = key
        self.upstream = upstream
        self.future = future
        self.evicting = False  #: an idle session of another key is being closed for it


class SessionPool:
    """Logged-in POP3 sessions, leased exclusively, reused while their snapshot is fresh.

    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        limits: PoolLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] | None = None,
        gate: SessionGate | None = None,
    ) -> None:
        self.limits = limits or PoolLimits()
        self._gate = gate
        self._clock = clock
        self._on_event = on_event
        self._max_age = min(self.limits.snapshot_max_age, self.limits.max_session_age)
        self._idle: dict[str, list[PooledSession]] = {}
        self._per_key: dict[str, int] = {}
        self._per_upstream: dict[str, int] = {}
        self._total = 0
        self._leases = 0
        self._closing = 0
        self._leased: set[PooledSession] = set()
        self._queue: dict[_Waiter, None] = {}  # insertion-ordered: FIFO
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self._closed = False
        #: a dispatch due when the earliest reuse grace that holds a waiter back ends
        self._grace_timer: asyncio.TimerHandle | None = None

    # -- public ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(
        self,
        key: str,
        upstream: str,
        factory: SessionFactory,
        *,
        fresh: bool = False,
        quit_on_close: bool = True,
        lock: str | None = None,
        identity: str | None = None,
    ) -> AsyncIterator[PooledSession]:
        """An exclusive session for ``key`` for the time of the block.

        ``key`` names the maildrop (the caps count per key); ``identity`` names who logs in
        to it (a user name as spelt, and a credential): an idle session of the key logged
        in under another identity is never handed over, it is ended and a new one opened
        in its place, so spellings or credentials of one maildrop share its cap without
        sharing a session. ``lock`` names the maildrop for the gate (default: ``key``).

        ``factory`` connects and logs in (it must not leak a connection when it fails).
        ``fresh`` asks for a session opened now. ``quit_on_close=False`` makes the pool drop
        the session's connection instead of sending QUIT when it ends it (for providers where
        QUIT after RETR changes the mailbox). Raises :class:`PoolTimeoutError` when no slot
        frees within ``acquire_timeout``, and the factory's errors.
        """
        session = await self._checkout(
            key, upstream, factory, fresh, quit_on_close, lock or key, identity
        )
        ok = False
        try:
            yield session
            ok = True
        finally:
            self._checkin(session, ok)

    @contextlib.asynccontextmanager
    async def lease_idle(
        self, key: str, upstream: str, *, serial: object, identity: str | None = None
    ) -> AsyncIterator[PooledSession | None]:
        """The idle session of ``key`` whose login is ``serial`` (and logged in as
        ``identity``), for the time of the block, when it is idle now, fit for reuse without
        a NOOP, and no lease waits that it could serve or make room for; else ``None``.
        Nothing is opened and nothing is waited for: this is for optional work with a
        session already open (reading ahead what its snapshot will be asked for)."""
        session = self._idle_session(key, upstream, serial, identity)
        if session is None:
            yield None
            return
        ok = False
        try:
            yield session
            ok = True
        finally:
            self._checkin(session, ok)

    def _idle_session(
        self, key: str, upstream: str, serial: object, identity: str | None
    ) -> PooledSession | None:
        if self._closed or self.wanted(key, upstream):
            return None
        now = self._clock()
        for session in self._idle.get(key, ()):
            if (
                session.serial == serial
                and session.identity == identity
                and self._reusable(session, now)
                and now - session.last_used <= self.limits.noop_after
            ):
                self._take_idle(session)
                self._leases += 1
                self._leased.add(session)
                self._emit("reuse")
                return session
        return None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (no new leases)."""
        return self._closed

    def wanted(self, key: str, upstream: str) -> bool:
        """Whether a lease waits that a session of ``key`` on ``upstream`` could serve (one
        for the same key) or make room for (one held back by the upstream's or the global
        cap): optional work with that session had better not keep it now."""
        limits = self.limits
        for waiter in self._queue:
            if waiter.key == key:
                return True
            if self._total >= limits.max_total:
                return True
            if (
                waiter.upstream == upstream
                and self._per_upstream.get(upstream, 0) >= limits.max_per_upstream
            ):
                return True
        return False

    def stats(self) -> PoolStats:
        return PoolStats(
            open=self._total,
            idle=sum(len(sessions) for sessions in self._idle.values()),
            leased=self._leases,
            closing=self._closing,
            waiting=len(self._queue),
        )

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop leasing; QUIT idle sessions (they hold no DELE marks); wait up to ``timeout``
        seconds for leases to end, then drop every connection left. Queued leases fail with
        :class:`PoolClosedError`; leases that end meanwhile are ended, not pooled."""
        if self._closed:
            return
        self._closed = True
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        for waiter in list(self._queue):
            del self._queue[waiter]
            if not waiter.future.done():
                waiter.future.set_exception(PoolClosedError("the session pool is closed"))
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait([self._reaper])
        for sessions in list(self._idle.values()):
            for session in list(sessions):
                self._take_idle(session)
                self._retire_in_background(session)
        if self._total:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
        for session in list(self._leased):
            self._drop(session)
        # Gate releases free the maildrop for other replicas at once instead of after the
        # lock's TTL: give them a moment (they are one round trip to the gate).
        releases = {t for t in self._tasks if t.get_name() == _RELEASE_TASK}
        if releases:
            await asyncio.wait(releases, timeout=1.0)
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- leasing -----------------------------------------------------------------------------
    async def _checkout(
        self,
        key: str,
        upstream: str,
        factory: SessionFactory,
        fresh: bool,
        quit_on_close: bool,
        lock: str,
        identity: str | None,
    ) -> PooledSession:
        if self._closed:
            raise PoolClosedError("the session pool is closed")
        self._start_reaper()
        granted = await self._wait_turn(key, upstream)
        # From here this lease owns one slot of (key, upstream) until _checkin.
        self._leases += 1
        try:
            if granted is not None and await self._reuse(granted, fresh, identity):
                self._leased.add(granted)
                return granted
            session = await self._open(key, upstream, factory, quit_on_close, lock)
            session.identity = identity
        except BaseException:
            self._leases -= 1
            self._release(key, upstream)
            raise
        self._leased.add(session)
        return session

    def _checkin(self, session: PooledSession, ok: bool) -> None:
        """Take a session back when its lease ends (synchronous: cancellation-proof)."""
        self._leases -= 1
        self._leased.discard(session)
        if ok and self._clean(session):
            now = self._clock()
            if not self._closed and self._young(session, now):
                session.last_used = now
                self._idle.setdefault(session.key, []).append(session)
                self._dispatch()
            else:  # too old to be reused, or the pool is closing: QUIT it
                self._retire_in_background(session)
            return
        self._drop(session)
        self._release(session.key, session.upstream)

    async def _reuse(self, session: PooledSession, fresh: bool, identity: str | None) -> bool:
        """Whether an idle session handed to a lease can serve it; if not, it is ended (its
        slot is kept for the new session)."""
        try:
            now = self._clock()
            if fresh or session.identity != identity or not self._reusable(session, now):
                await self._end(session)
                return False
            if now - session.last_used > self.limits.noop_after:
                try:
                    await session.client.noop()
                except POP3Error:
                    self._emit("noop_failed")
                    self._drop(session)
                    return False
        except BaseException:
            self._drop(session)
            raise
        self._emit("reuse")
        return True

    @staticmethod
    def _clean(session: PooledSession) -> bool:
        """Open, logged in, no DELE marks, not discarded: safe to keep or to QUIT."""
        client = session.client
        return (
            not session.discarded
            and client.state is State.TRANSACTION
            and client.deleted_marks == 0
        )

    def _young(self, session: PooledSession, now: float) -> bool:
        """Young enough to be reused: within the snapshot age, and before the credential it
        logged in with expires (an OAuth token: Gmail ends the session when it does)."""
        return now - session.opened_at <= self._max_age and (
            session.expires_at is None or now < session.expires_at
        )

    def _reusable(self, session: PooledSession, now: float) -> bool:
        return self._clean(session) and self._young(session, now)

    async def _open(
        self,
        key: str,
        upstream: str,
        factory: SessionFactory,
        quit_on_close: bool,
        lock: str,
    ) -> PooledSession:
        """Take the gate (other processes), then run the factory; retry [IN-USE] and
        [LOGIN-DELAY] with backoff within the budget."""
        token = None
        if self._gate is not None:
            await self._gate.check_login_delay(lock)
            token = await self._gate.acquire(lock, self.limits.acquire_timeout)
        try:
            client, opened_at, opened_at_wall = await self._login(factory, lock)
        except BaseException:
            self._release_gate(lock, token)
            raise
        return self._opened(
            client, key, upstream, opened_at, opened_at_wall, quit_on_close, lock, token
        )

    async def _login(
        self, factory: SessionFactory, lock: str
    ) -> tuple[POP3Client, float, datetime]:
        limits = self.limits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.retry_budget
        delay = limits.backoff_initial
        while True:
            opened_at = self._clock()
            opened_at_wall = datetime.now(UTC)
            try:
                client = await factory()
            except (POP3InUseError, POP3LoginDelayError) as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if isinstance(exc, POP3LoginDelayError) and self._gate is not None:
                        await self._gate.note_login_delay(lock)
                    raise
                self._emit("retry")
                pause = delay / 2 + random.uniform(0, delay / 2)
                await asyncio.sleep(min(pause, remaining))
                delay = min(delay * 2, limits.backoff_max)
                continue
            return client, opened_at, opened_at_wall

    def _opened(
        self,
        client: POP3Client,
        key: str,
        upstream: str,
        opened_at: float,
        opened_at_wall: datetime,
        quit_on_close: bool,
        lock: str,
        token: object | None,
    ) -> PooledSession:
        if client.state is not State.TRANSACTION:
            client.abort()
            self._release_gate(lock, token)
            raise POP3StateError("the session factory returned a client that is not logged in")
        session = PooledSession(
            client,
            key=key,
            upstream=upstream,
            opened_at=opened_at,
            opened_at_wall=opened_at_wall,
            quit_on_close=quit_on_close,
            lock=lock,
            gate_token=token,
        )
        self._emit("open")
        if self._closed:
            self._drop(session)
            raise PoolClosedError("the session pool closed while the session was opening")
        return session

    # -- waiting -----------------------------------------------------------------------------
    async def _wait_turn(self, key: str, upstream: str) -> PooledSession | None:
        """Queue, and wait for an idle session of ``key`` or a reserved slot."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(key, upstream, loop.create_future())
        self._queue[waiter] = None
        self._dispatch()
        if waiter.future.done():
            return waiter.future.result()
        timer = loop.call_later(self.limits.acquire_timeout, self._expire, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():  # pragma: no cover - granted in the same loop iteration
            return
        self._queue.pop(waiter, None)
        self._emit("timeout")
        waiter.future.set_exception(
            PoolTimeoutError(f"no POP3 session was free within {self.limits.acquire_timeout:g} s")
        )

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter was cancelled: give back what it may have been handed meanwhile."""
        self._queue.pop(waiter, None)
        future = waiter.future  # done: cancelling the task cancelled it, unless it was granted
        if future.cancelled() or future.exception() is not None:
            return
        granted = future.result()
        if granted is None:
            self._release(waiter.key, waiter.upstream)
        else:
            self._idle.setdefault(granted.key, []).append(granted)
            self._dispatch()

    def _dispatch(self) -> None:
        """Serve the queue with what is free now; start evictions where they help.

        Fair share: on an upstream at its cap, a key that holds no session and waits goes
        before every key that holds one (idle or leased), whatever the order of arrival; a
        key never gets a second session, nor keeps its idle one for its next lease, while
        another key waits for that upstream with none."""
        if self._closed or not self._queue:
            return
        limits = self.limits
        for waiter in list(self._queue):
            if waiter.future.done():  # cancelled, not yet abandoned
                del self._queue[waiter]
        starved = self._starved()
        now = self._clock()
        # 1. An idle session goes to the earliest waiter for its key (unless its upstream is
        #    starved and its reuse grace is over: then it is closed below for the key that
        #    holds none).
        for waiter in list(self._queue):
            idle = self._idle.get(waiter.key)
            if idle and (waiter.upstream not in starved or self._in_grace(idle[-1], now)):
                session = idle.pop()
                if not idle:
                    del self._idle[waiter.key]
                self._grant(waiter, session)
        # 2. Free slots go to waiters in arrival order: first to keys that hold no session,
        #    then to the others, unless a key holding none still waits for their upstream.
        #    A waiter blocked by the upstream or the global cap has an idle session of
        #    another key closed for it (one at a time).
        blocked: dict[str, int] = {}
        waiting_empty: set[str] = set()
        for first_pass in (True, False):
            if not first_pass:
                waiting_empty = {w.upstream for w in self._queue if not self._per_key.get(w.key, 0)}
            for waiter in list(self._queue):
                key, upstream = waiter.key, waiter.upstream
                held = self._per_key.get(key, 0)
                if first_pass == bool(held) or upstream in waiting_empty:
                    continue
                if held + blocked.get(key, 0) >= limits.max_per_key:
                    continue
                upstream_full = self._per_upstream.get(upstream, 0) >= limits.max_per_upstream
                if not upstream_full and self._total < limits.max_total:
                    self._reserve(key, upstream)
                    self._grant(waiter, None)
                    continue
                blocked[key] = blocked.get(key, 0) + 1
                if not waiter.evicting:
                    victim = self._victim(upstream if upstream_full else None, now)
                    if victim is not None:
                        waiter.evicting = True
                        self._take_idle(victim)
                        self._retire_in_background(victim, waiter)

    def _starved(self) -> set[str]:
        """Upstreams at their cap for which a key holding no session waits."""
        cap = self.limits.max_per_upstream
        return {
            waiter.upstream
            for waiter in self._queue
            if not self._per_key.get(waiter.key, 0)
            and self._per_upstream.get(waiter.upstream, 0) >= cap
        }

    def _grant(self, waiter: _Waiter, granted: PooledSession | None) -> None:
        del self._queue[waiter]
        waiter.future.set_result(granted)

    def _victim(self, upstream: str | None, now: float) -> PooledSession | None:
        """The least recently used idle session (of ``upstream`` when given) past its reuse
        grace; when only sessions in their grace are left, a dispatch is due as the first
        grace ends."""
        candidates = [
            session
            for sessions in self._idle.values()
            for session in sessions
            if upstream is None or session.upstream == upstream
        ]
        victim = min(candidates, key=lambda s: s.last_used, default=None)
        if victim is None or not self._in_grace(victim, now):
            return victim
        self._dispatch_after(self.limits.reuse_grace - (now - victim.last_used))
        return None

    def _in_grace(self, session: PooledSession, now: float) -> bool:
        return now - session.last_used < self.limits.reuse_grace

    def _dispatch_after(self, delay: float) -> None:
        if self._grace_timer is not None:
            return  # one is due already, no later than this one
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._grace_timer = None
            self._dispatch()

        self._grace_timer = loop.call_later(max(delay, 0.001), due)

    # -- slots ---------------------------------------------------------------------------------
    def _reserve(self, key: str, upstream: str) -> None:
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._per_upstream[upstream] = self._per_upstream.get(upstream, 0) + 1
        self._total += 1

    def _release(self, key: str, upstream: str, heir: _Waiter | None = None) -> None:
        """Give a slot back; to ``heir`` first (the waiter it was evicted for) if it fits."""
        for counts, name in ((self._per_key, key), (self._per_upstream, upstream)):
            left = counts[name] - 1
            if left:
                counts[name] = left
            else:
                del counts[name]
        self._total -= 1
        if self._total == 0 and self._drained is not None:
            self._drained.set()
        if heir is not None and heir in self._queue and self._fits(heir.key, heir.upstream):
            self._reserve(heir.key, heir.upstream)
            self._grant(heir, None)
        self._dispatch()

    def _fits(self, key: str, upstream: str) -> bool:
        limits = self.limits
        return (
            self._per_key.get(key, 0) < limits.max_per_key
            and self._per_upstream.get(upstream, 0) < limits.max_per_upstream
            and self._total < limits.max_total
        )

    def _take_idle(self, session: PooledSession) -> None:
        sessions = self._idle[session.key]
        sessions.remove(session)
        if not sessions:
            del self._idle[session.key]

    # -- ending sessions ---------------------------------------------------------------------
    def _drop(self, session: PooledSession) -> None:
        """Close the connection without QUIT (idempotent); DELE marks are rolled back."""
        if session._ended:
            return
        session._ended = True
        session.client.abort()
        self._emit("close")
        self._release_gate(session.lock, session.gate_token)
        session.gate_token = None

    def _release_gate(self, lock: str, token: object | None) -> None:
        """Give the maildrop back to other processes once the connection is gone."""
        if self._gate is None or token is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - dropped outside the loop: the TTL frees it
            return
        task = loop.create_task(self._gate.release(lock, token), name=_RELEASE_TASK)
        self._tasks.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A gate must not raise (its TTL frees the lock anyway): say so, never lose it.
            log.error("releasing a replica lock failed", exc_info=task.exception())

    async def _end(self, session: PooledSession) -> None:
        """QUIT a clean session (bounded by ``quit_timeout``); drop anything else."""
        try:
            client = session.client
            if (
                session.quit_on_close
                and client.state is State.TRANSACTION
                and client.deleted_marks == 0
            ):
                with contextlib.suppress(POP3Error, OSError, TimeoutError):
                    async with asyncio.timeout(self.limits.quit_timeout):
                        await client.quit()
        finally:
            self._drop(session)

    def _retire_in_background(
        self, session: PooledSession, waiter: _Waiter | None = None
    ) -> asyncio.Task[None]:
        """End a session (no longer idle nor leased) in a task; its slot is held until the
        connection is gone, so a new login never races the old session's maildrop lock.

        The bookkeeping runs in a done callback, so it happens even if the task is cancelled
        before it starts.
        """
        self._closing += 1
        task = asyncio.get_running_loop().create_task(self._end(session))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._retired, session, waiter))
        return task

    def _retired(
        self, session: PooledSession, waiter: _Waiter | None, task: asyncio.Task[None]
    ) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover
            log.error("ending a pooled POP3 session failed", exc_info=task.exception())
        self._drop(session)
        self._closing -= 1
        if waiter is not None:
            waiter.evicting = False
        # The slot goes to the waiter it was freed for, not to whoever queued first.
        self._release(session.key, session.upstream, waiter)

    # -- reaper ------------------------------------------------------------------------------
    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap_forever(), name="pop3-pool-reaper"
            )

    async def _reap_forever(self) -> None:
        """The reaper's loop, supervised: a failed tick is logged and counted, and the next
        one comes as usual (idle cleanup and gate renewal must never stop for good)."""
        while True:
            await asyncio.sleep(self.limits.reap_interval)
            try:
                await self._reap_once()
            except Exception:
                self._emit("reaper_error")
                log.exception("a tick of the session pool's reaper failed; it goes on")

    async def _reap_once(self) -> None:
        """QUIT up to ``reap_batch`` idle sessions that are idle too long, too old to be
        reused, already disconnected, or wanted by another process; the longest idle first.

        The gate is tended first (network round trips, during which leases come and go);
        the idle sessions to end are chosen after the last ``await``, from what is idle then,
        so a session leased meanwhile is never taken from its lease."""
        wanted: set[str] = set()
        if self._gate is not None:
            try:
                wanted = await self._tend_gate()
            except Exception:  # a gate must not raise; if it does, idle cleanup goes on
                self._emit("reaper_error")
                log.exception("tending the replica gate failed; reaping idle sessions anyway")
        now = self._clock()
        expired = [
            session
            for sessions in self._idle.values()
            for session in sessions
            if self._expired(session, now) or session.lock in wanted
        ]
        expired.sort(key=lambda s: s.last_used)
        tasks = []
        for session in expired[: self.limits.reap_batch]:
            self._take_idle(session)
            tasks.append(self._retire_in_background(session))
        if tasks:
            await asyncio.wait(tasks)

    def _expired(self, session: PooledSession, now: float) -> bool:
        return (
            now - session.last_used > self.limits.idle_timeout
            or not self._young(session, now)
            or session.client.state is not State.TRANSACTION
        )

    async def _tend_gate(self) -> set[str]:
        """Keep the gate leases of live sessions alive; the locks of idle sessions that
        another process is waiting for (they would otherwise hold the maildrop until they
        expire)."""
        assert self._gate is not None
        live = [
            *(s for sessions in self._idle.values() for s in sessions),
            *self._leased,
        ]
        held = [(s.lock, s.gate_token) for s in live if s.gate_token is not None]
        if held:
            await self._gate.renew(held)
        # Read again: the renewal was a round trip.
        idle = [s.lock for sessions in self._idle.values() for s in sessions]
        if not idle:
            return set()
        return await self._gate.wanted(idle)

    # -- events ------------------------------------------------------------------------------
    def _emit(self, kind: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind)
        except Exception:
            log.exception("the pool's event observer failed on %r", kind)
