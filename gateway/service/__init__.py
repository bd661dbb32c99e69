"""Mailbox use cases over POP3 sessions, the header cache and mail parsing (no HTTP here).

:class:`MailboxService` is the API layer's one entry; each use case lives in a module of its
own:

- ``errors``: the service's failures and :func:`failure_reason`, the one way failures are
  sorted;
- ``ids``: public message ids and listing cursors;
- ``sessions``: opening sessions (:class:`SessionOpener`) and lending them (the pool);
- ``limits``: what one mailbox's callers may make the gateway do (the login throttle);
- ``listing``: snapshots (:class:`SnapshotCache`) and pages of header summaries;
- ``messages``: one message, parsed, raw or one attachment;
- ``spool``: bounded spool files, so a slow reader of a message holds no session;
- ``deletes``: deletes, reported only after QUIT answered ``+OK``;
- ``check``: the "test settings" of an account.

The invariants (README, Invariants) that live here are kept by ``messages`` (1), ``deletes``
(2) and ``listing`` (3).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..accounts import Account
from ..cache import HeaderCache
from ..mail import Attachment
from .check import Checker, CheckResult, CheckStep, describe_failure
from .deletes import DeleteResult, Deletes
from .errors import (
    CapabilityMissingError,
    ClientLoginRateError,
    DeleteFailedError,
    DeleteOutcomeUnknownError,
    InvalidInputError,
    LoginRateLimitedError,
    LoginThrottledError,
    MessageNotFoundError,
    MessageTooLargeError,
    NeedsReauthError,
    OAuthError,
    ParseBusyError,
    ParseFailedError,
    SecretUnavailableError,
    ServiceError,
    TokenUnavailableError,
    UpstreamLoginRateError,
    connection_failure_words,
    failure_reason,
)
from .ids import Order, decode_id, encode_id
from .limits import FreshLogins, KnownGood, LoginRations, LoginThrottle, TokenBuckets
from .listing import MAX_LIMIT, Listing, Page, Snapshot, SnapshotCache, Summary, check_limit
from .messages import FullMessage, Messages, RawMessage, check_attachment_id
from .parsing import MessageParser, ParsedCache, ParseWorkers
from .sessions import (
    PooledSessions,
    Session,
    SessionObserver,
    SessionOpener,
    SessionSource,
    end_session,
    login_outcome,
)
from .spool import Spool, SpoolFile
from .summaries import RecentSummaries

__all__ = [
    "MAX_LIMIT",
    "CapabilityMissingError",
    "CheckResult",
    "CheckStep",
    "ClientLoginRateError",
    "DeleteFailedError",
    "DeleteOutcomeUnknownError",
    "DeleteResult",
    "FreshLogins",
    "FullMessage",
    "InvalidInputError",
    "KnownGood",
    "LoginRateLimitedError",
    "LoginRations",
    "LoginThrottle",
    "LoginThrottledError",
    "MailboxService",
    "MessageNotFoundError",
    "MessageParser",
    "MessageTooLargeError",
    "NeedsReauthError",
    "OAuthError",
    "Order",
    "Page",
    "ParseBusyError",
    "ParseFailedError",
    "ParseWorkers",
    "ParsedCache",
    "PooledSessions",
    "RawMessage",
    "RecentSummaries",
    "SecretUnavailableError",
    "ServiceError",
    "Session",
    "SessionObserver",
    "SessionOpener",
    "SessionSource",
    "Snapshot",
    "Spool",
    "SpoolFile",
    "Stats",
    "Summary",
    "TokenBuckets",
    "TokenUnavailableError",
    "UpstreamLoginRateError",
    "check_attachment_id",
    "check_limit",
    "connection_failure_words",
    "decode_id",
    "describe_failure",
    "encode_id",
    "end_session",
    "failure_reason",
    "login_outcome",
]

#: A readiness check: an async probe, and what it means when it fails.
ReadinessCheck = tuple[Callable[[], Awaitable[bool]], str]


@dataclass(frozen=True)
class Stats:
    messages: int
    octets: int
    snapshot_at: datetime
    capabilities: list[str]


class MailboxService:
    """The use cases the API offers, over one session source and one header cache.

    ``summaries`` holds header summaries as objects (by default a small store in front of
    ``cache``); with no ``cache`` (no Redis), it is the in-process header cache, and the app
    sizes it so."""

    def __init__(
        self,
        sessions: SessionSource,
        cache: HeaderCache | None,
        *,
        cache_key: bytes,
        max_parse_bytes: int,
        snapshot_max_age: float = 5.0,
        min_fresh_interval: float = 0.0,
        observer: SessionObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        readiness: Mapping[str, ReadinessCheck] | None = None,
        spool: Spool | None = None,
        parser: MessageParser | None = None,
        summaries: RecentSummaries | None = None,
    ) -> None:
        self._sessions = sessions
        self._cache = cache
        self._readiness = dict(readiness or {})
        snapshots = SnapshotCache(key=cache_key, max_age=snapshot_max_age, clock=clock)
        self._snapshots = snapshots
        self._recent = recent = RecentSummaries() if summaries is None else summaries
        self._listing = Listing(
            sessions,
            snapshots,
            cache,
            cache_key=cache_key,
            fresh_logins=FreshLogins(min_fresh_interval, clock=clock),
            observer=observer,
            recent=recent,
        )
        self._messages = Messages(
            sessions,
            snapshots,
            key=cache_key,
            max_parse_bytes=max_parse_bytes,
            parser=parser,
            spool=spool,
            observer=observer,
        )
        self._deletes = Deletes(sessions, snapshots, cache, cache_key=cache_key, recent=recent)
        self._checker = Checker(sessions, observer)

    @property
    def max_parse_bytes(self) -> int:
        return self._messages.max_parse_bytes

    @property
    def snapshot_bytes(self) -> int:
        """What the kept snapshots and pages are counted for (bounded; see listing)."""
        return self._snapshots.bytes

    @property
    def recent_summaries(self) -> RecentSummaries:
        """The header summaries held as objects (bounded; see summaries)."""
        return self._recent

    @property
    def parser(self) -> MessageParser:
        """Whole-message parsing: its workers and its cache."""
        return self._messages.parser

    async def close(self) -> None:
        """Stop background work that holds sessions (listing read-ahead): before the pool
        closes."""
        await self._listing.close()

    def housekeeping(self) -> None:
        """Drop what has expired (snapshots older than snapshot_max_age, held summaries
        older than their ttl, parsed messages): called on a timer by the app, so memory
        comes back without waiting for a request."""
        self._snapshots.purge()
        self._recent.purge_expired()
        self._messages.parser.cache.purge()

    async def dependencies(self) -> dict[str, tuple[bool, str | None]]:
        """What readiness reports: each dependency, whether it answers, and why not."""
        # (no header cache: the held summaries are the cache, in this process)
        cache_ok = True if self._cache is None else await self._cache.ping()
        found: dict[str, tuple[bool, str | None]] = {
            "header_cache": (
                cache_ok,
                None if cache_ok else "the header cache does not answer; serving uncached",
            )
        }
        for name, (check, failure) in self._readiness.items():
            ok = await check()
            found[name] = (ok, None if ok else failure)
        return found

    async def stats(self, account: Account, *, fresh: bool = False) -> Stats:
        claim = self._listing.claim_fresh(account) if fresh else None
        fresh = claim is not None  # else a login less than min_fresh_interval ago serves
        try:
            async with self._sessions.lease(account, fresh=fresh) as session:
                count, octets = await session.client.stat()
                caps = await session.client.ensure_transaction_capabilities()
                return Stats(count, octets, session.opened_at, sorted(caps.items))
        except BaseException:
            self._listing.give_back_fresh(claim)
            raise

    async def list_messages(
        self,
        account: Account,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        fresh: bool = False,
    ) -> Page:
        return await self._listing.list_messages(
            account, limit=limit, cursor=cursor, order=order, fresh=fresh
        )

    async def message_exists(self, account: Account, message_id: str) -> bool:
        return await self._messages.exists(account, message_id)

    async def get_message(self, account: Account, message_id: str) -> FullMessage:
        return await self._messages.get(account, message_id)

    def open_raw(
        self, account: Account, message_id: str
    ) -> contextlib.AbstractAsyncContextManager[RawMessage]:
        return self._messages.open_raw(account, message_id)

    async def get_attachment(
        self, account: Account, message_id: str, attachment_id: str
    ) -> Attachment:
        return await self._messages.attachment(account, message_id, attachment_id)

    async def delete_messages(self, account: Account, message_ids: Sequence[str]) -> DeleteResult:
        return await self._deletes.delete_messages(account, message_ids)

    async def check(self, account: Account) -> CheckResult:
        return await self._checker.check(account)
