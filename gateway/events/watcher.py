"""Watching configured mailboxes: each poll one session, logged in for it and ended after
it (UIDL and LIST, then pipelined ``TOP n 0`` for what is new), diffed against the
mailbox's seen-set, and the change committed to the event log together with its events.
The next poll is due an interval after the last one logged in: logins are an interval
apart, and a wait for a free slot does not add up from poll to poll.

POP3 has no push and no flags: new = unique-ids not in the seen-set. A poll only reads
(UIDL, LIST, TOP): it never marks mail as downloaded, and on an upstream with read-only
sessions the session ends without QUIT.

- The first poll of a mailbox records a baseline and reports nothing (unless the mailbox
  asks for ``watch_report_existing``).
- A listing that shares no unique-id with the seen-set (both non-empty) is one
  ``mailbox.reset``, not thousands of news and removals.
- At most ``max_changes`` messages are reported per poll, oldest first; the next poll
  follows within a second.
- Failures: a rejected login (or a credential that cannot be sent, a server without UIDL)
  is reported at once as ``mailbox.error``, other failures after ``error_after``
  consecutive polls; one error per episode, and ``mailbox.recovered`` on the next success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ..accounts import Account
from ..mail import HeaderSummary
from ..mail import summarize as summarize_headers
from ..pop3 import POP3ResponseError
from ..service import (
    CapabilityMissingError,
    SessionSource,
    connection_failure_words,
    end_session,
)
from ..service import failure_reason as service_failure_reason
from .log import CommitConflictError, EventLog, EventLogUnavailableError
from .model import (
    MAILBOX_ERROR,
    MAILBOX_RECOVERED,
    MAILBOX_RESET,
    MESSAGE_NEW,
    MESSAGE_REMOVED,
    Commit,
    Draft,
    Event,
    Health,
    WatchState,
    event_id,
    message_fields,
    set_digest,
)

log = logging.getLogger("gateway.events")

#: failures reported at once: waiting would not help
IMMEDIATE = frozenset({"auth", "argument", "capability-missing", "needs-reauth"})
#: seconds before the next poll when one poll could not report everything
AGAIN_SOON = 1.0


@dataclass(frozen=True)
class WatchSpec:
    """A watched mailbox."""

    account: Account
    interval: float = 60.0
    report_existing: bool = False

    @property
    def mailbox(self) -> str:
        return self.account.mailbox_id


@dataclass(frozen=True)
class PollResult:
    #: ok, failed (the mailbox), conflict (state moved meanwhile), unavailable (the log),
    #: elsewhere (another replica holds the mailbox's lease)
    outcome: str
    events: tuple[Event, ...] = ()
    #: the poll could not report everything: poll again soon
    more: bool = False
    #: the watcher's clock once the poll's session was logged in (None: no session): the
    #: next poll is due an interval after it, so logins are an interval apart and a wait
    #: for a free slot does not add up from poll to poll
    began: float | None = None


class WatchObserver(Protocol):
    """What the watcher reports (implemented by the metrics)."""

    def event_recorded(self, kind: str) -> None: ...

    def polled(self, outcome: str, seconds: float) -> None: ...


class WatchLeases(Protocol):
    """Who polls a mailbox when replicas share a log: one of them at a time."""

    async def hold(self, mailbox: str, interval: float) -> str | None:
        """A token when this process holds (or now took) the mailbox's lease, else None."""
        ...

    async def renew(self) -> None:
        """Renew the leases held (called a few times per lease TTL)."""
        ...

    async def release_all(self) -> None: ...


def iso(moment: float | None) -> str | None:
    """Unix seconds as RFC 3339 (UTC, milliseconds)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def failure_words(exc: BaseException, reason: str) -> str:
    """Our own words for a failed poll (never the server's text, never a secret)."""
    if reason == "auth":
        return "the mail server rejected the configured login"
    if reason == "capability-missing":
        return "the mail server does not offer UIDL: new mail cannot be told apart"
    return connection_failure_words(exc) or f"the mailbox could not be polled ({reason})"


class Watcher:
    """Polls watched mailboxes on their intervals; :meth:`poll` is one poll."""

    def __init__(
        self,
        sessions: SessionSource,
        events: EventLog,
        specs: Sequence[WatchSpec],
        *,
        max_changes: int = 500,
        error_after: int = 3,
        max_concurrent: int = 8,
        leases: WatchLeases | None = None,
        observer: WatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._log = events
        self.specs = {spec.mailbox: spec for spec in specs}
        self._max_changes = max_changes
        self._error_after = error_after
        self._max_concurrent = max_concurrent
        self._leases = leases
        self._observer = observer
        self._clock = clock
        self._wall = wall
        #: called with (mailbox, events) after every commit that recorded events
        self.listeners: list[Callable[[str, Sequence[Event]], None]] = []
        #: set to make :meth:`run` look at what is due now
        self._wake = asyncio.Event()

    async def poll(self, mailbox: str) -> PollResult:
        """Poll ``mailbox`` once and commit what it found."""
        spec = self.specs[mailbox]
        started = self._clock()
        result = await self._poll(spec)
        if self._observer is not None:
            self._observer.polled(result.outcome, self._clock() - started)
            for event in result.events:
                self._observer.event_recorded(event.kind)
        if result.events:
            for listener in self.listeners:
                listener(mailbox, result.events)
        return result

    async def _poll(self, spec: WatchSpec) -> PollResult:
        fence = None
        if self._leases is not None:
            try:
                fence = await self._leases.hold(spec.mailbox, spec.interval)
            except EventLogUnavailableError:
                return PollResult("unavailable")
            if fence is None:
                return PollResult("elsewhere")
        try:
            state = await self._log.state(spec.mailbox)
        except EventLogUnavailableError:
            return PollResult("unavailable")
        outcome = "ok"
        more = False
        began: float | None = None
        try:
            commit, more, began = await self._observe(spec, state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = "failed"
            commit = self._failed(spec, state, exc)
        try:
            events = await self._log.commit(commit, fence=fence)
        except CommitConflictError:
            return PollResult("conflict")
        except EventLogUnavailableError:
            return PollResult("unavailable")
        return PollResult(outcome, tuple(events), more, began)

    async def _observe(self, spec: WatchSpec, state: WatchState) -> tuple[Commit, bool, float]:
        mailbox = spec.mailbox
        drafts: list[Draft] = []
        health = state.health
        if health.reported:
            drafts.append(
                Draft(
                    event_id(mailbox, MAILBOX_RECOVERED, str(health.episode)),
                    MAILBOX_RECOVERED,
                    {"failures": health.failures, "since": iso(health.since)},
                )
            )
        recovered = Health(episode=health.episode)
        async with self._sessions.lease(spec.account, fresh=True) as session:
            began = self._clock()
            client = session.client
            try:
                uids, sizes = await client.uidl_and_list()
            except POP3ResponseError as exc:
                if exc.command != "UIDL" or exc.code is not None:
                    raise
                raise CapabilityMissingError("UIDL") from exc
            # one number per unique-id (some servers share a uid between identical messages)
            current: dict[str, int] = {}
            for number in sorted(uids):
                current.setdefault(uids[number], number)
            seen = state.seen if state.baseline else set()
            if not state.baseline and not spec.report_existing:
                commit = Commit(
                    mailbox,
                    state.version,
                    add=tuple(current),
                    remove=tuple(state.seen - current.keys()),
                    health=recovered,
                    events=tuple(drafts),
                )
                await end_session(client, spec.account)
                return commit, False, began
            if seen and current and seen.isdisjoint(current):
                drafts.append(
                    Draft(
                        event_id(mailbox, MAILBOX_RESET, set_digest(set(current))),
                        MAILBOX_RESET,
                        {"previous_messages": len(seen), "messages": len(current)},
                    )
                )
                commit = Commit(
                    mailbox,
                    state.version,
                    add=tuple(current),
                    remove=tuple(seen),
                    health=recovered,
                    events=tuple(drafts),
                )
                await end_session(client, spec.account)
                return commit, False, began
            new = [uid for uid in current if uid not in seen]
            gone = sorted(seen - current.keys())
            budget = self._max_changes
            more = len(new) + len(gone) > budget
            new = new[:budget]
            gone = gone[: budget - len(new)]
            numbers = [current[uid] for uid in new]
            headers: dict[int, HeaderSummary] = {}

            def read(index: int, reply: bytes | POP3ResponseError) -> None:
                if isinstance(reply, bytes):
                    number = numbers[index]
                    headers[number] = summarize_headers(reply, size=sizes.get(number, 0))

            if numbers:
                await client.top_each(numbers, read)
            # the next poll logs in anew (new mail shows only in a new session): this one
            # would sit idle in the pool, holding a slot another poll waits for
            await end_session(client, spec.account)
        for uid, number in zip(new, numbers, strict=True):
            drafts.append(
                Draft(
                    event_id(mailbox, MESSAGE_NEW, uid),
                    MESSAGE_NEW,
                    message_fields(uid, sizes.get(number, 0), headers.get(number)),
                )
            )
        for uid in gone:
            drafts.append(
                Draft(
                    event_id(mailbox, MESSAGE_REMOVED, uid),
                    MESSAGE_REMOVED,
                    {"id": message_fields(uid, 0, None)["id"], "uid": uid},
                )
            )
        commit = Commit(
            mailbox,
            state.version,
            add=tuple(new),
            remove=tuple(gone),
            health=recovered,
            events=tuple(drafts),
        )
        return commit, more, began

    def _failed(self, spec: WatchSpec, state: WatchState, exc: BaseException) -> Commit:
        reason = service_failure_reason(exc)
        health = state.health.copy()
        health.failures += 1
        if health.since is None:
            health.since = self._wall()
        drafts: tuple[Draft, ...] = ()
        if not health.reported and (reason in IMMEDIATE or health.failures >= self._error_after):
            health.episode += 1
            health.reported = True
            drafts = (
                Draft(
                    event_id(spec.mailbox, MAILBOX_ERROR, str(health.episode)),
                    MAILBOX_ERROR,
                    {
                        "reason": reason,
                        "detail": failure_words(exc, reason),
                        "failures": health.failures,
                        "since": iso(health.since),
                    },
                ),
            )
        log.info(
            "watched mailbox %s: poll failed (%s), %d in a row",
            spec.mailbox,
            reason,
            health.failures,
        )
        return Commit(
            spec.mailbox, state.version, baseline=state.baseline, health=health, events=drafts
        )

    async def run(self) -> None:
        """Poll every watched mailbox on its interval, at most ``max_concurrent`` at once,
        until cancelled. First polls are spread over the first few seconds."""
        specs = list(self.specs.values())
        now = self._clock()
        due = {
            spec.mailbox: now + min(spec.interval, 5.0) * i / max(1, len(specs))
            for i, spec in enumerate(specs)
        }
        running: dict[str, asyncio.Task[None]] = {}
        gate = asyncio.Semaphore(self._max_concurrent)
        wake = self._wake
        leases = self._leases
        # leases live half an interval: renewed six times per shortest one
        renew_every = max(0.2, min((s.interval for s in specs), default=60.0) / 6)
        renewed = self._clock()

        async def one(spec: WatchSpec) -> None:
            delay = spec.interval
            began: float | None = None
            try:
                async with gate:
                    result = await self.poll(spec.mailbox)
                if result.more:
                    delay = AGAIN_SOON
                elif result.outcome == "elsewhere":
                    delay = spec.interval / 2  # the holder's lease outlives it by no more
                else:
                    began = result.began
            except Exception:  # supervised: one mailbox's bug must not stop the others
                log.exception("watched mailbox %s: poll crashed", spec.mailbox)
            finally:
                due[spec.mailbox] = (self._clock() if began is None else began) + delay
                running.pop(spec.mailbox, None)
                wake.set()

        try:
            while True:
                now = self._clock()
                if leases is not None and now - renewed >= renew_every:
                    renewed = now
                    try:
                        await leases.renew()
                    except Exception:  # supervised: the leases then lapse, others take over
                        log.exception("renewing the watch leases failed")
                for spec in specs:
                    name = spec.mailbox
                    if name not in running and due[name] <= now:
                        running[name] = asyncio.get_running_loop().create_task(
                            one(spec), name=f"pop3gw-watch-{name}"
                        )
                waiting = [due[s.mailbox] for s in specs if s.mailbox not in running]
                if leases is not None:
                    waiting.append(renewed + renew_every)
                pause = min(waiting, default=now + 1.0) - now
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(max(pause, 0.01), 1.0)):
                        await wake.wait()
        finally:
            tasks = list(running.values())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        """Give back the leases held (shutdown): another replica takes over at once."""
        if self._leases is not None:
            try:
                await self._leases.release_all()
            except Exception:  # they lapse by themselves within half an interval
                log.warning("watch leases not released; they lapse by themselves")
