"""Delivering events to webhook endpoints: at least once, in order per mailbox per
endpoint, retried for days, then dead-lettered.

Per endpoint and watched mailbox (a *pair*) one delivery is in flight at a time: the head
of the pair's queue (the oldest event the endpoint has not finished with) is attempted until
the receiver answers 2xx, answers a final status, or the retry time runs out; only then does
the next event go. A :class:`DeliveryStore` keeps where each pair is:

- :class:`MemoryDeliveryStore` (the embedded default, one process): a cursor per pair into
  the in-process event log. It **does not survive a restart**: deliveries not finished then
  are not made.
- ``RedisDeliveryStore`` (``redis_delivery``): a consumer group per endpoint on each
  mailbox's Stream, shared by replicas; a lease per pair decides which replica delivers it;
  a replica that takes a pair over claims what another left pending (``XAUTOCLAIM``).

An event id is the same on every attempt and every replica: a receiver that saw one may see
it again (a replica died after the receiver answered), never a different id for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .hooks import Endpoint, Outcome, RetryPolicy, payload
from .log import CursorExpiredError, EventLog, EventLogUnavailableError
from .model import START, Cursor, Event

log = logging.getLogger("gateway.events.delivery")

#: seconds between two looks at a pair with nothing to send: new events wake it (this
#: process's watcher at once, another replica's through the store's announcements), so
#: this is the backstop for a wake-up lost (each look costs Redis round trips)
IDLE_RECHECK = 30.0
#: seconds between two looks at the store's announcements of new events (shared stores)
CHANGES_EVERY = 0.5
#: seconds before a pair is looked at again after Redis failed
UNAVAILABLE_RECHECK = 2.0
#: a pair waiting for a retry is looked at again after at most this long (another replica
#: may have moved it on)
LONGEST_SLEEP = 30.0


@dataclass
class Pending:
    """The head of a pair's queue and how its delivery went so far."""

    #: where it is in the mailbox's log
    ref: str
    #: None when the event was dropped by retention before it could be sent
    event: Event | None
    attempts: int = 0
    first_at: float | None = None
    #: wall time of the next attempt (0: now)
    next_at: float = 0.0


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that failed for good."""

    event: Event
    attempts: int
    first_at: float
    failed_at: float
    #: final (an answer that is not retried) or exhausted (retried until retry_for)
    reason: str
    status: int | None
    detail: str


class DeliveryStore(Protocol):
    durable: bool

    async def setup(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Start queues for new pairs at the log's end (new events from now on)."""
        ...

    async def hold(self, endpoint: str, mailbox: str) -> bool:
        """Whether this process delivers the pair now (takes or renews its lease)."""
        ...

    async def release_all(self) -> None: ...

    async def changed(self) -> list[str]:
        """Mailboxes with new events another process recorded since the last call (a
        shared store; one process alone: none, its watcher tells :meth:`Deliverer.notify`)."""
        ...

    async def head(self, endpoint: str, mailbox: str) -> Pending | None:
        """The oldest event of the pair not finished with, or None."""
        ...

    async def postpone(self, endpoint: str, mailbox: str, pending: Pending) -> None:
        """Record a failed attempt (its attempts, first and next times)."""
        ...

    async def done(self, endpoint: str, mailbox: str, pending: Pending | None) -> None:
        """The head is finished with (delivered, or not for this endpoint)."""
        ...

    async def bury(
        self, endpoint: str, mailbox: str, pending: Pending | None, dead: DeadLetter
    ) -> None:
        """Keep ``dead`` in the endpoint's dead letters, then finish with the head (if
        one is given)."""
        ...

    async def dead_letters(self, endpoint: str, limit: int) -> tuple[list[DeadLetter], int]:
        """The newest ``limit`` dead letters and how many there are."""
        ...

    async def find_dead(self, endpoint: str, event_id: str) -> tuple[str, DeadLetter] | None:
        """The dead letter of ``event_id`` and where it is kept (a ref for
        :meth:`forget_dead` and :meth:`rebury`), left where it is; or None."""
        ...

    async def forget_dead(self, endpoint: str, ref: str) -> None:
        """Remove the dead letter kept at ``ref`` (its retry was delivered); gone already:
        nothing."""
        ...

    async def rebury(self, endpoint: str, ref: str, dead: DeadLetter) -> None:
        """Replace the dead letter kept at ``ref`` by ``dead`` (its retry failed) in one
        step: a crash leaves one or the other, never neither."""
        ...


class Sending(Protocol):
    """What sends one attempt (``sender.Sender``: the HTTP client)."""

    async def send(
        self, endpoint: Endpoint, event_id: str, timestamp: int, body: bytes
    ) -> Outcome: ...

    async def close(self) -> None: ...


class Acknowledged(Protocol):
    """Told of every 2xx (the consume mode: ``consume.Consumer``)."""

    async def delivered(self, endpoint: str, event: Event) -> None: ...


class DeliveryObserver(Protocol):
    def delivery(self, outcome: str) -> None: ...

    def delivery_lag(self, seconds: float) -> None: ...

    def dead_letters(self, endpoint: str, total: int) -> None: ...


@dataclass(frozen=True)
class StepResult:
    #: delivered, retry, dead, skipped (not for this endpoint, or dropped by retention),
    #: waiting (a retry not due yet), idle (nothing to send), elsewhere (another replica
    #: delivers the pair), unavailable (Redis)
    outcome: str
    #: wall time when the pair has something to do again, if known
    next_at: float | None = None
    event_id: str | None = None


class Deliverer:
    """Delivers the events of watched mailboxes to their endpoints; :meth:`step` is one
    look at a pair (at most one attempt), :meth:`run` the loop."""

    def __init__(
        self,
        store: DeliveryStore,
        sender: Sending,
        endpoints: Sequence[Endpoint],
        mailboxes: Sequence[str],
        *,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 32,
        observer: DeliveryObserver | None = None,
        consumer: Acknowledged | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sender = sender
        self.endpoints = {e.name: e for e in endpoints}
        self.pairs = [(e.name, m) for e in endpoints for m in mailboxes if e.wants_mailbox(m)]
        self._by_mailbox: dict[str, list[tuple[str, str]]] = {}
        for pair in self.pairs:
            self._by_mailbox.setdefault(pair[1], []).append(pair)
        self.policy = policy or RetryPolicy()
        self._max_in_flight = max_in_flight
        self._observer = observer
        self.consumer = consumer
        self._clock = clock
        self._wall = wall
        self._wake = asyncio.Event()
        self._due: dict[tuple[str, str], float] = {}
        self._poked: set[tuple[str, str]] = set()
        #: (endpoint, event id) of the dead letters being retried -> set when that retry ends
        self._retrying: dict[tuple[str, str], asyncio.Event] = {}

    async def setup(self) -> None:
        await self.store.setup(self.pairs)
        for name in self.endpoints:
            await self.count_dead(name)

    async def count_dead(self, endpoint: str) -> int:
        """How many dead letters ``endpoint`` has (and the gauge set to it)."""
        _, total = await self.store.dead_letters(endpoint, 0)
        if self._observer is not None:
            self._observer.dead_letters(endpoint, total)
        return total

    def notify(self, mailbox: str, events: Sequence[Event]) -> None:
        """New events were recorded: their pairs have work now."""
        if events:
            self._poke(mailbox)

    def _poke(self, mailbox: str) -> None:
        now = self._clock()
        for pair in self._by_mailbox.get(mailbox, ()):
            self._due[pair] = now
            self._poked.add(pair)
        self._wake.set()

    async def _listen(self) -> None:
        """Wake the pairs of the mailboxes the store announces (other replicas' events)."""
        while True:
            await asyncio.sleep(CHANGES_EVERY)
            try:
                mailboxes = await self.store.changed()
            except EventLogUnavailableError:
                continue  # the pairs look by themselves (IDLE_RECHECK)
            except Exception:  # supervised: the idle looks go on without it
                log.exception("reading the announcements of new events failed")
                continue
            for mailbox in mailboxes:
                self._poke(mailbox)

    def _count(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer.delivery(outcome)

    async def step(self, endpoint_name: str, mailbox: str) -> StepResult:
        """Look at the pair once: finish with its head or make one attempt at it."""
        endpoint = self.endpoints[endpoint_name]
        try:
            if not await self.store.hold(endpoint_name, mailbox):
                return StepResult("elsewhere")
            pending = await self.store.head(endpoint_name, mailbox)
        except EventLogUnavailableError:
            return StepResult("unavailable")
        if pending is None:
            return StepResult("idle")
        event = pending.event
        try:
            if event is None or not endpoint.wants(event):
                await self.store.done(endpoint_name, mailbox, pending)
                if event is None:
                    log.warning(
                        "webhook %s: an event of %s was dropped by retention before delivery",
                        endpoint_name,
                        mailbox,
                    )
                    self._count("expired")
                return StepResult("skipped")
            now = self._wall()
            if pending.next_at > now:
                return StepResult("waiting", pending.next_at, event.id)
            outcome = await self.sender.send(endpoint, event.id, int(now), payload(event))
            return await self._settle(endpoint_name, mailbox, pending, event, outcome)
        except EventLogUnavailableError:
            return StepResult("unavailable")

    async def _settle(
        self, endpoint: str, mailbox: str, pending: Pending, event: Event, outcome: Outcome
    ) -> StepResult:
        now = self._wall()
        attempts = pending.attempts + 1
        first_at = pending.first_at if pending.first_at is not None else now
        if outcome.verdict == "delivered":
            # acknowledged for consume mode before the queue moves on: a crash between the
            # two delivers again, never deletes what was not acknowledged
            if self.consumer is not None:
                await self.consumer.delivered(endpoint, event)
            await self.store.done(endpoint, mailbox, pending)
            self._count("delivered")
            if self._observer is not None:
                self._observer.delivery_lag(max(0.0, now - event.at))
            return StepResult("delivered", None, event.id)
        if outcome.verdict == "retry":
            next_at = now + self.policy.delay(attempts, outcome.retry_after)
            if not self.policy.exhausted(first_at, next_at):
                pending.attempts, pending.first_at, pending.next_at = attempts, first_at, next_at
                await self.store.postpone(endpoint, mailbox, pending)
                self._count("retry")
                return StepResult("retry", next_at, event.id)
            reason = "exhausted"
        else:
            reason = "final"
        dead = DeadLetter(event, attempts, first_at, now, reason, outcome.status, outcome.detail)
        await self.store.bury(endpoint, mailbox, pending, dead)
        self._count(f"dead-{reason}")
        await self.count_dead(endpoint)
        log.warning(
            "webhook %s: event %s of %s dead-lettered (%s after %d attempts: %s)",
            endpoint,
            event.id,
            mailbox,
            reason,
            attempts,
            outcome.detail,
        )
        return StepResult("dead", None, event.id)

    async def retry_dead(self, endpoint_name: str, event_id: str) -> tuple[Outcome, int] | None:
        """One attempt now at a dead letter: delivered, it leaves the dead letters; not, it
        stays (with this attempt counted). None: no such dead letter.

        The dead letter stays where it is until the attempt's outcome is known: a crash (or
        an error, or a cancellation) in between leaves it as it was. Retries of one dead
        letter in this process take turns: one that waited finds it gone when the retry
        before it delivered it (None), so a double request sends it once."""
        retrying = (endpoint_name, event_id)
        while (busy := self._retrying.get(retrying)) is not None:
            await busy.wait()
        finished = self._retrying[retrying] = asyncio.Event()
        try:
            return await self._retry_dead(endpoint_name, event_id)
        finally:
            del self._retrying[retrying]
            finished.set()

    async def _retry_dead(self, endpoint_name: str, event_id: str) -> tuple[Outcome, int] | None:
        endpoint = self.endpoints[endpoint_name]
        found = await self.store.find_dead(endpoint_name, event_id)
        if found is None:
            return None
        ref, dead = found
        event = dead.event
        now = self._wall()
        outcome = await self.sender.send(endpoint, event.id, int(now), payload(event))
        attempts = dead.attempts + 1
        if outcome.verdict == "delivered":
            # acknowledged for consume mode before the dead letter goes: a crash between the
            # two leaves it listed (a retry sends it again), never deletes what was not
            # acknowledged
            if self.consumer is not None:
                await self.consumer.delivered(endpoint_name, event)
            await self.store.forget_dead(endpoint_name, ref)
            self._count("delivered")
            await self.count_dead(endpoint_name)
            return outcome, attempts
        again = DeadLetter(
            event,
            attempts,
            dead.first_at,
            self._wall(),
            _reason(outcome),
            outcome.status,
            outcome.detail,
        )
        await self.store.rebury(endpoint_name, ref, again)
        return outcome, attempts

    async def run(self) -> None:
        """Deliver until cancelled: each pair stepped when it has work, at most
        ``max_in_flight`` steps at once."""
        gate = asyncio.Semaphore(self._max_in_flight)
        running: dict[tuple[str, str], asyncio.Task[None]] = {}
        now = self._clock()
        for pair in self.pairs:
            self._due.setdefault(pair, now)

        async def one(pair: tuple[str, str]) -> None:
            delay = IDLE_RECHECK
            try:
                async with gate:
                    result = await self.step(*pair)
                if result.outcome in ("delivered", "skipped", "dead"):
                    delay = 0.0
                elif result.outcome in ("retry", "waiting") and result.next_at is not None:
                    delay = min(LONGEST_SLEEP, max(0.0, result.next_at - self._wall()))
                elif result.outcome == "unavailable":
                    delay = UNAVAILABLE_RECHECK
            except Exception:  # supervised: one pair's bug must not stop the others
                log.exception("webhook %s: delivery to %s crashed", pair[0], pair[1])
            finally:
                # events recorded during the step: look again at once
                poked = pair in self._poked
                self._due[pair] = self._clock() + (0.0 if poked else delay)
                running.pop(pair, None)
                self._wake.set()

        loop = asyncio.get_running_loop()
        helpers = []
        if self.store.durable:  # shared by replicas: their watchers' events too
            helpers.append(loop.create_task(self._listen(), name="pop3gw-webhook-wake"))
        try:
            while True:
                now = self._clock()
                for pair in self.pairs:
                    if pair not in running and self._due[pair] <= now:
                        self._poked.discard(pair)
                        running[pair] = loop.create_task(
                            one(pair), name=f"pop3gw-webhook-{pair[0]}"
                        )
                waiting = [self._due[p] for p in self.pairs if p not in running]
                pause = min(waiting, default=now + 1.0) - now
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(max(pause, 0.01), 1.0)):
                        await self._wake.wait()
        finally:
            tasks = [*running.values(), *helpers]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        try:
            await self.store.release_all()
        except Exception:  # they lapse by themselves
            log.warning("webhook leases not released; they lapse by themselves")
        await self.sender.close()


def _reason(outcome: Outcome) -> str:
    return "final" if outcome.verdict == "final" else "exhausted"


def dead_letter_fields(dead: DeadLetter) -> dict[str, str]:
    """A dead letter as flat strings (a Redis Stream entry)."""
    event = dead.event
    return {
        "event": json.dumps(
            {
                "id": event.id,
                "kind": event.kind,
                "mailbox": event.mailbox,
                "cursor": str(event.cursor),
                "at": event.at,
                "data": event.data,
            },
            ensure_ascii=False,
        ),
        "attempts": str(dead.attempts),
        "first_at": repr(dead.first_at),
        "failed_at": repr(dead.failed_at),
        "reason": dead.reason,
        "status": "" if dead.status is None else str(dead.status),
        "detail": dead.detail,
    }


def dead_letter_of(fields: dict[str, str]) -> DeadLetter:
    raw = json.loads(fields["event"])
    event = Event(
        raw["id"], raw["kind"], raw["mailbox"], Cursor.parse(raw["cursor"]), raw["at"], raw["data"]
    )
    status = fields.get("status", "")
    return DeadLetter(
        event,
        int(fields["attempts"]),
        float(fields["first_at"]),
        float(fields["failed_at"]),
        fields["reason"],
        int(status) if status else None,
        fields.get("detail", ""),
    )


class MemoryDeliveryStore:
    """Where each pair is, in this process: a cursor into the in-process log and the head's
    retry state; dead letters in a bounded deque per endpoint. Nothing survives a restart."""

    durable = False

    def __init__(self, events: EventLog, *, dead_letter_max: int = 10_000) -> None:
        self._log = events
        self._dead_max = dead_letter_max
        self._cursors: dict[tuple[str, str], Cursor | None] = {}
        self._retry: dict[tuple[str, str], Pending] = {}
        #: per endpoint, (ref, dead letter) oldest first; a ref is never used twice
        self._dead: dict[str, deque[tuple[str, DeadLetter]]] = {}
        self._refs = itertools.count(1)

    async def setup(self, pairs: Sequence[tuple[str, str]]) -> None:
        for endpoint, mailbox in pairs:
            if (endpoint, mailbox) not in self._cursors:
                self._cursors[endpoint, mailbox] = (await self._log.read(mailbox, None, 0)).last

    async def hold(self, endpoint: str, mailbox: str) -> bool:
        return True

    async def release_all(self) -> None:
        return None

    async def changed(self) -> list[str]:
        return []  # one process: its watcher tells the deliverer itself

    async def head(self, endpoint: str, mailbox: str) -> Pending | None:
        pair = (endpoint, mailbox)
        cursor = self._cursors.get(pair, START)
        try:
            found = await self._log.read(mailbox, cursor, 1)
        except CursorExpiredError:
            # events after the cursor were dropped by retention: the oldest kept is next
            self._cursors[pair] = None
            self._retry.pop(pair, None)
            return Pending(str(cursor), None)
        if not found.events:
            return None
        event = found.events[0]
        ref = str(event.cursor)
        kept = self._retry.get(pair)
        if kept is not None and kept.ref == ref:
            return Pending(ref, event, kept.attempts, kept.first_at, kept.next_at)
        return Pending(ref, event)

    async def postpone(self, endpoint: str, mailbox: str, pending: Pending) -> None:
        self._retry[endpoint, mailbox] = pending

    async def done(self, endpoint: str, mailbox: str, pending: Pending | None) -> None:
        pair = (endpoint, mailbox)
        self._retry.pop(pair, None)
        if pending is not None and pending.event is not None:
            self._cursors[pair] = pending.event.cursor

    async def bury(
        self, endpoint: str, mailbox: str, pending: Pending | None, dead: DeadLetter
    ) -> None:
        self._keep(endpoint, dead)
        if pending is not None:
            await self.done(endpoint, mailbox, pending)

    def _keep(self, endpoint: str, dead: DeadLetter) -> None:
        box = self._dead.get(endpoint)
        if box is None:
            box = self._dead[endpoint] = deque(maxlen=self._dead_max)
        box.append((str(next(self._refs)), dead))

    async def dead_letters(self, endpoint: str, limit: int) -> tuple[list[DeadLetter], int]:
        box = self._dead.get(endpoint, deque())
        return [dead for _, dead in reversed(box)][:limit], len(box)

    async def find_dead(self, endpoint: str, event_id: str) -> tuple[str, DeadLetter] | None:
        for ref, dead in reversed(self._dead.get(endpoint, deque())):
            if dead.event.id == event_id:
                return ref, dead
        return None

    async def forget_dead(self, endpoint: str, ref: str) -> None:
        box = self._dead.get(endpoint, deque())
        for kept in box:
            if kept[0] == ref:
                box.remove(kept)
                return

    async def rebury(self, endpoint: str, ref: str, dead: DeadLetter) -> None:
        # the old one out first: a full deque then drops nothing else for the new one
        await self.forget_dead(endpoint, ref)
        self._keep(endpoint, dead)
