"""Limits on what one mailbox's callers can make the gateway do: failed logins (per person,
per client address, per upstream), and new logins asked for with ``fresh``."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..redis import RedisUnavailableError, SharedRedis
from .errors import (
    ClientLoginRateError,
    LoginRateLimitedError,
    LoginThrottledError,
    UpstreamLoginRateError,
)


class KnownGood:
    """Seals a credential digest as a salted keyed hash: HMAC-SHA256 under ``key`` (per
    deployment, derived from the cache secret, or random per process) of a random per-entry
    salt and the digest. What is kept (in memory or in Redis) tells nothing without the key,
    and two entries for one credential never look alike."""

    SALT_BYTES = 16

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def _mac(self, salt: bytes, credential: str) -> bytes:
        return hmac.digest(self._key, salt + credential.encode(), "sha256")

    def seal(self, credential: str) -> str:
        salt = os.urandom(self.SALT_BYTES)
        return f"{salt.hex()}:{self._mac(salt, credential).hex()}"

    def matches(self, sealed: str | bytes | None, credential: str) -> bool:
        if not sealed:
            return False
        if isinstance(sealed, bytes):
            sealed = sealed.decode("ascii", "replace")
        salt_hex, sep, mac_hex = sealed.partition(":")
        try:
            salt, mac = bytes.fromhex(salt_hex), bytes.fromhex(mac_hex)
        except ValueError:
            return False
        return bool(sep) and hmac.compare_digest(mac, self._mac(salt, credential))


class LoginThrottle:
    """Counts failed logins per mailbox (upstream + user, never the password) and refuses to
    try again after ``max_failures`` within ``window`` seconds, until the oldest of them
    leaves the window. Providers block addresses that keep failing; one misconfigured client
    must not get the gateway (and every other user behind it) blocked.

    A credential that last succeeded for the mailbox (kept salted and hashed by
    :class:`KnownGood`, never in clear) is still let through while it is throttled, so that
    someone sending wrong passwords cannot lock the mailbox's owner out. Bounded in size."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        known_good: KnownGood | None = None,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self.sealer = known_good or KnownGood()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._good: OrderedDict[str, str] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    @property
    def max_failures(self) -> int:
        return self._max

    @property
    def window(self) -> float:
        return self._window

    def known_good(self, key: str, credential: str) -> bool:
        """Whether ``credential`` is the one that last succeeded for ``key``."""
        return self.sealer.matches(self._good.get(key), credential)

    def begin(self, key: str, credential: str) -> bool:
        """Before a login: raise while throttled, counting logins still in flight as
        failures to come (a concurrent burst of wrong passwords must not all reach the
        server). Returns whether this attempt was counted; pass that to :meth:`end`."""
        if self.known_good(key, credential):
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
        self._good[key] = self.sealer.seal(credential)
        while len(self._good) > self._max_keys:
            self._good.popitem(last=False)


def client_key(address: str | None) -> str | None:
    """Whom a client address stands for: itself, or for IPv6 its /64 (one host is usually
    given a whole /64, so single addresses would cost an attacker nothing)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens, refilled at ``per_second``. A login
    attempt takes a token before it is sent (so a concurrent burst is counted while in
    flight) and gives it back unless the server refused the credentials (then it is
    spent): only failed logins drain a bucket. Tokens held by logins in flight are counted
    (:meth:`held`), and :meth:`changed` lets an attempt that found the bucket empty wait for
    one of them to come back rather than be refused: a burst of good logins from one
    address passes, a spray of bad ones is stopped. Bounded in size (a full bucket is
    forgotten first, then the least recently used)."""

    def __init__(
        self,
        burst: int,
        per_second: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or not per_second > 0:
            raise ValueError("a token bucket needs burst >= 1 and a positive rate")
        self._burst = float(burst)
        self._rate = per_second
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._held: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def per_second(self) -> float:
        return self._rate

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def held(self, key: str) -> int:
        """Tokens of ``key`` taken by logins still in flight."""
        return self._held.get(key, 0)

    def take(self, key: str) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is there."""
        now = self._clock()
        tokens = self._level(key, now)
        if tokens < 1.0:
            return (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        self._held[key] = self._held.get(key, 0) + 1
        while len(self._buckets) > self._max_keys:
            forgotten, _ = self._buckets.popitem(last=False)
            if forgotten == key:  # never the one just taken (max_keys >= 1)
                break
        return 0.0

    def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`take` (the attempt did not fail its login)."""
        self._release(key)
        if key in self._buckets:  # else forgotten meanwhile: it is full again
            now = self._clock()
            tokens = min(self._burst, self._level(key, now) + 1.0)
            if tokens >= self._burst and not self.held(key):
                del self._buckets[key]  # a full bucket needs no entry
            else:
                self._buckets[key] = (tokens, now)
        self._wake(key)

    def spend(self, key: str) -> None:
        """A token taken by :meth:`take` stays spent (the server refused the login)."""
        self._release(key)
        self._wake(key)

    def _release(self, key: str) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)

    async def changed(self, key: str, timeout: float) -> None:
        """Wait until a token of ``key`` held in flight comes back or is spent (at most
        ``timeout`` seconds)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]

    def _wake(self, key: str) -> None:
        for waiter in self._waiters.pop(key, []):
            if not waiter.done():
                waiter.set_result(None)


class FreshLogins:
    """Rations new logins asked for with ``fresh``: at most one per mailbox (``key``) per
    ``min_interval`` seconds. A caller that asks again sooner is served the newest snapshot
    instead (at most ``min_interval`` old, and its ``snapshot_at`` says so): a client that
    loops on ``?fresh=true`` cannot make the gateway log in to the provider in a loop.
    Bounded in size (the least recently used mailboxes are forgotten)."""

    def __init__(
        self,
        min_interval: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min = min_interval
        self._max_keys = max_keys
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()

    def claim(self, key: str) -> FreshClaim | None:
        """A claim on a new login for ``key`` now (it counts from now), or None while the
        last one is younger than ``min_interval``. Give it back (:meth:`give_back`) if the
        login fails: a stranger's wrong password must not spend the owner's ration."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._min:
            return None
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return FreshClaim(key, last, now)

    def give_back(self, claim: FreshClaim) -> None:
        """Undo ``claim`` (its login failed), unless another was made since."""
        if self._last.get(claim.key) != claim.at:
            return
        if claim.previous is None:
            del self._last[claim.key]
        else:
            self._last[claim.key] = claim.previous


@dataclass(frozen=True, slots=True)
class FreshClaim:
    key: str
    previous: float | None  #: the last login's time before this claim
    at: float


#: Redis keys of the shared throttle, ``{id}`` a keyed digest of person + side (never a user
#: name): ``pop3gw:v1:logins:fail:{id}``, a sorted set of attempts (score: ms since the
#: epoch; a member is in flight until its login ends, then a failure or gone; TTL: the
#: window), and ``pop3gw:v1:logins:good:{id}``, the known-good credential sealed by
#: :class:`KnownGood` (TTL: :data:`KNOWN_GOOD_TTL` after its last success).
REDIS_PREFIX = "pop3gw:v1:logins:"
#: How long a known-good credential is remembered in Redis after its last success.
KNOWN_GOOD_TTL = 30 * 24 * 3600.0

# KEYS: fail, good; ARGV: now ms, window ms, max failures, member.
# Returns {sealed known-good or '', ms to wait (0: counted, the member is in flight)}.
_BEGIN = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local good = redis.call('GET', KEYS[2]) or ''
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {good, math.max(1, tonumber(oldest[2]) + window - now)}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {good, 0}
"""
# KEYS: fail, good; ARGV: outcome, member, now ms, window ms, max failures, sealed, good ms.
_END = """
if ARGV[1] == 'auth' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
elseif ARGV[1] == 'ok' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[7])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return 1
"""


# Token buckets shared by replicas: KEYS are the buckets, ARGV[1] the time (ms), then a
# burst and a refill rate (tokens per ms) per bucket. A bucket is a hash (t: tokens, at:
# when, h: tokens held by logins in flight), gone once it would be full and none is held.
# Take: a token from every bucket, or from none and {index of the first empty bucket, ms
# until it has one, tokens of it held in flight}.
_TAKE = """
local now = tonumber(ARGV[1])
local levels = {}
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local found = redis.call('HMGET', key, 't', 'at', 'h')
  local t, at = tonumber(found[1]), tonumber(found[2])
  if t == nil or at == nil then t, at = burst, now end
  t = math.min(burst, t + math.max(0, now - at) * rate)
  if t < 1 then return {i, math.ceil((1 - t) / rate), tonumber(found[3]) or 0} end
  levels[i] = t
end
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('HSET', key, 't', tostring(levels[i] - 1), 'at', ARGV[1])
  redis.call('HINCRBY', key, 'h', 1)
  redis.call('PEXPIRE', key, math.ceil(burst / rate) + 60000)
end
return {0, 0, 0}
"""

# The end of an attempt that took from every bucket: ARGV[2 + 2n] is 1 to give its token
# back (the login did not fail), 0 to leave it spent; either way it is no longer held.
_RELEASE = """
local now = tonumber(ARGV[1])
local give = tonumber(ARGV[2 * #KEYS + 2]) == 1
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local found = redis.call('HMGET', key, 't', 'at', 'h')
  local t, at = tonumber(found[1]), tonumber(found[2])
  local held = math.max(0, (tonumber(found[3]) or 0) - 1)
  if t ~= nil and at ~= nil then
    t = math.min(burst, t + math.max(0, now - at) * rate)
    if give then t = math.min(burst, t + 1) end
    if t >= burst and held == 0 then
      redis.call('DEL', key)
    else
      redis.call('HSET', key, 't', tostring(t), 'at', ARGV[1], 'h', held)
      redis.call('PEXPIRE', key, math.ceil(burst / rate) + 60000)
    end
  end
end
return 1
"""

#: how long a login waits for a token held by another login in flight to come back
#: before it is refused (a burst of good logins from one address passes)
HELD_WAIT = 10.0
#: how often a login waiting on a shared (Redis) bucket looks again
_SHARED_POLL = 0.1


class Attempt:
    """One login attempt between :meth:`LoginRations.begin` and :meth:`LoginRations.end`."""

    __slots__ = (
        "client",
        "counted",
        "credential",
        "key",
        "known_good",
        "member",
        "shared",
        "upstream",
    )

    def __init__(self, key: str, credential: str) -> None:
        self.key = key
        self.credential = credential
        self.known_good = False
        self.counted = False  #: counted by the in-process throttle
        self.member: str | None = None  #: counted by the shared throttle (its member)
        self.client: str | None = None  #: a token taken from this client's bucket
        self.upstream: str | None = None  #: a token taken from this upstream's bucket
        #: the buckets' tokens were taken in Redis (else in process)
        self.shared = False


class LoginRations:
    """Every limit on logins, in one place for :class:`SessionOpener`: failed logins per
    person (in Redis when ``redis`` is given: survives restarts, shared by replicas; in
    process otherwise, and whenever Redis cannot be used), per client address and per
    upstream (token buckets). A credential known to be good for the person (the last one
    that succeeded) passes every one of them."""

    def __init__(
        self,
        throttle: LoginThrottle,
        *,
        clients: TokenBuckets | None = None,
        upstreams: TokenBuckets | None = None,
        redis: SharedRedis | None = None,
        key: bytes | None = None,
        wall: Callable[[], float] = time.time,
        held_wait: float = HELD_WAIT,
    ) -> None:
        self.throttle = throttle
        self.held_wait = held_wait
        self._clients = clients
        self._upstreams = upstreams
        self._redis = redis
        self._key = key if key is not None else os.urandom(32)
        self._wall = wall
        self._scripts: dict[str, Any] = {}

    def _keys(self, key: str) -> list[str]:
        name = hmac.digest(self._key, key.encode(), "sha256")[:16].hex()
        # {name} in braces: a hash tag, so that both keys of a script share a cluster slot
        return [f"{REDIS_PREFIX}fail:{{{name}}}", f"{REDIS_PREFIX}good:{{{name}}}"]

    async def _eval(self, source: str, keys: list[str], args: list[Any]) -> Any:
        assert self._redis is not None
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis.client.register_script(source)
        return await script(keys=keys, args=args)

    async def begin(
        self, key: str, credential: str, *, client: str | None, upstream: str
    ) -> Attempt:
        """Before a login: raise :class:`LoginThrottledError` (the person),
        :class:`ClientLoginRateError` or :class:`UpstreamLoginRateError` while refused.
        Pass the attempt to :meth:`end`, whatever happens."""
        attempt = Attempt(key, credential)
        await self._begin_person(attempt)
        if attempt.known_good:
            return attempt
        try:
            await self._take(attempt, client, upstream)
        except BaseException:
            await self.end(attempt, "other")
            raise
        return attempt

    async def _begin_person(self, attempt: Attempt) -> None:
        throttle = self.throttle
        if self._redis is not None:
            member = os.urandom(12).hex()
            try:
                found = await self._redis.call(
                    "login throttle",
                    self._eval,
                    _BEGIN,
                    self._keys(attempt.key),
                    [
                        int(self._wall() * 1000),
                        int(throttle.window * 1000),
                        throttle.max_failures,
                        member,
                    ],
                )
                sealed, wait_ms = found[0], int(found[1])
            except RedisUnavailableError:
                pass  # do without Redis: the in-process throttle below
            except (TypeError, ValueError, IndexError):
                pass  # a reply that makes no sense counts as no reply
            else:
                attempt.member = member if wait_ms == 0 else None
                good = throttle.sealer.matches(sealed, attempt.credential)
                attempt.known_good = good or throttle.known_good(attempt.key, attempt.credential)
                if wait_ms and not attempt.known_good:
                    raise LoginThrottledError(max(1.0, wait_ms / 1000))
                return
        attempt.known_good = throttle.known_good(attempt.key, attempt.credential)
        attempt.counted = throttle.begin(attempt.key, attempt.credential)

    def _buckets(
        self, client: str | None, upstream: str | None
    ) -> list[tuple[str, TokenBuckets, type[LoginRateLimitedError]]]:
        """The buckets an attempt takes from: (Redis key, local twin, the error it raises)."""
        found: list[tuple[str, TokenBuckets, type[LoginRateLimitedError]]] = []
        for kind, name, buckets, error in (
            ("client", client, self._clients, ClientLoginRateError),
            ("upstream", upstream, self._upstreams, UpstreamLoginRateError),
        ):
            if name is not None and buckets is not None:
                digest = hmac.digest(self._key, f"{kind}\0{name}".encode(), "sha256")[:16].hex()
                found.append((f"{REDIS_PREFIX}bucket:{kind}:{digest}", buckets, error))
        return found

    @staticmethod
    def _bucket_args(now_ms: int, buckets: list[tuple[str, TokenBuckets, Any]]) -> list[Any]:
        args: list[Any] = [now_ms]
        for _key, local, _error in buckets:
            args += [local.burst, local.per_second / 1000]
        return args

    async def _take(self, attempt: Attempt, client: str | None, upstream: str) -> None:
        """Take a token from the client's and the upstream's bucket. An empty bucket whose
        tokens are held by logins in flight is waited on (up to :data:`HELD_WAIT`): they
        come back if those logins succeed. An empty bucket with nothing held refuses at
        once."""
        who = client_key(client)
        deadline = time.monotonic() + self.held_wait
        if self._redis is not None and await self._take_shared(attempt, who, upstream, deadline):
            return
        await self._take_local(attempt, who, upstream, deadline)

    async def _take_shared(
        self, attempt: Attempt, who: str | None, upstream: str, deadline: float
    ) -> bool:
        """True when taken in Redis (or nothing to take); False to do without Redis."""
        assert self._redis is not None
        buckets = self._buckets(who, upstream)
        if not buckets:
            return True
        while True:
            try:
                found = await self._redis.call(
                    "login rations",
                    self._eval,
                    _TAKE,
                    [key for key, _, _ in buckets],
                    self._bucket_args(int(self._wall() * 1000), buckets),
                )
                index, wait_ms, held = int(found[0]), int(found[1]), int(found[2])
                error = buckets[index - 1][2] if index else None
            except RedisUnavailableError:
                return False  # do without Redis: the buckets of this process
            except (TypeError, ValueError, IndexError):
                return False  # a reply that makes no sense counts as no reply
            if error is None:
                attempt.shared = True
                attempt.client = who if self._clients is not None else None
                attempt.upstream = upstream if self._upstreams is not None else None
                return True
            if not held or time.monotonic() + _SHARED_POLL > deadline:
                raise error(max(1.0, wait_ms / 1000))
            await asyncio.sleep(_SHARED_POLL)  # a login in flight may give its token back

    async def _take_local(
        self, attempt: Attempt, who: str | None, upstream: str, deadline: float
    ) -> None:
        for local, key, error in (
            (self._clients, who, ClientLoginRateError),
            (self._upstreams, upstream, UpstreamLoginRateError),
        ):
            if local is None or key is None:
                continue
            while True:
                wait = local.take(key)
                if not wait:
                    break
                left = deadline - time.monotonic()
                if not local.held(key) or left <= 0:
                    raise error(max(1.0, wait))
                await local.changed(key, left)
            if error is ClientLoginRateError:
                attempt.client = key
            else:
                attempt.upstream = key

    async def end(self, attempt: Attempt, outcome: str) -> None:
        """After a login: ``outcome`` is ``ok``, ``auth`` (credentials refused) or other."""
        give = outcome != "auth"  # only a refused credential keeps its tokens
        if attempt.shared and self._redis is not None:
            buckets = self._buckets(attempt.client, attempt.upstream)
            if buckets:
                with contextlib.suppress(RedisUnavailableError):
                    await self._redis.call(
                        "login rations",
                        self._eval,
                        _RELEASE,
                        [key for key, _, _ in buckets],
                        [*self._bucket_args(int(self._wall() * 1000), buckets), int(give)],
                    )
        else:
            pairs = ((self._clients, attempt.client), (self._upstreams, attempt.upstream))
            for local, name in pairs:
                if local is not None and name is not None:
                    if give:
                        local.give_back(name)
                    else:
                        local.spend(name)
        throttle = self.throttle
        # The in-process throttle always learns the outcome: it is what is left when Redis
        # cannot be reached.
        if attempt.counted or attempt.member is None:
            throttle.end(attempt.key, attempt.counted, outcome, attempt.credential)
        elif outcome == "ok":
            throttle.succeeded(attempt.key, attempt.credential)
        elif outcome == "auth":
            throttle.failed(attempt.key)
        if self._redis is None or (attempt.member is None and outcome == "other"):
            return
        member = attempt.member or os.urandom(12).hex()
        sealed = throttle.sealer.seal(attempt.credential) if outcome == "ok" else ""
        # On failure, an attempt in flight leaves the set with the window.
        with contextlib.suppress(RedisUnavailableError):
            await self._redis.call(
                "login throttle",
                self._eval,
                _END,
                self._keys(attempt.key),
                [
                    outcome if outcome in ("ok", "auth") else "other",
                    member,
                    int(self._wall() * 1000),
                    int(throttle.window * 1000),
                    throttle.max_failures,
                    sealed,
                    int(KNOWN_GOOD_TTL * 1000),
                ],
            )
