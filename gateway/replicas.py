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

``{mailbox}`` is an HMAC of upstream and user (never a user name in clear). When Redis
cannot be reached the gate opens (sessions proceed uncoordinated, as with one replica) and
says so in the logs and metrics: a Redis outage must not stop mail.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .pop3 import PoolTimeoutError, POP3LoginDelayError

log = logging.getLogger("gateway.replicas")

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


class RedisSessionGate:
    """A :class:`gateway.pop3.pool.SessionGate` on Redis."""

    def __init__(
        self,
        url: str,
        *,
        lock_ttl: float = 15.0,
        login_delay: float = 60.0,
        timeout: float = 0.5,
        poll_initial: float = 0.02,
        poll_max: float = 0.25,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=32,
            protocol=2,  # RESP2: no HELLO round trip, the same on every redis-py release
        )
        self._lock_ttl_ms = int(lock_ttl * 1000)
        self._login_delay = login_delay
        self._poll_initial = poll_initial
        self._poll_max = poll_max
        self._on_event = on_event
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._last_warning = 0.0
        #: locks whose release failed (Redis unreachable at the time): retried before this
        #: process waits on them, so it never waits on itself for the rest of the TTL
        self._unreleased: dict[str, str] = {}

    def __repr__(self) -> str:
        return "<RedisSessionGate>"

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._on_event is not None:
            self._on_event("error")
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("replica coordination unavailable (%s: %s)", what, type(exc).__name__)

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
                    await self._release(keys=[key], args=[stale])
                if await self._redis.set(key, token, nx=True, px=self._lock_ttl_ms):
                    if waited:
                        await self._redis.delete(want)
                    return token
                await self._redis.set(want, "1", px=2000)
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed("acquire", exc)
                return None  # open gate: proceed as a single replica would
            if not waited and self._on_event is not None:
                self._on_event("wait")
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
            await self._release(keys=[PREFIX + "lock:" + lock], args=[str(token)])
        except (RedisError, OSError, TimeoutError) as exc:
            # Other replicas see it freed by the TTL; this one retries on its next acquire.
            self._unreleased[lock] = str(token)
            if len(self._unreleased) > 10_000:
                self._unreleased.pop(next(iter(self._unreleased)))
            self._failed("release", exc)

    async def renew(self, held: Sequence[tuple[str, object]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for lock, token in held:
                    await self._renew(
                        keys=[PREFIX + "lock:" + lock],
                        args=[str(token), self._lock_ttl_ms],
                        client=pipe,
                    )
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("renew", exc)

    async def wanted(self, locks: Sequence[str]) -> set[str]:
        try:
            found = await self._redis.mget([PREFIX + "want:" + lock for lock in locks])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("wanted", exc)
            return set()
        return {lock for lock, value in zip(locks, found, strict=True) if value is not None}

    async def check_login_delay(self, lock: str) -> None:
        try:
            left = await self._redis.pttl(PREFIX + "delay:" + lock)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("login-delay", exc)
            return
        if left > 0:
            raise POP3LoginDelayError(
                "LOGIN",
                "LOGIN-DELAY",
                f"the server asked to wait; {left / 1000:.0f} s left (seen by a replica)",
            )

    async def note_login_delay(self, lock: str) -> None:
        try:
            await self._redis.set(PREFIX + "delay:" + lock, "1", px=int(self._login_delay * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("login-delay", exc)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
