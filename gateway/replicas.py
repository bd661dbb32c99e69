"""Coordination between replicas through Redis: one POP3 session per maildrop across every
gateway process, and ``[LOGIN-DELAY]`` honoured by all of them.

- ``pop3gw:v1:lock:{mailbox}`` holds a random token while a process has a POP3 session to
  that maildrop (idle time included: the server's lock lives as long as the session). It is
  set with ``NX`` and a TTL, renewed by its holder every reaper tick, and deleted only by
  the holder (compare-and-delete), so a crashed replica frees it when the TTL runs out.
- ``pop3gw:v1:want:{mailbox}`` is set, briefly, by a process waiting for that lock: the
  holder then ends its idle session at its next tick instead of keeping it until it expires.
- ``pop3gw:v1:delay:{mailbox}`` is set for ``login_delay`` seconds when a server answered
  ``[LOGIN-DELAY]``: every replica then answers 429 at once instead of logging in again
  (repeated logins are what gets a gateway's address blocked by providers).

``{mailbox}`` is an HMAC of upstream and user (never a user name in clear). The gate talks to
Redis through the process's one :class:`gateway.redis.SharedRedis`, with its timeouts and
its backoff: when Redis cannot be reached the gate opens (sessions proceed uncoordinated, as
with one replica) and says so in the logs and metrics, and while the shared client backs off
the gate answers at once, without a round trip. A Redis outage, or a Redis that accepts
connections and never answers, must not stop mail nor slow every login down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .pop3 import PoolTimeoutError, POP3LoginDelayError
from .redis import RedisFailedError, RedisUnavailableError, SharedRedis

log = logging.getLogger("gateway.replicas")
_T = TypeVar("_T")

PREFIX = "pop3gw:v1:"

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


class _Unavailable(Exception):
    """Redis could not be used for this step: the gate opens."""


class RedisSessionGate:
    """A :class:`gateway.pop3.pool.SessionGate` on Redis.

    Events passed to ``on_event``: ``wait`` (a lease waits for another replica), ``error``
    (a Redis call of the gate's failed), ``skipped`` (Redis is backing off: the gate opened
    without asking it)."""

    def __init__(
        self,
        redis: SharedRedis,
        *,
        lock_ttl: float = 15.0,
        login_delay: float = 60.0,
        poll_initial: float = 0.02,
        poll_max: float = 0.25,
        on_event: Callable[[str], None] | None = None,
        owns_redis: bool = False,
    ) -> None:
        self._redis = redis
        self._owns_redis = owns_redis
        self._lock_ttl_ms = int(lock_ttl * 1000)
        self._login_delay = login_delay
        self._poll_initial = poll_initial
        self._poll_max = poll_max
        self._on_event = on_event
        self._scripts: dict[str, Any] = {}
        self._last_warning = float("-inf")
        #: locks whose release failed (Redis unreachable at the time): retried before this
        #: process waits on them, so it never waits on itself for the rest of the TTL
        self._unreleased: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5, **options: Any) -> RedisSessionGate:
        """A gate with a Redis client of its own (closed with the gate)."""
        redis = SharedRedis.connect(url, timeout=timeout, connect_timeout=timeout)
        return cls(redis, owns_redis=True, **options)

    def __repr__(self) -> str:
        return "<RedisSessionGate>"

    async def _call(
        self,
        what: str,
        operation: Callable[..., Awaitable[_T]],
        *args: Any,
        background: bool = False,
        **kwargs: Any,
    ) -> _T:
        try:
            return await self._redis.call(what, operation, *args, background=background, **kwargs)
        except RedisFailedError:
            self._emit("error")
            self._warn(what)
            raise _Unavailable from None
        except RedisUnavailableError:
            self._emit("skipped")
            raise _Unavailable from None

    def _script(self, source: str) -> Any:
        """A Lua script registered on the shared client (made once it is open)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis.client.register_script(source)
        return script

    async def _eval(self, source: str, keys: list[str], args: list[Any]) -> Any:
        return await self._script(source)(keys=keys, args=args)

    def _emit(self, kind: str) -> None:
        if self._on_event is not None:
            self._on_event(kind)

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning(
                "replica coordination unavailable (%s); sessions proceed uncoordinated", what
            )

    async def acquire(self, lock: str, timeout: float) -> object | None:
        token = secrets.token_hex(16)
        key, want = PREFIX + "lock:" + lock, PREFIX + "want:" + lock
        deadline = time.monotonic() + timeout
        pause = self._poll_initial
        waited = False
        while True:
            try:
                stale = self._unreleased.pop(lock, None)
                if stale is not None:
                    try:
                        await self._call("release", self._eval, _RELEASE, [key], [stale])
                    except _Unavailable:
                        self._unreleased[lock] = stale  # not released: try again next time
                        raise
                won = await self._call(
                    "acquire", self._set, key, token, nx=True, px=self._lock_ttl_ms
                )
            except _Unavailable:
                return None  # open gate: proceed as a single replica would
            if won:
                if waited:
                    # Best effort: the mark expires by itself within 2 s.
                    with contextlib.suppress(_Unavailable):
                        await self._call("acquire", self._delete, want)
                return token  # once SET NX won, the lock is ours: never leave it orphaned
            try:
                await self._call("acquire", self._set, want, "1", px=2000)
            except _Unavailable:
                return None
            if not waited:
                self._emit("wait")
            waited = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise PoolTimeoutError(
                    f"another gateway replica held this mailbox for more than {timeout:g} s"
                )
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(pause * 2, self._poll_max)

    async def release(self, lock: str, token: object) -> None:
        try:
            await self._call(
                "release", self._eval, _RELEASE, [PREFIX + "lock:" + lock], [str(token)]
            )
        except _Unavailable:
            # Other replicas see it freed by the TTL; this one retries on its next acquire.
            self._unreleased[lock] = str(token)
            if len(self._unreleased) > 10_000:
                self._unreleased.pop(next(iter(self._unreleased)))

    async def renew(self, held: Sequence[tuple[str, object]]) -> None:
        # In the background (the reaper's tick), so not held back by the shared backoff:
        # another user's failure must not let held locks lapse. On failure the locks live
        # until their TTL; the next tick tries again.
        with contextlib.suppress(_Unavailable):
            await self._call("renew", self._renew_all, held, background=True)

    async def _renew_all(self, held: Sequence[tuple[str, object]]) -> None:
        script = self._script(_RENEW)
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for lock, token in held:
                await script(
                    keys=[PREFIX + "lock:" + lock],
                    args=[str(token), self._lock_ttl_ms],
                    client=pipe,
                )
            await pipe.execute()

    async def wanted(self, locks: Sequence[str]) -> set[str]:
        try:
            found = await self._call(
                "wanted", self._mget, [PREFIX + "want:" + lock for lock in locks]
            )
        except _Unavailable:
            return set()
        return {lock for lock, value in zip(locks, found, strict=True) if value is not None}

    async def check_login_delay(self, lock: str) -> None:
        try:
            left = await self._call("login-delay", self._pttl, PREFIX + "delay:" + lock)
        except _Unavailable:
            return
        if left > 0:
            raise POP3LoginDelayError(
                "LOGIN",
                "LOGIN-DELAY",
                f"the server asked to wait; {left / 1000:.0f} s left (seen by a replica)",
            )

    async def note_login_delay(self, lock: str) -> None:
        with contextlib.suppress(_Unavailable):
            await self._call(
                "login-delay",
                self._set,
                PREFIX + "delay:" + lock,
                "1",
                px=int(self._login_delay * 1000),
            )

    async def ping(self) -> bool:
        return await self._redis.ping()

    async def close(self) -> None:
        if self._owns_redis:
            await self._redis.close()

    # -- the redis-py calls, run through the shared client's policy ---------------------------
    async def _set(self, key: str, value: str, **options: Any) -> Any:
        return await self._redis.client.set(key, value, **options)

    async def _delete(self, key: str) -> Any:
        return await self._redis.client.delete(key)

    async def _mget(self, keys: list[str]) -> list[Any]:
        found = await self._redis.client.mget(keys)
        if not isinstance(found, list) or len(found) != len(keys):
            raise TypeError("the MGET reply does not match the keys asked")
        return found

    async def _pttl(self, key: str) -> int:
        return int(await self._redis.client.pttl(key))
