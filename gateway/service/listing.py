"""Listings: the maildrop as a session sees it (snapshots), kept for a few seconds, and pages
of header summaries from those held in this process, the header cache (with Redis) and
pipelined ``TOP n 0``.

Invariant 3 (README, Invariants) is kept here: cached headers are looked up only for the
unique-ids of the caller's own session listing.

Read-ahead: a page read with a session asks, in the same pipelined burst, for the headers
of the next page too (at most one page, only those not cached, and only when no other
lease is waiting for the session or for room on its server). The page is answered as soon
as its own replies are in; the rest is read into the held summaries (and the header cache)
by a task that holds the session until then, so a client paging through finds its next page
cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from ..accounts import Account
from ..cache import HeaderCache
from ..mail import HeaderSummary
from ..mail import summarize as summarize_headers
from ..pop3 import POP3ResponseError, TruncatedBody
from .errors import CapabilityMissingError, InvalidInputError, MessageNotFoundError
from .ids import Cursors, Order
from .limits import FreshClaim, FreshLogins
from .sessions import Session, SessionObserver, SessionSource
from .summaries import RecentSummaries, summary_weight

#: Snapshots kept at most (one per recently used login); pages kept per snapshot.
MAX_VIEWS = 4096
MAX_PAGES_PER_VIEW = 64
#: What the kept snapshots and pages may weigh together (see :func:`snapshot_weight` and
#: :func:`page_weight`: estimates that grow with what is held).
MAX_VIEW_BYTES = 128 * 1024 * 1024
#: Largest page of a listing.
MAX_LIMIT = 500
#: Read-aheads started by pages served from the cache, running at once at most.
MAX_IDLE_READ_AHEADS = 16

log = logging.getLogger("gateway.service.listing")


def check_limit(limit: int) -> int:
    """``limit`` if it is a page size this service serves (the one rule for it)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


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


class Summary(NamedTuple):
    """One entry of a page (immutable: a tuple, made for every entry of every page)."""

    uid: str
    size: int
    headers: HeaderSummary | None  #: None when the server refused TOP for it


@dataclass(frozen=True)
class Page:
    """A page of a listing; immutable, so it may be served again from the same snapshot."""

    items: list[Summary]
    total: int
    next_cursor: str | None
    snapshot_at: datetime


def snapshot_weight(snapshot: Snapshot) -> int:
    """Bytes a snapshot is counted for: per message, its number in a list, its entries in
    three dicts and its unique-id."""
    return 1024 + sum(300 + len(uid) for uid in snapshot.uids.values())


def page_weight(page: Page) -> int:
    """Bytes a page is counted for: per item, the objects and the text it holds (a summary
    of hostile mail holds up to its caps, far more than an ordinary one)."""
    total = 256
    for item in page.items:
        total += len(item.uid) + (300 if item.headers is None else summary_weight(item.headers))
    return total


@dataclass
class _View:
    """The snapshot one login produced, and the pages already built from it."""

    key: str  #: its view key (the login's account)
    snapshot: Snapshot
    login: object  #: the login that produced it (Session.login)
    born: float  #: monotonic time of that login
    pages: dict[tuple[str, str | None, int], Page] = field(default_factory=dict)
    weight: int = 0  #: what the snapshot and the pages are counted for


class SnapshotCache:
    """The one place snapshots are kept: per login (account key), the last snapshot read,
    with the pages built from it.

    - A session's snapshot (UIDL + LIST) is read once per login: the next lease of the same
      pooled session finds it here (matched by the login's identity, never by a time: two
      logins are two maildrop states, however close together).
    - Within ``max_age`` of that login, a listing may be served from it without any session
      (the maildrop as POP3 shows it has not changed), when every header it needs is cached.
    - ``renewal`` makes a burst of callers after ``max_age`` wait for one renewal instead of
      queueing for the session one by one.
    Bounded: ``max_views`` logins and ``max_bytes`` in all (least recently used dropped),
    ``max_pages`` per login; :meth:`purge` drops what has expired (the app calls it on a
    timer, so memory comes back without waiting for a request).
    """

    def __init__(
        self,
        *,
        key: bytes,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        max_views: int = MAX_VIEWS,
        max_pages: int = MAX_PAGES_PER_VIEW,
        max_bytes: int = MAX_VIEW_BYTES,
    ) -> None:
        self._key = key
        self._max_age = max_age
        self._clock = clock
        self._max_views = max_views
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self._bytes = 0
        self._views: OrderedDict[str, _View] = OrderedDict()
        #: view keys whose snapshot a request is renewing now, with the event it sets then
        self._refreshing: dict[str, asyncio.Event] = {}

    def view_key(self, account: Account) -> str:
        return account.digest(self._key)

    async def snapshot(self, session: Session) -> Snapshot:
        """UIDL + LIST of ``session``, read once per login."""
        view_key = self.view_key(session.account)
        view = self._views.get(view_key)
        if view is not None and view.login == session.login:
            return view.snapshot
        snapshot = await _read_snapshot(session)
        view = _View(
            view_key, snapshot, session.login, session.born, weight=snapshot_weight(snapshot)
        )
        self._store(view_key, view)
        return snapshot

    @property
    def bytes(self) -> int:
        """What the kept snapshots and pages are counted for now."""
        return self._bytes

    def purge(self) -> int:
        """Drop the views of logins older than ``max_age`` (never served again); how many."""
        now = self._clock()
        expired = [k for k, v in self._views.items() if now - v.born >= self._max_age]
        for view_key in expired:
            self._pop(view_key)
        return len(expired)

    def live(self, view_key: str) -> _View | None:
        """The view of a login younger than ``max_age``, if there is one."""
        view = self._views.get(view_key)
        if view is None:
            return None
        if self._clock() - view.born >= self._max_age:
            self._pop(view_key)
            return None
        self._views.move_to_end(view_key)
        return view

    def page(self, view: _View, page_key: tuple[str, str | None, int]) -> Page | None:
        return view.pages.get(page_key)

    def remember(self, view: _View, page_key: tuple[str, str | None, int], page: Page) -> None:
        if len(view.pages) >= self._max_pages or page_key in view.pages:
            return
        weight = page_weight(page)
        view.pages[page_key] = page
        view.weight += weight
        if self._views.get(view.key) is view:  # still kept: counted
            self._bytes += weight
            self._shrink()

    def view_of(self, session: Session) -> _View | None:
        """The view holding ``session``'s snapshot (None if it was dropped meanwhile)."""
        view = self._views.get(self.view_key(session.account))
        return view if view is not None and view.login == session.login else None

    def forget(self, account: Account) -> None:
        self._pop(self.view_key(account))

    async def wait_for_renewal(self, view_key: str) -> bool:
        """If another request is renewing ``view_key``'s snapshot, wait for it; whether one
        was."""
        event = self._refreshing.get(view_key)
        if event is None:
            return False
        await event.wait()
        return True

    @contextlib.contextmanager
    def renewal(self, view_key: str) -> Any:
        """Mark ``view_key`` as being renewed for the time of the block (unless another
        request already does); waiters look again when it ends, success or not."""
        if view_key in self._refreshing:
            yield
            return
        event = self._refreshing[view_key] = asyncio.Event()
        try:
            yield
        finally:
            del self._refreshing[view_key]
            event.set()

    def _store(self, view_key: str, view: _View) -> None:
        self._pop(view_key)
        self._views[view_key] = view
        self._bytes += view.weight
        self._shrink()

    def _shrink(self) -> None:
        while self._views and (len(self._views) > self._max_views or self._bytes > self._max_bytes):
            self._pop(next(iter(self._views)))

    def _pop(self, view_key: str) -> None:
        view = self._views.pop(view_key, None)
        if view is not None:
            self._bytes -= view.weight


async def _read_snapshot(session: Session) -> Snapshot:
    try:
        uids, sizes = await session.client.uidl_and_list()
    except POP3ResponseError as exc:
        if exc.command != "UIDL" or exc.code is not None:
            raise  # [SYS/TEMP] and friends are failures, not a missing capability
        raise CapabilityMissingError("UIDL") from exc
    numbers = sorted(uids)
    return Snapshot(
        at=session.opened_at,
        numbers=numbers,
        uids=uids,
        sizes={n: sizes.get(n, 0) for n in numbers},
    )


class Listing:
    """Pages of header summaries. ``recent`` holds summaries as objects; ``cache`` (None
    without Redis: ``recent`` is the in-process cache then) is asked for those it lacks and
    gets what was parsed."""

    def __init__(
        self,
        sessions: SessionSource,
        snapshots: SnapshotCache,
        cache: HeaderCache | None,
        *,
        cache_key: bytes,
        fresh_logins: FreshLogins,
        observer: SessionObserver | None = None,
        recent: RecentSummaries | None = None,
    ) -> None:
        self._sessions = sessions
        self._snapshots = snapshots
        self._cache = cache
        self._recent = RecentSummaries() if recent is None else recent
        self._cache_key = cache_key
        self._cursors = Cursors(cache_key)
        self._fresh_logins = fresh_logins
        self._observer = observer
        #: tasks holding a session to read the next page's headers ahead
        self._reading_ahead: set[asyncio.Task[None]] = set()
        #: logins whose idle session reads ahead for a page served from the cache
        self._idle_reads: set[object] = set()

    async def close(self) -> None:
        """Stop every read-ahead (its session is dropped; nothing is lost but the cache
        entries it would have written)."""
        tasks = list(self._reading_ahead)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _cursor_scope(self, account: Account) -> bytes:
        """What a cursor is bound to: the mailbox as named in the path, and the maildrop
        (upstream and user) behind it."""
        return f"{account.mailbox_id}\0{account.namespace(self._cache_key)}".encode()

    def claim_fresh(self, account: Account) -> FreshClaim | None:
        """A claim on a new login for ``account``'s person, or None (counted) while the last
        one is younger than min_fresh_interval. Give it back if the login fails."""
        claim = self._fresh_logins.claim(account.person(self._cache_key))
        if claim is None and self._observer is not None:
            self._observer.limited("fresh-rationed")
        return claim

    def give_back_fresh(self, claim: FreshClaim | None) -> None:
        """A failed login spends no ration."""
        if claim is not None:
            self._fresh_logins.give_back(claim)

    async def list_messages(
        self,
        account: Account,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        fresh: bool = False,
    ) -> Page:
        check_limit(limit)
        # (the cursor's scope is a keyed digest: worked out only when there is a cursor)
        after = (
            self._cursors.decode(self._cursor_scope(account), cursor, order)
            if cursor is not None
            else None
        )
        snapshots = self._snapshots
        view_key = snapshots.view_key(account)
        page_key = (order, cursor, limit)
        claim = self.claim_fresh(account) if fresh else None
        if fresh and claim is None:
            # Logged in for this mailbox less than min_fresh_interval ago: the newest
            # snapshot is served (the one a login in flight is reading, if there is one).
            fresh = False
            await snapshots.wait_for_renewal(view_key)
        view = None if fresh else snapshots.live(view_key)
        if view is None and not fresh and await snapshots.wait_for_renewal(view_key):
            # Another request of the same login renewed the snapshot meanwhile: a burst of
            # callers after max_age costs one lease, not one each.
            view = snapshots.live(view_key)
        if view is not None:
            # Within max_age of the last login the maildrop as POP3 shows it has not changed:
            # serve from that snapshot, without a session, when the cache has every header
            # of the page. Only uids of this caller's own listing are looked up.
            page = snapshots.page(view, page_key)
            if page is None:
                page = await self._page(
                    account, view.snapshot, order, after, limit, None, idle_login=view.login
                )
                if page is not None:
                    snapshots.remember(view, page_key, page)
            if page is not None:
                return page
        try:
            with snapshots.renewal(view_key):
                page, view = await self._leased_page(account, fresh, order, after, limit)
                if view is not None:
                    snapshots.remember(view, page_key, page)
                return page
        except BaseException:
            self.give_back_fresh(claim)
            raise

    async def _leased_page(
        self,
        account: Account,
        fresh: bool,
        order: Order,
        after: tuple[str | None, int] | None,
        limit: int,
    ) -> tuple[Page, _View | None]:
        """A page read with a session, in a task that may keep the session a little longer
        to read the next page's headers ahead; answered as soon as the page is ready. A
        caller gone before that stops the task (and drops its session)."""
        ready: asyncio.Future[tuple[Page, _View | None]] = (
            asyncio.get_running_loop().create_future()
        )
        task = asyncio.create_task(self._read(account, fresh, order, after, limit, ready))
        self._reading_ahead.add(task)
        task.add_done_callback(self._reading_ahead.discard)
        try:
            return await asyncio.shield(ready)
        except asyncio.CancelledError:
            if not ready.done():
                task.cancel()
            raise

    async def _read(
        self,
        account: Account,
        fresh: bool,
        order: Order,
        after: tuple[str | None, int] | None,
        limit: int,
        ready: asyncio.Future[tuple[Page, _View | None]],
    ) -> None:
        try:
            async with self._sessions.lease(account, fresh=fresh) as session:
                snap = await self._snapshots.snapshot(session)
                view = self._snapshots.view_of(session)

                def answer(page: Page) -> None:
                    if not ready.done():
                        ready.set_result((page, view))

                page = await self._page(account, snap, order, after, limit, session, answer)
                assert page is not None  # with a session every header can be fetched
                answer(page)
        except BaseException as exc:
            if not ready.done():
                # The caller's own failure: it raises there (this task ends quietly).
                if isinstance(exc, Exception):
                    ready.set_exception(exc)
                    return
                ready.cancel()
                raise
            if not isinstance(exc, Exception):
                raise
            # The page was answered; only the read-ahead failed (its session is dropped).
            log.info("reading the next page's headers ahead failed: %s", exc)

    async def _page(
        self,
        account: Account,
        snap: Snapshot,
        order: Order,
        after: tuple[str | None, int] | None,
        limit: int,
        session: Session | None,
        answer: Callable[[Page], None] | None = None,
        idle_login: object | None = None,
    ) -> Page | None:
        """A page of ``snap``; without a session, None unless every header is cached.

        With ``answer``, the next page's headers are read ahead in the same burst (see the
        module's docstring) and ``answer(page)`` is called as soon as the page is ready,
        before the read-ahead ends. With ``idle_login`` (the login that made ``snap``), a
        page served from the cache has the next page's headers read ahead by that login's
        session if it is idle (:meth:`_read_ahead_idle`)."""
        ordered = snap.numbers if order == "asc" else snap.numbers[::-1]
        start = _resume_index(ordered, snap, after, order) if after is not None else 0
        page_numbers = ordered[start : start + limit]
        next_cursor = None
        if start + limit < len(ordered) and page_numbers:
            last = page_numbers[-1]
            next_cursor = self._cursors.encode(
                self._cursor_scope(account), order, snap.uids[last], last
            )
        ahead: list[int] = []
        if (session is None and idle_login is not None) or (
            answer is not None and session is not None and not self._sessions.wanted(account)
        ):
            ahead = ordered[start + limit : start + 2 * limit]

        def ready(items: list[Summary]) -> None:
            if answer is not None:
                answer(Page(items, len(ordered), next_cursor, snap.at))

        items = await self._summaries(account, snap, page_numbers, session, ahead, ready)
        if items is None:
            return None
        if session is None and idle_login is not None and ahead:
            # Whatever the cache had of the next page is held now (see _summaries).
            held = self._recent.held(
                account.namespace(self._cache_key), [snap.uids[n] for n in ahead]
            )
            later = [n for n in ahead if snap.uids[n] not in held]
            if later:
                self._read_ahead_idle(account, snap, idle_login, later)
        return Page(items, len(ordered), next_cursor, snap.at)

    def _read_ahead_idle(
        self, account: Account, snap: Snapshot, login: object, numbers: list[int]
    ) -> None:
        """Read the headers of ``numbers`` not held yet into the held summaries (and the
        header cache), in the background, with the session of ``login`` (whose snapshot
        ``snap`` is) if it is idle and no other lease wants it: never a new login, never a
        wait. At most one per login and :data:`MAX_IDLE_READ_AHEADS` at once."""
        if (
            login in self._idle_reads
            or len(self._idle_reads) >= MAX_IDLE_READ_AHEADS
            or self._sessions.wanted(account)
        ):
            return
        self._idle_reads.add(login)
        task = asyncio.create_task(self._read_idle(account, snap, login, numbers))
        self._reading_ahead.add(task)
        task.add_done_callback(self._reading_ahead.discard)
        # (a callback: a task cancelled before it ran never reaches its own finally)
        task.add_done_callback(lambda _task: self._idle_reads.discard(login))

    async def _read_idle(
        self, account: Account, snap: Snapshot, login: object, numbers: list[int]
    ) -> None:
        try:
            async with self._sessions.lease_idle(account, login) as session:
                if session is not None:
                    await self._summaries(account, snap, numbers, session)
        except Exception as exc:  # only the read-ahead failed (its session is dropped)
            log.info("reading the next page's headers ahead failed: %s", exc)

    async def _summaries(
        self,
        account: Account,
        snap: Snapshot,
        numbers: Sequence[int],
        session: Session | None,
        ahead: Sequence[int] = (),
        ready: Callable[[list[Summary]], None] | None = None,
    ) -> list[Summary] | None:
        """Header summaries for ``numbers``: those held, then from the header cache (if there
        is one), the rest with one pipelined burst of ``TOP n 0``, held and written back to
        the header cache in one go. Without a session, None on any miss.

        ``ahead`` (with a session): more numbers whose headers not cached are read in the
        same burst, into the caches only; ``ready(items)`` is called as soon as ``numbers``
        are all summarized, before the burst ends."""
        namespace = account.namespace(self._cache_key)
        uids = {snap.uids[n] for n in numbers}
        uids.update(snap.uids[n] for n in ahead)
        recent = self._recent
        cache = self._cache
        # What this process holds as objects first; the header cache for the rest.
        found = recent.get_many(namespace, uids)
        if cache is not None and len(found) < len(uids):
            cached = await cache.get_many(namespace, uids.difference(found))
            parsed: dict[str, HeaderSummary] = {}
            for uid, entry in cached.items():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    parsed[uid] = HeaderSummary.from_json(entry)
            if parsed:
                recent.put_many(namespace, parsed)
                found.update(parsed)

        made: list[Summary] | None = None

        def items() -> list[Summary]:
            # Made once: it is first asked for when every number of the page is settled
            # (summarized, or refused), and the read-ahead only adds others.
            nonlocal made
            if made is None:
                uids, sizes = snap.uids, snap.sizes
                made = [Summary(uids[n], sizes[n], found.get(uids[n])) for n in numbers]
            return made

        missing = [n for n in numbers if snap.uids[n] not in found]
        if missing and session is None:
            return None
        wanted = len(missing)
        if wanted == 0 and ready is not None:
            ready(items())
        if session is None:
            return items()
        burst = missing + [n for n in ahead if snap.uids[n] not in found]
        if not burst:
            return items()
        # for the header cache: the page's, then the read-ahead's (none without one)
        fresh: dict[str, dict[str, Any]] | None = None if cache is None else {}
        page_read = asyncio.Event()

        def read(index: int, reply: bytes | POP3ResponseError) -> None:
            # Each header section is read as it arrives, while the server answers the next
            # commands of the pipeline.
            if isinstance(reply, bytes):
                number = burst[index]
                if isinstance(reply, TruncatedBody) and self._observer is not None:
                    # a header section past the TOP cap: summarized from its start
                    self._observer.limited("header-truncated")
                uid = snap.uids[number]
                summary = summarize_headers(reply, size=snap.sizes[number])
                found[uid] = summary
                recent.put(namespace, uid, summary)  # for the next page, as it is
                if fresh is not None:
                    fresh[uid] = summary.to_json()  # for the header cache
            if index == wanted - 1:
                page_read.set()

        async def answer() -> None:
            # The page's headers go to the cache, then the page is answered, while the
            # read-ahead goes on.
            await page_read.wait()
            if cache is not None and fresh:
                page = dict(fresh)
                fresh.clear()
                await cache.set_many(namespace, page)
            assert ready is not None
            ready(items())

        answering = asyncio.create_task(answer()) if wanted and ready is not None else None
        try:
            await session.client.top_each(burst, read)
            if answering is not None:
                await answering
        finally:
            if answering is not None and not answering.done():
                answering.cancel()
        if cache is not None and fresh:
            await cache.set_many(namespace, fresh)
        return items()


def _resume_index(
    ordered: list[int], snap: Snapshot, after: tuple[str | None, int], order: Order
) -> int:
    """Where the page after ``after`` starts. The uid normally identifies the last item; if it
    is gone (deleted meanwhile) or not in the cursor, continue from its message number."""
    uid, number = after
    numbers = snap.by_uid.get(uid) if uid is not None else None
    if numbers:
        last = numbers[0] if order == "asc" else numbers[-1]
        return ordered.index(last) + 1
    for i, n in enumerate(ordered):
        if (order == "asc" and n > number) or (order == "desc" and n < number):
            return i
    return len(ordered)
