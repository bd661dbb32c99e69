"""The durable event log on Redis, shared by replicas; and the lease that lets one replica at
a time poll a mailbox.

Per watched mailbox (``{m}`` is the mailbox id, a hash tag: one slot for a cluster):

- ``pop3gw:v1:ev:{m}:log``: a Stream of its events (fields ``id``, ``kind``, ``data``,
  ``at``); its entry ids are the cursors. Trimmed by age (``MINID``) and count (``MAXLEN``)
  at every append.
- ``pop3gw:v1:ev:{m}:seen``: a Set of the unique-ids seen.
- ``pop3gw:v1:ev:{m}:state``: a Hash: the state version, the baseline flag, the health, the
  last cursor given out.
- ``pop3gw:v1:ev:{m}:lease``: a random token while a replica polls the mailbox (``SET NX``
  with a TTL of half the interval, renewed by its holder a few times per TTL): a dead
  holder's mailbox is taken over within one interval.

- ``pop3gw:v1:ev:changed``: a Stream of the mailboxes whose logs got events (``m``), trimmed
  to about :data:`CHANGED_MAX` entries: every replica's webhook queues look at it twice a
  second and take up those mailboxes at once, whichever replica's watcher recorded the
  events (an idle queue otherwise waits long between looks of its own).

One Lua script applies a poll's change: it checks the state version (a replica that worked
from an older state is refused) and the lease token (a replica that lost its lease is
refused), then changes the seen-set, appends the events and updates the state, all at once:
a crash between two steps cannot lose an event nor report one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..redis import RedisUnavailableError, SharedRedis
from .log import CommitConflictError, CursorExpiredError, EventLogUnavailableError, Slice
from .model import START, Commit, Cursor, Event, Health, WatchState

_T = TypeVar("_T")
PREFIX = "pop3gw:v1:ev:"
#: how often a reader waiting on a mailbox looks for events other replicas appended
WAIT_POLL = 0.5
#: a commit adding or removing more unique-ids than this stages them first, in chunks of
#: this many (a first poll of a 100,000-message mailbox in one call would outlast the
#: shared client's deadline)
STAGE_OVER = 2000
#: staged unique-ids are dropped after this long if their commit never came
STAGE_TTL_MS = 120_000
#: the Stream of mailboxes whose logs got events, and about how many entries it keeps
CHANGED = PREFIX + "changed"
CHANGED_MAX = 10_000

_COMMIT = """
local state, seen, log, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local v = tonumber(redis.call('HGET', state, 'v') or '0')
if v ~= tonumber(ARGV[1]) then return {'conflict'} end
if ARGV[2] ~= '' and redis.call('GET', lease) ~= ARGV[2] then return {'fenced'} end
local n_add, n_remove, n_events = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local now_ms, minid, maxlen = tonumber(ARGV[11]), ARGV[12], ARGV[13]
local i = 14
if n_add < 0 then
  -- a large change was staged beforehand (KEYS[5]: to add, KEYS[6]: to remove)
  if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('SDIFFSTORE', seen, seen, KEYS[6]) end
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('SUNIONSTORE', seen, seen, KEYS[5]) end
  redis.call('DEL', KEYS[5], KEYS[6])
  n_add, n_remove = 0, 0
end
for _ = 1, n_remove do redis.call('SREM', seen, ARGV[i]); i = i + 1 end
for _ = 1, n_add do redis.call('SADD', seen, ARGV[i]); i = i + 1 end
local last_ms = tonumber(redis.call('HGET', state, 'last_ms') or '0')
local last_n = tonumber(redis.call('HGET', state, 'last_n') or '0')
local ids = {'ok'}
for _ = 1, n_events do
  if now_ms > last_ms then last_ms = now_ms; last_n = 0 else last_n = last_n + 1 end
  local id = string.format('%d-%d', last_ms, last_n)
  redis.call('XADD', log, id, 'id', ARGV[i], 'kind', ARGV[i + 1], 'data', ARGV[i + 2],
             'at', ARGV[i + 3])
  ids[#ids + 1] = id
  i = i + 4
end
if redis.call('EXISTS', log) == 1 then
  redis.call('XTRIM', log, 'MINID', minid)
  redis.call('XTRIM', log, 'MAXLEN', maxlen)
end
redis.call('HSET', state, 'v', v + 1, 'baseline', ARGV[3], 'failures', ARGV[4],
           'since', ARGV[5], 'episode', ARGV[6], 'reported', ARGV[7],
           'last_ms', last_ms, 'last_n', last_n)
return ids
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def key(mailbox: str, what: str) -> str:
    return f"{PREFIX}{{{mailbox}}}:{what}"


class _RedisUser:
    """Calls through the shared client, failures as :class:`EventLogUnavailableError`."""

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis
        self._scripts: dict[str, Any] = {}

    async def _call(
        self,
        what: str,
        operation: Callable[..., Awaitable[_T]],
        *args: Any,
        background: bool = True,
    ) -> _T:
        try:
            return await self._redis.call(what, operation, *args, background=background)
        except RedisUnavailableError:
            raise EventLogUnavailableError(f"Redis is unavailable ({what})") from None

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis.client.register_script(source)
        return script


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisEventLog(_RedisUser):
    """Events, seen-sets and health of watched mailboxes in Redis (durable, shared)."""

    durable = True

    def __init__(
        self,
        redis: SharedRedis,
        *,
        retention: float = 7 * 24 * 3600.0,
        max_per_mailbox: int = 100_000,
        wall: Callable[[], float] = time.time,
        stage_over: int = STAGE_OVER,
    ) -> None:
        super().__init__(redis)
        self._stage_over = stage_over
        self._retention = retention
        self._max = max_per_mailbox
        self._wall = wall
        #: per mailbox, the seen-set of the last state version read or written here
        self._seen: dict[str, tuple[int, set[str]]] = {}
        self._changed: dict[str, asyncio.Event] = {}

    async def state(self, mailbox: str) -> WatchState:
        return await self._call("events state", self._state, mailbox)

    async def _state(self, mailbox: str) -> WatchState:
        client = self._redis.client
        raw = {_text(k): _text(v) for k, v in (await client.hgetall(key(mailbox, "state"))).items()}
        version = int(raw.get("v", "0"))
        cached = self._seen.get(mailbox)
        if cached is not None and cached[0] == version:
            seen = set(cached[1])
        else:
            seen = {_text(uid) for uid in await client.smembers(key(mailbox, "seen"))}
            self._seen[mailbox] = (version, set(seen))
        since = raw.get("since", "")
        health = Health(
            failures=int(raw.get("failures", "0")),
            since=float(since) if since else None,
            episode=int(raw.get("episode", "0")),
            reported=raw.get("reported") == "1",
        )
        return WatchState(version, seen, raw.get("baseline") == "1", health)

    async def commit(self, commit: Commit, *, fence: str | None = None) -> list[Event]:
        mailbox = commit.mailbox
        now = self._wall()
        health = commit.health
        args: list[Any] = [
            commit.version,
            fence or "",
            "1" if commit.baseline else "0",
            health.failures,
            "" if health.since is None else repr(health.since),
            health.episode,
            "1" if health.reported else "0",
            len(commit.add),
            len(commit.remove),
            len(commit.events),
            int(now * 1000),
            f"{max(0, int((now - self._retention) * 1000))}-0",
            self._max,
        ]
        keys = [key(mailbox, k) for k in ("state", "seen", "log", "lease")]
        if len(commit.add) + len(commit.remove) > self._stage_over:
            # a first poll of a large mailbox: the unique-ids go to Redis in chunks (each
            # call within the client's deadline), the script then applies them at once
            token = secrets.token_hex(8)
            staged = [key(mailbox, f"stage:{token}:add"), key(mailbox, f"stage:{token}:remove")]
            await self._stage(staged[0], commit.add)
            await self._stage(staged[1], commit.remove)
            args[7] = args[8] = -1
            keys += staged
        else:
            args.extend(commit.remove)
            args.extend(commit.add)
            keys += [key(mailbox, "stage:none:add"), key(mailbox, "stage:none:remove")]
        at = repr(now)
        for draft in commit.events:
            args.extend((draft.id, draft.kind, json.dumps(draft.data, ensure_ascii=False), at))
        reply = await self._call("events commit", self._script(_COMMIT), keys, args)
        status = _text(reply[0])
        if status != "ok":
            raise CommitConflictError(f"the commit was refused ({status})")
        version, seen = self._seen.get(mailbox, (-1, set()))
        if version == commit.version:
            seen.difference_update(commit.remove)
            seen.update(commit.add)
            self._seen[mailbox] = (version + 1, seen)
        else:
            self._seen.pop(mailbox, None)
        events = [
            Event(d.id, d.kind, mailbox, Cursor.parse(_text(i)), now, d.data)
            for d, i in zip(commit.events, reply[1:], strict=True)
        ]
        if events:
            changed = self._changed.pop(mailbox, None)
            if changed is not None:
                changed.set()
            await self._announce(mailbox)
        return events

    async def _announce(self, mailbox: str) -> None:
        """Tell every replica's webhook queues that ``mailbox`` has new events (best effort:
        a queue also looks by itself, less often)."""

        async def add() -> None:
            await self._redis.client.xadd(
                CHANGED, {"m": mailbox}, maxlen=CHANGED_MAX, approximate=True
            )

        with contextlib.suppress(EventLogUnavailableError):
            await self._call("events changed", add)

    async def _stage(self, name: str, uids: Sequence[str]) -> None:
        for start in range(0, len(uids), self._stage_over):
            chunk = uids[start : start + self._stage_over]

            async def add(chunk: Sequence[str] = chunk) -> None:
                async with self._redis.client.pipeline(transaction=False) as pipe:
                    pipe.sadd(name, *chunk)
                    pipe.pexpire(name, STAGE_TTL_MS)
                    await pipe.execute()

            await self._call("events stage", add)

    async def read(self, mailbox: str, after: Cursor | None, limit: int) -> Slice:
        return await self._call("events read", self._read, mailbox, after, limit, background=False)

    async def _read(self, mailbox: str, after: Cursor | None, limit: int) -> Slice:
        client = self._redis.client
        log = key(mailbox, "log")
        start = "-" if after is None else f"({after}"
        async with client.pipeline(transaction=False) as pipe:
            pipe.xrange(log, start, "+", count=limit + 1)
            pipe.exists(log)
            pipe.hget(key(mailbox, "state"), "last_ms")
            pipe.hget(key(mailbox, "state"), "last_n")
            entries, exists, last_ms, last_n = await pipe.execute()
        if exists and after is not None:
            info: dict[Any, Any] = dict(await client.xinfo_stream(log))
            dropped = info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id")
            if dropped is not None and after < Cursor.parse(_text(dropped)):
                raise CursorExpiredError("events after this cursor are no longer kept")
        more = len(entries) > limit
        events = [_event(mailbox, entry) for entry in entries[:limit]]
        if events:
            return Slice(events, events[-1].cursor, more)
        if after is not None:
            return Slice([], after, False)
        end = START if last_ms is None else Cursor(int(last_ms), int(last_n or 0))
        return Slice([], end, False)

    async def wait(self, mailbox: str, after: Cursor, timeout: float) -> None:
        """Until an event is appended here or, for other replicas' events, for a moment."""
        changed = self._changed.get(mailbox)
        if changed is None:
            changed = self._changed[mailbox] = asyncio.Event()
        try:
            async with asyncio.timeout(max(0.0, min(timeout, WAIT_POLL))):
                await changed.wait()
        except TimeoutError:
            return


def _event(mailbox: str, entry: Any) -> Event:
    entry_id, fields = entry
    values = {_text(k): _text(v) for k, v in fields.items()}
    return Event(
        values["id"],
        values["kind"],
        mailbox,
        Cursor.parse(_text(entry_id)),
        float(values["at"]),
        json.loads(values["data"]),
    )


class RedisWatchLeases(_RedisUser):
    """One replica at a time polls a mailbox: a token in Redis with a TTL of half its
    interval, renewed by :meth:`renew` a few times per TTL."""

    def __init__(self, redis: SharedRedis) -> None:
        super().__init__(redis)
        #: mailbox -> (token, TTL in ms) of the leases this process holds
        self.held: dict[str, tuple[str, int]] = {}

    @staticmethod
    def ttl_ms(interval: float) -> int:
        return max(1000, int(interval * 500))

    async def hold(self, mailbox: str, interval: float) -> str | None:
        ttl = self.ttl_ms(interval)
        held = self.held.get(mailbox)
        lease = key(mailbox, "lease")
        if held is not None:
            renewed = await self._call(
                "events lease", self._script(_RENEW), [lease], [held[0], ttl]
            )
            if renewed:
                return held[0]
            del self.held[mailbox]
        token = secrets.token_hex(16)
        won = await self._call("events lease", self._set, lease, token, ttl)
        if not won:
            return None
        self.held[mailbox] = (token, ttl)
        return token

    async def _set(self, lease: str, token: str, ttl: int) -> Any:
        return await self._redis.client.set(lease, token, nx=True, px=ttl)

    async def renew(self) -> None:
        """Renew every lease held (one round trip); a lease lost meanwhile is forgotten."""
        if not self.held:
            return
        held = list(self.held.items())
        try:
            results = await self._call("events lease", self._renew_all, held)
        except EventLogUnavailableError:
            return  # the leases live until their TTL; the next renewal tries again
        for (mailbox, (token, _)), ok in zip(held, results, strict=True):
            # a poll may have taken the lease anew meanwhile: that one is kept
            if not ok and self.held.get(mailbox, ("", 0))[0] == token:
                del self.held[mailbox]

    async def _renew_all(self, held: Sequence[tuple[str, tuple[str, int]]]) -> list[Any]:
        script = self._script(_RENEW)
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for mailbox, (token, ttl) in held:
                await script(keys=[key(mailbox, "lease")], args=[token, ttl], client=pipe)
            return list(await pipe.execute())

    async def release_all(self) -> None:
        """Give the leases back (shutdown): another replica takes over at once."""
        held, self.held = self.held, {}
        if not held:
            return

        async def release() -> None:
            script = self._script(_RELEASE)
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for mailbox, (token, _) in held.items():
                    await script(keys=[key(mailbox, "lease")], args=[token], client=pipe)
                await pipe.execute()

        await self._call("events lease", release)
