"""Opening POP3 sessions for accounts, and lending them to one request at a time.

:class:`SessionOpener` connects and logs in (with the login throttle and the login
metrics); :class:`PooledSessions` lends sessions from the POP3 pool, keyed so that a
changed credential never reuses a session of the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from ..accounts import Account, KnownServers
from ..pop3 import POP3Client, POP3Error, SessionPool, State
from .errors import LoginRateLimitedError, LoginThrottledError, failure_reason
from .limits import LoginRations, LoginThrottle

#: Login outcomes that are metric labels of their own; every other failure is ``other``.
_LOGIN_OUTCOMES = frozenset({"auth", "in-use", "login-delay", "tls", "timeout", "unreachable"})
#: Failure reasons that mean "cannot reach the server" for the login metric.
_UNREACHABLE = frozenset({"unreachable", "outcome-unknown"})


class Session:
    """A logged-in POP3 session lent to one request.

    ``opened_at`` (UTC) is when it logged in: POP3 shows the maildrop as it was then;
    ``born`` is the same moment on the monotonic clock (snapshot ages are measured from it).
    ``login`` names the login itself, never reused: what was read in it (its snapshot) is
    reused by the next lease of the same session, and only by that.
    """

    __slots__ = ("account", "born", "client", "login", "opened_at")

    def __init__(
        self,
        client: POP3Client,
        account: Account,
        *,
        login: object,
        opened_at: datetime | None = None,
        born: float | None = None,
    ) -> None:
        self.client = client
        self.account = account
        self.login = login
        self.opened_at = opened_at or datetime.now(UTC)
        self.born = time.monotonic() if born is None else born


#: How a session is connected and logged in, when a caller does it its own way (the
#: account check times each step); it must not leak the connection when it fails.
ConnectAndLogin = Callable[[], Awaitable[POP3Client]]


class SessionSource(Protocol):
    """Where sessions come from (a pool, or a test's own)."""

    def lease(
        self, account: Account, *, fresh: bool = False, how: ConnectAndLogin | None = None
    ) -> contextlib.AbstractAsyncContextManager[Session]:
        """A session for ``account`` for the time of the block. ``fresh`` asks for a session
        opened now (new mail is visible only in a new session); ``how`` replaces the usual
        connect and login of a new session (limits and metrics apply all the same). An
        exception in the block drops the session without QUIT; a session the block closed
        is not reused."""
        ...

    def wanted(self, account: Account) -> bool:
        """Whether a lease is waiting that ``account``'s session could serve or make room
        for (optional work with it, such as a read-ahead, is then left out)."""
        ...

    def lease_idle(
        self, account: Account, login: object
    ) -> contextlib.AbstractAsyncContextManager[Session | None]:
        """The session of ``login`` for the time of the block if it is idle now and wanted
        by no other lease, else None: never a new login, never a wait (for optional work,
        such as reading ahead what that login's snapshot will be asked for)."""
        ...


class SessionObserver(Protocol):
    """What sessions report (implemented by the metrics)."""

    def observe_pop3(self, command: str, outcome: str, seconds: float) -> None: ...

    def login(self, upstream: str, outcome: str) -> None: ...

    def lease_waited(self, seconds: float) -> None: ...

    def limited(self, reason: str) -> None:
        """A limit bit (``reason``: which one)."""
        ...


def login_outcome(exc: BaseException | None) -> str:
    """A low-cardinality reason for a login's result (a metric label)."""
    if exc is None:
        return "ok"
    reason = failure_reason(exc)
    if reason in _UNREACHABLE:
        return "unreachable"
    return reason if reason in _LOGIN_OUTCOMES else "other"


class SessionOpener:
    """Connects and logs in; with limits (:class:`LoginRations`, or a bare
    :class:`LoginThrottle`), refuses early for a person whose logins keep failing, and for
    a client address or an upstream that sees too many failed logins. The limits see a
    keyed digest of the credential, never the secret."""

    def __init__(
        self,
        *,
        key: bytes,
        observer: SessionObserver | None = None,
        throttle: LoginThrottle | LoginRations | None = None,
        servers: KnownServers | None = None,
    ) -> None:
        self._key = key
        self._observer = observer
        self._rations = LoginRations(throttle) if isinstance(throttle, LoginThrottle) else throttle
        #: what servers' CAPA listed, for password logins one round trip shorter
        self._servers = servers

    async def open(self, account: Account, how: ConnectAndLogin | None = None) -> POP3Client:
        """A logged-in session for ``account``: connected and logged in the usual way, or by
        ``how``; either way through the login limits and counted."""
        rations = self._rations
        observer = self._observer
        # An OAuth token first: a failing token endpoint is no failed login, and holds no
        # POP3 connection open while it is waited for.
        await account.prepare()
        attempt = None
        if rations is not None:
            # Per person (spellings count once); configured mailboxes apart from passthrough
            # attempts on the same address, so strangers' guesses cannot throttle a service.
            side = "passthrough" if account.passthrough else "mailbox:" + account.mailbox_id
            upstream = account.upstream
            try:
                attempt = await rations.begin(
                    f"{account.person(self._key)}\0{side}",
                    account.digest(self._key),
                    client=account.client,
                    upstream=f"{upstream.host}:{upstream.port}",
                )
            except (LoginThrottledError, LoginRateLimitedError) as exc:
                if observer is not None:
                    observer.limited(exc.reason)
                raise
        on_command = observer.observe_pop3 if observer is not None else None
        client: POP3Client | None = None
        try:
            if how is not None:
                client = await how()
            else:
                servers = self._servers
                upstream = account.upstream
                assume = (
                    servers.assumed(upstream)
                    if servers is not None and account.password_login
                    else None
                )
                client = await upstream.connect(on_command=on_command, capa=assume is None)
                await account.login(client, assume=assume)
                if servers is not None and account.password_login:
                    servers.learn(upstream, client.authorization_capabilities)
        except BaseException as exc:
            if client is not None:
                if self._servers is not None and how is None and account.password_login:
                    # what a refused login learnt (a server that stopped offering PLAIN)
                    self._servers.learn(account.upstream, client.authorization_capabilities)
                client.abort()
            if rations is not None and attempt is not None:
                outcome = "auth" if failure_reason(exc) == "auth" else "other"
                await asyncio.shield(rations.end(attempt, outcome))
            if observer is not None and not isinstance(exc, asyncio.CancelledError):
                observer.login(account.upstream.name, login_outcome(exc))
            raise
        if rations is not None and attempt is not None:
            try:  # the outcome is recorded in full; a caller gone meanwhile loses the session
                await asyncio.shield(rations.end(attempt, "ok"))
            except BaseException:
                client.abort()
                raise
        if observer is not None:
            observer.login(account.upstream.name, "ok")
        return client


class PooledSessions:
    """Sessions from a :class:`SessionPool`, one maildrop per person (upstream + user as the
    server understands it: spellings of one login share the caps and the replica lock),
    each session used only by the exact identity that logged in (user as spelt +
    credential: a changed password, or another spelling, never reuses a session)."""

    def __init__(
        self,
        pool: SessionPool,
        opener: SessionOpener,
        *,
        key: bytes,
        observer: SessionObserver | None = None,
    ) -> None:
        self.pool = pool
        self._opener = opener
        self._key = key
        self._observer = observer

    def wanted(self, account: Account) -> bool:
        upstream = account.upstream
        return self.pool.wanted(account.person(self._key), f"{upstream.host}:{upstream.port}")

    @contextlib.asynccontextmanager
    async def lease(
        self, account: Account, *, fresh: bool = False, how: ConnectAndLogin | None = None
    ) -> AsyncIterator[Session]:
        asked = time.monotonic()
        person = account.person(self._key)
        upstream = account.upstream
        async with self.pool.lease(
            person,
            # The server as the person key sees it (host:port, never a configured name):
            # one person is one pool key on one server, however its upstream is named.
            f"{upstream.host}:{upstream.port}",
            functools.partial(self._opener.open, account, how),
            fresh=fresh,
            quit_on_close=not account.upstream.read_only_sessions,
            lock=person,
            identity=account.digest(self._key),
        ) as pooled:
            if self._observer is not None:
                self._observer.lease_waited(time.monotonic() - asked)
            yield Session(
                pooled.client,
                account,
                login=pooled.serial,
                opened_at=pooled.opened_at_wall,
                born=pooled.opened_at,
            )

    @contextlib.asynccontextmanager
    async def lease_idle(self, account: Account, login: object) -> AsyncIterator[Session | None]:
        upstream = account.upstream
        async with self.pool.lease_idle(
            account.person(self._key),
            f"{upstream.host}:{upstream.port}",
            serial=login,
            identity=account.digest(self._key),
        ) as pooled:
            if pooled is None:
                yield None
                return
            yield Session(
                pooled.client,
                account,
                login=pooled.serial,
                opened_at=pooled.opened_at_wall,
                born=pooled.opened_at,
            )


async def end_session(client: POP3Client, account: Account) -> None:
    """End a session that holds no DELE marks: QUIT, or just drop it where reads must not
    change the mailbox (read-only upstreams)."""
    if client.state is State.CLOSED:
        return
    if account.upstream.read_only_sessions or client.deleted_marks:
        client.abort()
        return
    with contextlib.suppress(POP3Error):
        await client.quit()
