"""Consume mode: a watched mailbox whose new messages are deleted from the server once every
webhook endpoint subscribed to its ``message.new`` answered 2xx for it.

The POP3-to-webhook bridge: mail is handed on, then removed. A message is deleted only
after *every* subscribed endpoint acknowledged it (one that dead-lettered it never did: the
message stays). Deletes go through the API's delete rule (``service.deletes``): one
``DELE``..``QUIT`` transaction, done only once ``QUIT`` answered ``+OK``; anything else
leaves the message on the server and the unique-id due, to be tried again.

What is acknowledged and what is due is kept by a :class:`ConsumeStore`: in process
(:class:`MemoryConsumeStore`), or in Redis beside the mailbox's log
(``pop3gw:v1:ev:{m}:consume:acked:<uid>``, ``...:consume:due``), shared by replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from ..redis import SharedRedis
from .log import EventLogUnavailableError
from .model import MESSAGE_NEW, Event
from .redis_log import _RedisUser, _text, key

log = logging.getLogger("gateway.events.consume")

#: unique-ids deleted in one transaction at most (the API's batch limit)
BATCH = 500
#: seconds between two sweeps when nothing woke the sweeper
SWEEP_EVERY = 30.0

#: (mailbox, unique-ids) -> the unique-ids no longer on the server (deleted, or gone
#: already); raises when the transaction did not end with QUIT's +OK
Deleter = Callable[[str, Sequence[str]], Awaitable[Sequence[str]]]

_ACK = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 4, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then return 0 end
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""


class ConsumeStore(Protocol):
    async def acknowledge(
        self, mailbox: str, uid: str, endpoint: str, subscribers: frozenset[str]
    ) -> bool:
        """Record ``endpoint``'s 2xx; True when every subscriber has now acknowledged
        (the unique-id is then due for deletion)."""
        ...

    async def due(self, mailbox: str, limit: int) -> list[str]: ...

    async def settled(self, mailbox: str, uids: Sequence[str]) -> None:
        """These are off the server: no longer due."""
        ...


class MemoryConsumeStore:
    def __init__(self, *, max_due: int = 100_000) -> None:
        self._acked: dict[tuple[str, str], set[str]] = {}
        self._due: dict[str, dict[str, None]] = {}
        self._max = max_due

    async def acknowledge(
        self, mailbox: str, uid: str, endpoint: str, subscribers: frozenset[str]
    ) -> bool:
        acked = self._acked.setdefault((mailbox, uid), set())
        acked.add(endpoint)
        if not subscribers <= acked:
            if len(self._acked) > self._max:  # bounded: the oldest partial ones go
                self._acked.pop(next(iter(self._acked)))
            return False
        del self._acked[mailbox, uid]
        due = self._due.setdefault(mailbox, {})
        if len(due) < self._max:  # past it the message stays on the server (safe side)
            due[uid] = None
        return True

    async def due(self, mailbox: str, limit: int) -> list[str]:
        return list(self._due.get(mailbox, {}))[:limit]

    async def settled(self, mailbox: str, uids: Sequence[str]) -> None:
        due = self._due.get(mailbox, {})
        for uid in uids:
            due.pop(uid, None)


class RedisConsumeStore(_RedisUser):
    """Acknowledgements and due deletions in Redis; acknowledgements of a message expire
    after ``ack_ttl`` seconds (a delivery retried longer than that is dead-lettered)."""

    def __init__(self, redis: SharedRedis, *, ack_ttl: float = 8 * 24 * 3600.0) -> None:
        super().__init__(redis)
        self._ttl_ms = int(ack_ttl * 1000)

    async def acknowledge(
        self, mailbox: str, uid: str, endpoint: str, subscribers: frozenset[str]
    ) -> bool:
        keys = [key(mailbox, f"consume:acked:{uid}"), key(mailbox, "consume:due")]
        args: list[Any] = [endpoint, self._ttl_ms, uid, *sorted(subscribers)]
        done = await self._call("consume ack", self._script(_ACK), keys, args)
        return bool(done)

    async def due(self, mailbox: str, limit: int) -> list[str]:
        async def read() -> list[str]:
            found = await self._redis.client.srandmember(key(mailbox, "consume:due"), limit)
            return [_text(u) for u in found or []]

        return await self._call("consume due", read)

    async def settled(self, mailbox: str, uids: Sequence[str]) -> None:
        if uids:
            await self._call(
                "consume settled", self._redis.client.srem, key(mailbox, "consume:due"), *uids
            )


class Consumer:
    """Deletes what every subscribed endpoint acknowledged, mailbox by mailbox."""

    def __init__(
        self,
        store: ConsumeStore,
        deleter: Deleter,
        subscribers: Mapping[str, frozenset[str]],
    ) -> None:
        self.store = store
        self._delete = deleter
        #: consumed mailbox -> the endpoints subscribed to its message.new
        self.subscribers = dict(subscribers)
        self._wake = asyncio.Event()

    async def delivered(self, endpoint: str, event: Event) -> None:
        """``endpoint`` answered 2xx for ``event``."""
        subscribers = self.subscribers.get(event.mailbox)
        if subscribers is None or event.kind != MESSAGE_NEW or endpoint not in subscribers:
            return
        uid = str(event.data["uid"])
        if await self.store.acknowledge(event.mailbox, uid, endpoint, subscribers):
            self._wake.set()

    async def sweep(self, mailbox: str) -> list[str]:
        """Delete what is due in ``mailbox`` (one transaction); the unique-ids now off the
        server. A failed transaction leaves them due (and on the server)."""
        due = await self.store.due(mailbox, BATCH)
        if not due:
            return []
        try:
            gone = list(await self._delete(mailbox, due))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "consumed mailbox %s: deleting %d message(s) failed (%s); tried again later",
                mailbox,
                len(due),
                type(exc).__name__,
            )
            return []
        await self.store.settled(mailbox, gone)
        return gone

    async def run(self) -> None:
        """Sweep every consumed mailbox when woken by an acknowledgement, and every
        :data:`SWEEP_EVERY` seconds, until cancelled."""
        while True:
            self._wake.clear()
            for mailbox in self.subscribers:
                try:
                    await self.sweep(mailbox)
                except EventLogUnavailableError:
                    pass  # Redis: the next sweep
                except Exception:  # supervised: a bug must not stop consuming for good
                    log.exception("consumed mailbox %s: sweep crashed", mailbox)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_EVERY):
                    await self._wake.wait()
