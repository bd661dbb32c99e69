"""Mailbox use cases over POP3 sessions, the header cache and mail parsing (no HTTP here).

Invariants kept here (DESIGN section 4):

1. Identity is the UIDL unique-id; message numbers are resolved inside the session that uses
   them and never leave this module.
2. A delete is reported done only after QUIT answered ``+OK``; any failure before that drops
   the connection, and the server rolls the marks back.
3. Cached headers are served only for unique-ids in the caller's own live session listing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from .accounts import Account
from .cache import HeaderCache
from .mail import Attachment, HeaderSummary, ParsedMessage, find_attachment, parse_message
from .mail import summarize as summarize_headers
from .pop3 import (
    POP3AuthError,
    POP3Client,
    POP3ConnectionError,
    POP3Error,
    POP3InUseError,
    POP3LoginDelayError,
    POP3OutcomeUnknownError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3ResponseTooLargeError,
    POP3TimeoutError,
    POP3TLSError,
    POP3UpdateError,
    SessionPool,
    State,
    TLSMode,
)

Order = Literal["desc", "asc"]
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{2,100}$")
_CURSOR_VERSION = 1


# -- domain errors ---------------------------------------------------------------------------
class ServiceError(Exception):
    """A request cannot be answered for a reason of the mailbox or the input."""


class InvalidInputError(ServiceError):
    """Bad id, cursor or argument: nothing was sent to the POP3 server."""


class MessageNotFoundError(ServiceError):
    """No message with that id in the mailbox (or no such attachment)."""


class MessageTooLargeError(ServiceError):
    def __init__(self, size: int | None, limit: int) -> None:
        shown = f"{size} octets" if size is not None else "larger than the limit"
        super().__init__(f"the message is {shown}; messages over {limit} octets are not parsed")
        self.size = size
        self.limit = limit


class CapabilityMissingError(ServiceError):
    def __init__(self, capability: str) -> None:
        super().__init__(f"the POP3 server does not support {capability}")
        self.capability = capability


class DeleteOutcomeUnknownError(ServiceError):
    """QUIT was sent and its answer lost: the deletes may or may not have happened."""


class LoginThrottledError(ServiceError):
    """Too many failed logins for this mailbox: the gateway stops trying for a while, so a
    client retrying a wrong password does not get the gateway's address blocked."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins for this mailbox; try again in {retry_after:.0f} s"
        )
        self.retry_after = retry_after


class DeleteFailedError(ServiceError):
    """The server refused a delete (DELE or QUIT ``-ERR``): not everything was removed."""


# -- ids and cursors --------------------------------------------------------------------------
def encode_id(uid: str) -> str:
    """The URL-safe id of a unique-id: base64url of its bytes, without padding."""
    return base64.urlsafe_b64encode(uid.encode("latin-1")).rstrip(b"=").decode("ascii")


def decode_id(message_id: str) -> str:
    """The unique-id behind an id; :class:`InvalidInputError` unless it is canonical."""
    if not _ID_RE.fullmatch(message_id):
        raise InvalidInputError("a message id is 2-100 characters of A-Z a-z 0-9 - _")
    try:
        raw = base64.urlsafe_b64decode(message_id + "=" * (-len(message_id) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInputError("the message id is not valid base64url") from None
    uid = raw.decode("latin-1")
    if not raw or encode_id(uid) != message_id:
        # Well-formed but not an id this service hands out: no message has it.
        raise MessageNotFoundError("no message with that id in the mailbox")
    return uid


def _encode_cursor(order: Order, uid: str, number: int) -> str:
    data = json.dumps({"v": _CURSOR_VERSION, "o": order, "u": uid, "n": number}).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str, order: Order) -> tuple[str, int]:
    invalid = InvalidInputError("the cursor is not one this service issued")
    if len(cursor) > 200 or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise invalid
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _CURSOR_VERSION
        or not isinstance(data.get("u"), str)
        or not isinstance(data.get("n"), int)
        or isinstance(data.get("n"), bool)
        # A unique-id comes from a whitespace-split UIDL line: never a control character.
        or not data["u"]
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in data["u"])
    ):
        raise invalid
    if data.get("o") != order:
        raise InvalidInputError("the cursor belongs to a listing in the other order")
    return data["u"], data["n"]


# -- sessions ---------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """The maildrop as a session sees it: numbers, unique-ids and sizes."""

    at: datetime
    numbers: list[int]
    uids: dict[int, str]
    sizes: dict[int, int]
    by_uid: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for number in self.numbers:
            self.by_uid.setdefault(self.uids[number], []).append(number)

    def number_of(self, uid: str) -> int:
        numbers = self.by_uid.get(uid)
        if not numbers:
            raise MessageNotFoundError("no message with that id in the mailbox")
        return numbers[0]


class Session:
    """A logged-in POP3 session lent to one request at a time.

    ``opened_at`` is when it logged in: POP3 shows the maildrop as it was then. ``state`` is
    kept as long as the session lives (a pooled session carries its snapshot across leases).
    """

    def __init__(
        self,
        client: POP3Client,
        account: Account,
        *,
        opened_at: datetime | None = None,
        born: float | None = None,
        state: dict[str, object] | None = None,
    ) -> None:
        self.client = client
        self.account = account
        self.opened_at = opened_at or datetime.now(UTC)
        self.born = time.monotonic() if born is None else born
        self.state: dict[str, object] = {} if state is None else state

    async def snapshot(self) -> Snapshot:
        """UIDL + LIST, read once per session (the maildrop does not change inside it)."""
        found = self.state.get("snapshot")
        if isinstance(found, Snapshot):
            return found
        try:
            uids, sizes = await self.client.uidl_and_list()
        except POP3ResponseError as exc:
            if exc.command != "UIDL" or exc.code is not None:
                raise  # [SYS/TEMP] and friends are failures, not a missing capability
            raise CapabilityMissingError("UIDL") from exc
        numbers = sorted(uids)
        snapshot = Snapshot(
            at=self.opened_at,
            numbers=numbers,
            uids=uids,
            sizes={n: sizes.get(n, 0) for n in numbers},
        )
        self.state["snapshot"] = snapshot
        return snapshot


class SessionSource(Protocol):
    """Where sessions come from (one per request, or a pool)."""

    def lease(
        self, account: Account, *, fresh: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Session]:
        """A session for ``account`` for the time of the block. ``fresh`` asks for a session
        opened now (new mail is visible only in a new session). An exception in the block
        drops the session without QUIT; a session the block closed is not reused."""
        ...


class SessionObserver(Protocol):
    """What sessions report (implemented by the metrics)."""

    def observe_pop3(self, command: str, outcome: str, seconds: float) -> None: ...

    def login(self, upstream: str, outcome: str) -> None: ...

    def lease_waited(self, seconds: float) -> None: ...


def login_outcome(exc: BaseException | None) -> str:
    """A low-cardinality reason for a login's result (a metric label)."""
    if exc is None:
        return "ok"
    for kind, name in (
        (POP3AuthError, "auth"),
        (POP3InUseError, "in-use"),
        (POP3LoginDelayError, "login-delay"),
        (POP3TLSError, "tls"),
        (POP3TimeoutError, "timeout"),
        (POP3ConnectionError, "unreachable"),
    ):
        if isinstance(exc, kind):
            return name
    return "other"


class LoginThrottle:
    """Counts failed logins per mailbox (upstream + user, never the password) and refuses to
    try again after ``max_failures`` within ``window`` seconds, until the oldest of them
    leaves the window. Providers block addresses that keep failing; one misconfigured client
    must not get the gateway (and every other user behind it) blocked.

    A credential that last succeeded for the mailbox (kept as a keyed digest, never in
    clear) is still let through while it is throttled, so that someone sending wrong
    passwords cannot lock the mailbox's owner out. Bounded in size."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._good: OrderedDict[str, str] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    def begin(self, key: str, credential: str) -> bool:
        """Before a login: raise while throttled, counting logins still in flight as
        failures to come (a concurrent burst of wrong passwords must not all reach the
        server). Returns whether this attempt was counted; pass that to :meth:`end`."""
        if self._good.get(key) == credential:
            return False  # the owner's known-good credential is never held back
        now = self._clock()
        recent = [t for t in self._failures.get(key, ()) if now - t < self._window]
        if len(recent) + self._in_flight.get(key, 0) >= self._max:
            wait = recent[0] + self._window - now if recent else 1.0
            raise LoginThrottledError(max(1.0, wait))
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return True

    def end(self, key: str, counted: bool, outcome: str, credential: str) -> None:
        """After a login: ``outcome`` is ``ok``, ``auth`` (credentials refused) or other."""
        if counted:
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)
        if outcome == "ok":
            self.succeeded(key, credential)
        elif outcome == "auth":
            self.failed(key)

    def check(self, key: str, credential: str) -> None:
        """Raise :class:`LoginThrottledError` while ``key`` is throttled, unless
        ``credential`` (a digest) is the one that last succeeded for it."""
        now = self._clock()
        recent = [t for t in self._failures.get(key, ()) if now - t < self._window]
        if len(recent) >= self._max and self._good.get(key) != credential:
            raise LoginThrottledError(max(1.0, recent[0] + self._window - now))

    def failed(self, key: str) -> None:
        now = self._clock()
        recent = [t for t in self._failures.pop(key, []) if now - t < self._window]
        recent.append(now)
        self._failures[key] = recent[-self._max :]
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, key: str, credential: str) -> None:
        self._failures.pop(key, None)
        self._good.pop(key, None)
        self._good[key] = credential
        while len(self._good) > self._max_keys:
            self._good.popitem(last=False)


async def _open(
    account: Account,
    observer: SessionObserver | None,
    throttle: LoginThrottle | None = None,
    throttle_key: str = "",
    credential: str = "",
) -> POP3Client:
    """Connect and log in; with a throttle, refuse early for a mailbox whose logins keep
    failing (``credential`` is a keyed digest, never the secret)."""
    counted = throttle.begin(throttle_key, credential) if throttle is not None else False
    on_command = observer.observe_pop3 if observer is not None else None
    client: POP3Client | None = None
    try:
        client = await account.upstream.connect(on_command=on_command)
        await account.login(client)
    except BaseException as exc:
        if client is not None:
            client.abort()
        if throttle is not None:
            outcome = "auth" if isinstance(exc, POP3AuthError) else "other"
            throttle.end(throttle_key, counted, outcome, credential)
        if observer is not None and not isinstance(exc, asyncio.CancelledError):
            observer.login(account.upstream.name, login_outcome(exc))
        raise
    if throttle is not None:
        throttle.end(throttle_key, counted, "ok", credential)
    if observer is not None:
        observer.login(account.upstream.name, "ok")
    return client


class DirectSessions:
    """A new session for every lease, ended when the lease ends (no pooling)."""

    def __init__(self, observer: SessionObserver | None = None) -> None:
        self._observer = observer

    @contextlib.asynccontextmanager
    async def lease(self, account: Account, *, fresh: bool = False) -> AsyncIterator[Session]:
        client = await _open(account, self._observer)
        try:
            yield Session(client, account)
        except BaseException:
            client.abort()
            raise
        await end_session(client, account)


class PooledSessions:
    """Sessions from a :class:`SessionPool`, keyed by a keyed digest of upstream + user +
    credential (a changed password never reuses a session of the old one)."""

    def __init__(
        self,
        pool: SessionPool,
        *,
        key: bytes,
        observer: SessionObserver | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.pool = pool
        self._key = key
        self._observer = observer
        self._throttle = throttle

    @contextlib.asynccontextmanager
    async def lease(self, account: Account, *, fresh: bool = False) -> AsyncIterator[Session]:
        asked = time.monotonic()
        async with self.pool.lease(
            account.digest(self._key),
            account.upstream.name,
            lambda: _open(
                account,
                self._observer,
                self._throttle,
                account.namespace(self._key),
                account.digest(self._key),
            ),
            fresh=fresh,
            quit_on_close=not account.upstream.read_only_sessions,
            lock=account.namespace(self._key),
        ) as pooled:
            if self._observer is not None:
                self._observer.lease_waited(time.monotonic() - asked)
            yield Session(
                pooled.client,
                account,
                opened_at=pooled.opened_at_wall,
                born=pooled.opened_at,
                state=pooled.state,
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


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    messages: int
    octets: int
    snapshot_at: datetime
    capabilities: list[str]


@dataclass(frozen=True)
class Summary:
    uid: str
    size: int
    headers: HeaderSummary | None  #: None when the server refused TOP for it


@dataclass(frozen=True)
class Page:
    items: list[Summary]
    total: int
    next_cursor: str | None
    snapshot_at: datetime
    #: the presentation layer may memoise its rendering here (a page is immutable)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class _View:
    """A recent snapshot of one account's maildrop, and pages already built from it."""

    snapshot: Snapshot
    born: float  #: monotonic time of the login that produced it
    pages: dict[tuple[str, str | None, int], Page] = field(default_factory=dict)


#: Views kept at most (one per recently listed account); pages kept per view.
MAX_VIEWS = 4096
MAX_PAGES_PER_VIEW = 64


@dataclass(frozen=True)
class FullMessage:
    uid: str
    size: int
    parsed: ParsedMessage


@dataclass(frozen=True)
class RawMessage:
    uid: str
    size_hint: int
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]  #: unique-ids
    not_found: list[str]


@dataclass
class CheckStep:
    name: str
    ok: bool
    ms: float
    detail: str | None = None


@dataclass
class CheckResult:
    ok: bool
    steps: list[CheckStep]
    capabilities: list[str]
    messages: int | None = None
    octets: int | None = None


# -- the service ------------------------------------------------------------------------------
class MailboxService:
    def __init__(
        self,
        sessions: SessionSource,
        cache: HeaderCache,
        *,
        cache_key: bytes,
        max_parse_bytes: int,
        snapshot_max_age: float = 5.0,
        observer: SessionObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        readiness: Mapping[str, tuple[Callable[[], Awaitable[bool]], str]] | None = None,
    ) -> None:
        self._readiness = dict(readiness or {})
        self._observer = observer
        self._snapshot_max_age = snapshot_max_age
        self._clock = clock
        self._views: OrderedDict[str, _View] = OrderedDict()
        #: view keys whose snapshot a request is renewing now, with the event it sets then
        self._refreshing: dict[str, asyncio.Event] = {}
        self._sessions = sessions
        self._cache = cache
        self._cache_key = cache_key
        self.max_parse_bytes = max_parse_bytes

    async def dependencies(self) -> dict[str, tuple[bool, str | None]]:
        """What readiness reports: each dependency, whether it answers, and why not."""
        cache_ok = await self._cache.ping()
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
        async with self._sessions.lease(account, fresh=fresh) as session:
            count, octets = await session.client.stat()
            caps = await session.client.ensure_transaction_capabilities()
            return Stats(count, octets, session.opened_at, sorted(caps.items))

    async def list_messages(
        self,
        account: Account,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        fresh: bool = False,
    ) -> Page:
        if not 1 <= limit <= 500:
            raise InvalidInputError("limit must be between 1 and 500")
        after = _decode_cursor(cursor, order) if cursor else None
        view_key = account.digest(self._cache_key)
        page_key = (order, cursor, limit)
        view = None if fresh else self._live_view(view_key)
        if view is None and not fresh and view_key in self._refreshing:
            # Another request of the same login is renewing the snapshot: wait for it
            # instead of queueing for the session behind it (a burst of callers after
            # snapshot_max_age costs one lease, not one each).
            await self._refreshing[view_key].wait()
            view = self._live_view(view_key)
        if view is not None:
            # Within snapshot_max_age of the last login the maildrop as POP3 shows it has not
            # changed: serve from that snapshot, without a session, when the cache has every
            # header of the page. Only uids of this caller's own listing are looked up.
            page = view.pages.get(page_key)
            if page is None:
                page = await self._page(account, view.snapshot, order, after, limit, None)
                if page is not None:
                    self._remember(view, page_key, page)
            if page is not None:
                return page
        renewed = None
        if view_key not in self._refreshing:
            renewed = self._refreshing[view_key] = asyncio.Event()
        try:
            async with self._sessions.lease(account, fresh=fresh) as session:
                snap = await session.snapshot()
                page = await self._page(account, snap, order, after, limit, session)
                assert page is not None  # with a session every header can be fetched
                born = session.born
            view = self._store_view(view_key, snap, born)
            self._remember(view, page_key, page)
            return page
        finally:
            if renewed is not None:
                # Success or not: the waiters look again (and lease themselves if the
                # snapshot is still missing, so one caller's failure is not theirs).
                del self._refreshing[view_key]
                renewed.set()

    async def _page(
        self,
        account: Account,
        snap: Snapshot,
        order: Order,
        after: tuple[str, int] | None,
        limit: int,
        session: Session | None,
    ) -> Page | None:
        """A page of ``snap``; without a session, None unless every header is cached."""
        ordered = snap.numbers if order == "asc" else snap.numbers[::-1]
        start = _resume_index(ordered, snap, after, order) if after is not None else 0
        page_numbers = ordered[start : start + limit]
        items = await self._summaries(account, snap, page_numbers, session)
        if items is None:
            return None
        next_cursor = None
        if start + limit < len(ordered) and page_numbers:
            last = page_numbers[-1]
            next_cursor = _encode_cursor(order, snap.uids[last], last)
        return Page(items, len(ordered), next_cursor, snap.at)

    def _live_view(self, view_key: str) -> _View | None:
        view = self._views.get(view_key)
        if view is None:
            return None
        if self._clock() - view.born >= self._snapshot_max_age:
            del self._views[view_key]
            return None
        self._views.move_to_end(view_key)
        return view

    def _store_view(self, view_key: str, snap: Snapshot, born: float) -> _View:
        view = self._views.get(view_key)
        if view is None or view.snapshot is not snap:
            view = _View(snap, born)
            self._views[view_key] = view
        self._views.move_to_end(view_key)
        while len(self._views) > MAX_VIEWS:
            self._views.popitem(last=False)
        return view

    @staticmethod
    def _remember(view: _View, page_key: tuple[str, str | None, int], page: Page) -> None:
        if len(view.pages) < MAX_PAGES_PER_VIEW:
            view.pages[page_key] = page

    def _forget_view(self, account: Account) -> None:
        self._views.pop(account.digest(self._cache_key), None)

    async def _summaries(
        self,
        account: Account,
        snap: Snapshot,
        numbers: Sequence[int],
        session: Session | None,
    ) -> list[Summary] | None:
        """Header summaries for ``numbers``: from the cache, the rest with one pipelined
        burst of ``TOP n 0`` written back in one go. Without a session, None on any miss."""
        namespace = account.namespace(self._cache_key)
        uids = [snap.uids[n] for n in numbers]
        cached = await self._cache.get_many(namespace, set(uids))
        found: dict[str, HeaderSummary] = {}
        for uid, entry in cached.items():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                found[uid] = HeaderSummary.from_json(entry)
        missing = [n for n in numbers if snap.uids[n] not in found]
        if missing:
            if session is None:
                return None
            fresh: dict[str, dict[str, Any]] = {}

            def read(index: int, reply: bytes | POP3ResponseError) -> None:
                # Each header section is read as it arrives, while the server answers the
                # next commands of the pipeline.
                if isinstance(reply, bytes):
                    number = missing[index]
                    summary = summarize_headers(reply, size=snap.sizes[number])
                    found[snap.uids[number]] = summary
                    fresh[snap.uids[number]] = summary.to_json()

            await session.client.top_each(missing, read)
            if fresh:
                await self._cache.set_many(namespace, fresh)
        return [Summary(snap.uids[n], snap.sizes[n], found.get(snap.uids[n])) for n in numbers]

    async def message_exists(self, account: Account, message_id: str) -> bool:
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await session.snapshot()
            return uid in snap.by_uid

    async def get_message(self, account: Account, message_id: str) -> FullMessage:
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await session.snapshot()
            number = snap.number_of(uid)
            size = snap.sizes[number]
            if size > self.max_parse_bytes:
                raise MessageTooLargeError(size, self.max_parse_bytes)
            try:
                raw = await session.client.retr(number, max_bytes=self.max_parse_bytes)
            except POP3ResponseTooLargeError:
                raise MessageTooLargeError(None, self.max_parse_bytes) from None
        parsed = parse_message(raw)
        return FullMessage(uid, len(raw), parsed)

    @contextlib.asynccontextmanager
    async def open_raw(self, account: Account, message_id: str) -> AsyncIterator[RawMessage]:
        """The message bytes as the server holds them, as a flow of chunks (flat memory)."""
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await session.snapshot()
            number = snap.number_of(uid)
            async with session.client.retr_stream(number) as chunks:
                yield RawMessage(uid, snap.sizes[number], chunks)

    async def get_attachment(
        self, account: Account, message_id: str, attachment_id: str
    ) -> Attachment:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", attachment_id):
            raise InvalidInputError("an attachment id looks like 2 or 1.3")
        if not re.fullmatch(r"[0-9]{1,4}(\.[0-9]{1,4}){0,31}", attachment_id):
            raise MessageNotFoundError("no attachment with that id in the message")
        message = await self._retr_capped(account, message_id)
        found = find_attachment(message, attachment_id)
        if found is None:
            raise MessageNotFoundError("no attachment with that id in the message")
        return found

    async def _retr_capped(self, account: Account, message_id: str) -> bytes:
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await session.snapshot()
            number = snap.number_of(uid)
            if snap.sizes[number] > self.max_parse_bytes:
                raise MessageTooLargeError(snap.sizes[number], self.max_parse_bytes)
            try:
                return await session.client.retr(number, max_bytes=self.max_parse_bytes)
            except POP3ResponseTooLargeError:
                raise MessageTooLargeError(None, self.max_parse_bytes) from None

    async def delete_messages(self, account: Account, message_ids: Sequence[str]) -> DeleteResult:
        """Delete in one POP3 transaction; reported only after QUIT answered ``+OK``."""
        if not 1 <= len(message_ids) <= 500:
            raise InvalidInputError("between 1 and 500 ids per request")
        uids = list(dict.fromkeys(decode_id(i) for i in message_ids))
        try:
            return await self._delete(account, uids)
        finally:
            # Whatever happened, the next listing must look again.
            self._forget_view(account)

    async def _delete(self, account: Account, uids: list[str]) -> DeleteResult:
        async with self._sessions.lease(account, fresh=True) as session:
            snap = await session.snapshot()
            present = [u for u in uids if u in snap.by_uid]
            absent = [u for u in uids if u not in snap.by_uid]
            if not present:
                return DeleteResult([], absent)
            numbers = [n for u in present for n in snap.by_uid[u]]
            client = session.client
            errors = await client.dele_many(numbers)
            refused = [e for e in errors if e is not None]
            if refused:
                client.abort()  # never QUIT with a partial set of marks: roll everything back
                raise DeleteFailedError(
                    f"the server refused to mark {len(refused)} message(s); nothing was deleted"
                ) from refused[0]
            try:
                await client.quit()
            except POP3OutcomeUnknownError as exc:
                raise DeleteOutcomeUnknownError(
                    "the connection was lost after QUIT was sent: the messages may or may not "
                    "be deleted; retrying is safe"
                ) from exc
            except POP3UpdateError as exc:
                raise DeleteFailedError(
                    "the server reported that not every marked message was removed"
                ) from exc
        await self._cache.delete_many(account.namespace(self._cache_key), present)
        return DeleteResult(present, absent)

    async def check(self, account: Account) -> CheckResult:
        """Connect, TLS, authenticate, CAPA and STAT, each timed; stops at the first failure."""
        steps: list[CheckStep] = []
        upstream = account.upstream
        client: POP3Client | None = None
        caps: list[str] = []
        messages = octets = None

        async def step(name: str, action: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await action()
            except (POP3Error, OSError) as exc:
                steps.append(CheckStep(name, False, _ms(started), describe_failure(exc)))
                raise
            steps.append(CheckStep(name, True, _ms(started)))
            return result

        try:
            connect_mode = TLSMode.PLAIN if upstream.tls is TLSMode.STARTTLS else upstream.tls
            client = await step(
                "connect",
                lambda: upstream.connect(
                    tls=connect_mode,
                    on_command=self._observer.observe_pop3 if self._observer else None,
                ),
            )
            assert client is not None
            if upstream.tls is TLSMode.STARTTLS:
                await step("tls", client.stls)
            elif upstream.tls is TLSMode.IMPLICIT:
                steps.append(CheckStep("tls", True, 0.0, "implicit TLS, negotiated on connect"))
            else:
                steps.append(CheckStep("tls", False, 0.0, "plaintext: no TLS configured"))
            await step("greeting", _noop)
            await step("auth", lambda: account.login(client))
            capabilities = await step("capa", client.capa)
            caps = sorted(capabilities.items)
            messages, octets = await step("stat", client.stat)
        except POP3AuthError:
            if account.passthrough:
                raise  # the caller's own credentials are wrong: a 401, as on every endpoint
        except (POP3Error, OSError):
            pass
        finally:
            if client is not None:
                await end_session(client, account)
        ok = all(s.ok for s in steps if s.name != "tls" or upstream.tls is not TLSMode.PLAIN)
        ok = ok and any(s.name == "stat" for s in steps)
        return CheckResult(ok, steps, caps, messages, octets)


async def _noop() -> None:
    return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def describe_failure(exc: BaseException) -> str:
    """Our own words for a failure (never the server's raw text, never a secret)."""
    if isinstance(exc, POP3TLSError):
        return "TLS failed (certificate not trusted, wrong host name, or handshake error)"
    if isinstance(exc, POP3TimeoutError):
        return f"timed out ({exc.phase})"
    if isinstance(exc, POP3AuthError):
        return "the server rejected the credentials"
    if isinstance(exc, POP3InUseError):
        return "the mailbox is locked by another session"
    if isinstance(exc, POP3LoginDelayError):
        return "the server asks to wait before logging in again"
    if isinstance(exc, POP3ConnectionError | OSError):
        return "cannot reach the server or the connection broke"
    if isinstance(exc, POP3ProtocolError):
        return "the server answered something that is not POP3"
    if isinstance(exc, POP3ResponseError):
        return f"the server refused {exc.command}" + (f" [{exc.code}]" if exc.code else "")
    return type(exc).__name__


def _resume_index(ordered: list[int], snap: Snapshot, after: tuple[str, int], order: Order) -> int:
    """Where the page after ``after`` starts. The uid normally identifies the last item; if it
    is gone (deleted meanwhile), continue from its message number."""
    uid, number = after
    numbers = snap.by_uid.get(uid)
    if numbers:
        last = numbers[0] if order == "asc" else numbers[-1]
        return ordered.index(last) + 1
    for i, n in enumerate(ordered):
        if (order == "asc" and n > number) or (order == "desc" and n < number):
            return i
    return len(ordered)
