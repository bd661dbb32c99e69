"""Webhook deliveries on Redis, shared by replicas.

- Each endpoint is a consumer group (``hook:<endpoint>``) on the Stream of every mailbox it
  takes events from (``pop3gw:v1:ev:{m}:log``); the group's pending entries are the
  deliveries under way, its last-delivered id where the endpoint is.
- One replica at a time delivers a pair (endpoint, mailbox): a lease
  ``pop3gw:v1:ev:{m}:hook:<endpoint>:lease`` (a random token, ``SET NX`` with a TTL,
  renewed at every step). One delivery in flight per pair keeps the events in order.
- A replica that takes a pair claims everything pending in its group with ``XAUTOCLAIM``
  (what a dead replica left), then delivers its own pending entries oldest first before
  reading new ones (``XREADGROUP ... >``).
- The head's retry state (attempts, first and next attempt) is a Hash beside it
  (``...:hook:<endpoint>:retry``), so another replica carries on the same schedule.
- New events of any replica's watcher wake the queues of every replica: :meth:`changed`
  reads the mailboxes announced on ``pop3gw:v1:ev:changed`` since its last look.
- Dead letters: a Stream per endpoint, ``pop3gw:v1:wh:{<endpoint>}:dead``, capped at
  ``dead_letter_max`` entries. A dead letter is written before its entry is acknowledged: a
  crash between the two delivers it once more, never loses it. A retry of one leaves it in
  the Stream during the attempt and then removes it by its entry id (delivered) or
  replaces it (``XDEL`` + ``XADD`` in one ``MULTI``: failed again): a crash at any point
  leaves it listed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from ..redis import SharedRedis
from .delivery import DeadLetter, Pending, dead_letter_fields, dead_letter_of
from .redis_log import _RELEASE, _RENEW, CHANGED, _event, _RedisUser, _text, key

#: entries claimed per XAUTOCLAIM call, and calls per takeover
CLAIM_COUNT = 100
CLAIM_ROUNDS = 100
#: announcements of new events read per look at most
CHANGED_COUNT = 1000


def group(endpoint: str) -> str:
    return f"hook:{endpoint}"


def dead_key(endpoint: str) -> str:
    return f"pop3gw:v1:wh:{{{endpoint}}}:dead"


class RedisDeliveryStore(_RedisUser):
    durable = True

    def __init__(
        self, redis: SharedRedis, *, lease_ms: int = 30_000, dead_letter_max: int = 10_000
    ) -> None:
        super().__init__(redis)
        #: this replica's name in the consumer groups
        self.consumer = "replica-" + secrets.token_hex(8)
        self._lease_ms = lease_ms
        self._dead_max = dead_letter_max
        #: pairs whose lease this process holds -> its token
        self.held: dict[tuple[str, str], str] = {}
        #: the last announcement of new events read (None: not looked yet)
        self._changed_from: str | None = None
        #: held pairs known to have nothing pending of ours: their head is read as new at
        #: once (one round trip, and no retry state to read: it was never attempted)
        self._clean: set[tuple[str, str]] = set()
        #: per pair, the head read as new while the pair was clean (the one entry pending):
        #: acknowledged, the pair is clean again
        self._fresh: dict[tuple[str, str], str] = {}

    async def setup(self, pairs: Sequence[tuple[str, str]]) -> None:
        """A group per pair, starting at the Stream's end (a new endpoint gets new events)."""
        for endpoint, mailbox in pairs:
            await self._call("webhook setup", self._create, endpoint, mailbox, "$")

    async def _create(self, endpoint: str, mailbox: str, start: str) -> None:
        try:
            await self._redis.client.xgroup_create(
                key(mailbox, "log"), group(endpoint), id=start, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def changed(self) -> list[str]:
        """The mailboxes announced to have new events since the last look (by any replica's
        watcher); the first look only finds where the announcements end."""
        return await self._call("webhook wake-ups", self._changed)

    async def _changed(self) -> list[str]:
        client = self._redis.client
        if self._changed_from is None:
            last: Any = await client.xrevrange(CHANGED, count=1)
            self._changed_from = _text(last[0][0]) if last else "0-0"
            return []
        reply: Any = await client.xread({CHANGED: self._changed_from}, count=CHANGED_COUNT)
        if not reply:
            return []
        entries = reply[0][1]
        self._changed_from = _text(entries[-1][0])
        return list(dict.fromkeys(_fields(fields).get("m", "") for _, fields in entries))

    # -- leases -------------------------------------------------------------------------------
    async def hold(self, endpoint: str, mailbox: str) -> bool:
        lease = key(mailbox, f"hook:{endpoint}:lease")
        token = self.held.get((endpoint, mailbox))
        if token is not None:
            renewed = await self._call(
                "webhook lease", self._script(_RENEW), [lease], [token, self._lease_ms]
            )
            if renewed:
                return True
            del self.held[endpoint, mailbox]
        self._clean.discard((endpoint, mailbox))
        self._fresh.pop((endpoint, mailbox), None)
        token = secrets.token_hex(16)
        won = await self._call("webhook lease", self._set, lease, token)
        if not won:
            return False
        self.held[endpoint, mailbox] = token
        # a new holder: whatever another replica left pending is ours now
        await self._call("webhook claim", self._claim, endpoint, mailbox)
        return True

    async def _set(self, lease: str, token: str) -> Any:
        return await self._redis.client.set(lease, token, nx=True, px=self._lease_ms)

    async def _claim(self, endpoint: str, mailbox: str) -> None:
        client = self._redis.client
        start = "0-0"
        for _ in range(CLAIM_ROUNDS):
            try:
                reply = await client.xautoclaim(
                    key(mailbox, "log"),
                    group(endpoint),
                    self.consumer,
                    min_idle_time=0,
                    start_id=start,
                    count=CLAIM_COUNT,
                )  # (not JUSTID: redis-py then drops the cursor of the next call)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create(endpoint, mailbox, "0")
                return
            start = _text(reply[0])
            if start == "0-0":
                return

    async def release_all(self) -> None:
        held, self.held = self.held, {}
        self._clean.clear()
        self._fresh.clear()
        if not held:
            return

        async def release() -> None:
            script = self._script(_RELEASE)
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for (endpoint, mailbox), token in held.items():
                    lease = key(mailbox, f"hook:{endpoint}:lease")
                    await script(keys=[lease], args=[token], client=pipe)
                await pipe.execute()

        await self._call("webhook lease", release)

    # -- the queue ----------------------------------------------------------------------------
    async def head(self, endpoint: str, mailbox: str) -> Pending | None:
        return await self._call("webhook head", self._head, endpoint, mailbox)

    async def _read(self, endpoint: str, mailbox: str, start: str) -> list[Any]:
        client = self._redis.client
        log = key(mailbox, "log")
        reply: Any
        try:
            reply = await client.xreadgroup(group(endpoint), self.consumer, {log: start}, count=1)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # the group is gone (Redis lost its data): everything still in the Stream
            await self._create(endpoint, mailbox, "0")
            reply = await client.xreadgroup(group(endpoint), self.consumer, {log: start}, count=1)
        return list(reply[0][1]) if reply else []

    async def _head(self, endpoint: str, mailbox: str) -> Pending | None:
        pair = (endpoint, mailbox)
        entries = []
        if pair not in self._clean:
            entries = await self._read(endpoint, mailbox, "0")  # ours, pending: oldest first
            if not entries:
                self._clean.add(pair)
        if not entries:
            entries = await self._read(endpoint, mailbox, ">")
            if not entries:
                return None
            entry_id, fields = entries[0]
            ref = _text(entry_id)
            # pending now: the pair is clean again only once this one is acknowledged
            self._clean.discard(pair)
            self._fresh[pair] = ref
            event = _event(mailbox, entries[0]) if fields else None
            return Pending(ref, event)  # new: never attempted
        self._clean.discard(pair)  # there may be more than this one pending
        self._fresh.pop(pair, None)
        entry_id, fields = entries[0]
        ref = _text(entry_id)
        event = _event(mailbox, entries[0]) if fields else None
        raw = await self._redis.client.hgetall(_retry_key(endpoint, mailbox))
        state = {_text(k): _text(v) for k, v in raw.items()}
        if state.get("ref") != ref:
            return Pending(ref, event)
        first = state.get("first_at", "")
        return Pending(
            ref,
            event,
            int(state.get("attempts", "0")),
            float(first) if first else None,
            float(state.get("next_at", "0")),
        )

    async def postpone(self, endpoint: str, mailbox: str, pending: Pending) -> None:
        mapping = {
            "ref": pending.ref,
            "attempts": pending.attempts,
            "first_at": "" if pending.first_at is None else repr(pending.first_at),
            "next_at": repr(pending.next_at),
        }
        await self._call(
            "webhook retry",
            self._redis.client.hset,
            _retry_key(endpoint, mailbox),
            None,
            None,
            mapping,
        )

    async def done(self, endpoint: str, mailbox: str, pending: Pending | None) -> None:
        if pending is None:
            return

        async def ack() -> None:
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.xack(key(mailbox, "log"), group(endpoint), pending.ref)
                pipe.delete(_retry_key(endpoint, mailbox))
                await pipe.execute()

        await self._call("webhook ack", ack)
        pair = (endpoint, mailbox)
        if self._fresh.get(pair) == pending.ref:
            del self._fresh[pair]
            self._clean.add(pair)

    async def bury(
        self, endpoint: str, mailbox: str, pending: Pending | None, dead: DeadLetter
    ) -> None:
        async def add() -> None:
            await self._redis.client.xadd(
                dead_key(endpoint),
                dead_letter_fields(dead),  # type: ignore[arg-type]  # str values are fine
                maxlen=self._dead_max,
                approximate=False,
            )

        await self._call("webhook dead letter", add)
        await self.done(endpoint, mailbox, pending)

    async def dead_letters(self, endpoint: str, limit: int) -> tuple[list[DeadLetter], int]:
        async def read() -> tuple[list[Any], int]:
            client = self._redis.client
            if limit <= 0:  # only the count
                return [], int(await client.xlen(dead_key(endpoint)))
            async with client.pipeline(transaction=False) as pipe:
                pipe.xrevrange(dead_key(endpoint), count=limit)
                pipe.xlen(dead_key(endpoint))
                entries, total = await pipe.execute()
            return entries, int(total)

        entries, total = await self._call("webhook dead letters", read, background=False)
        return [dead_letter_of(_fields(f)) for _, f in entries], total

    async def find_dead(self, endpoint: str, event_id: str) -> tuple[str, DeadLetter] | None:
        return await self._call("webhook dead letters", self._find_dead, endpoint, event_id)

    async def _find_dead(self, endpoint: str, event_id: str) -> tuple[str, DeadLetter] | None:
        client = self._redis.client
        end = "+"
        while True:  # newest first, a page at a time (at most dead_letter_max entries)
            entries: Any = await client.xrevrange(dead_key(endpoint), max=end, count=500)
            for entry_id, raw in entries:
                dead = dead_letter_of(_fields(raw))
                if dead.event.id == event_id:
                    return _text(entry_id), dead
            if len(entries) < 500:
                return None
            end = f"({_text(entries[-1][0])}"

    async def forget_dead(self, endpoint: str, ref: str) -> None:
        await self._call("webhook dead letters", self._redis.client.xdel, dead_key(endpoint), ref)

    async def rebury(self, endpoint: str, ref: str, dead: DeadLetter) -> None:
        async def replace() -> None:
            # one transaction: a crash leaves the old entry or the new one, never neither
            # (the old one out first: a full Stream then trims nothing else for the new one)
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.xdel(dead_key(endpoint), ref)
                pipe.xadd(
                    dead_key(endpoint),
                    dead_letter_fields(dead),  # type: ignore[arg-type]  # str values are fine
                    maxlen=self._dead_max,
                    approximate=False,
                )
                await pipe.execute()

        await self._call("webhook dead letter", replace)


def _retry_key(endpoint: str, mailbox: str) -> str:
    return key(mailbox, f"hook:{endpoint}:retry")


def _fields(raw: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
