"""The one Redis client of a gateway process, and its one failure policy.

Everything that talks to Redis (the header cache, the replica gate, and what comes after
them) goes through :class:`SharedRedis`: one bounded connection pool with short timeouts,
RESP2, no retries inside redis-py, and one backoff. Redis is an accelerator and a
coordinator, never a dependency: when it is down, slow or answers garbage, a call raises
:class:`RedisUnavailableError` (each caller then does without: a cache miss, an open gate),
the failure is logged (rate-limited, never with a credential) and Redis is left alone for a
backoff period (1 s doubling to 30 s, with jitter). During the backoff a call costs nothing
(no network); after it, one call probes Redis, and on success every caller is back.

A Redis that accepts connections and never answers therefore costs one timeout per backoff
period for the whole process, not one per caller and per request.

The client is made by :meth:`SharedRedis.open` and closed by :meth:`SharedRedis.close`; the
app factory calls both from a ``cleanup_ctx``, so it lives exactly as long as the app.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "RateLimitedLog",
    "RedisFailedError",
    "RedisSkippedError",
    "RedisUnavailableError",
    "SharedRedis",
    "redact_url",
]

#: At most one warning line per this many seconds (the rest are counted, then summarised).
LOG_INTERVAL: Final = 10.0

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_SECRET_QUERY_KEYS: Final = frozenset({"password", "username", "ssl_password"})


class RedisUnavailableError(Exception):
    """A Redis call did not happen or did not succeed: do without Redis this time."""


class RedisSkippedError(RedisUnavailableError):
    """Not tried: Redis failed recently (backoff), or the client is not open."""


class RedisFailedError(RedisUnavailableError):
    """Tried and failed (refused, timed out, an error reply, a reply that makes no sense)."""


def redact_url(url: str) -> str:
    """``url`` without credentials or query: what logs and ``repr`` may show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable redis URL>"
    if ":" in host:
        host = f"[{host}]"
    userinfo = "***@" if "@" in parts.netloc else ""
    where = f"{host}:{port}" if port is not None else host
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{userinfo}{where}{parts.path}{query}"


def secrets_of(url: str) -> tuple[str, ...]:
    """Every spelling of a credential in ``url``, for scrubbing error texts."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        candidates = [parts.password, parts.username]
        candidates += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_QUERY_KEYS]
    except ValueError:
        candidates = []
    for value in candidates:
        if value:
            found.update({value, unquote(value)})
    # longest first, so that a secret containing another one is scrubbed whole
    return tuple(sorted(found, key=len, reverse=True))


class RateLimitedLog:
    """Warnings at most once per :data:`LOG_INTERVAL`, with a count of those held back, and
    every spelling of the given secrets replaced by ``***``."""

    def __init__(
        self, logger: logging.Logger, clock: Callable[[], float], secrets: tuple[str, ...] = ()
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._secrets = secrets
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = self._clock()
        if now - self._last < LOG_INTERVAL:
            self._suppressed += 1
            return
        for secret in self._secrets:
            message = message.replace(secret, "***")
        if len(message) > 300:
            message = message[:300] + "..."
        more = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
        self._last = now
        self._suppressed = 0
        self._logger.warning("%s%s", message, more)


class SharedRedis:
    """One Redis client (redis-py asyncio, bounded pool, short timeouts) and its backoff.

    ``timeout`` bounds each socket read/write and a wait for a pooled connection;
    ``connect_timeout`` bounds a connect. A call never takes longer than
    ``connect_timeout + timeout`` (an outer deadline) and is never retried: the next call
    is the retry. ``listeners`` are told ``"error"`` (a failed call) and ``"reconnect"``
    (the first success after a failure). The URL may carry a password: it never appears in
    ``repr``, logs or exceptions.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 32,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeouts must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        self.where = redact_url(url)
        self._url = url
        self._pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": timeout,  # waiting for a free connection counts as slow Redis
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),  # no retries: the next call is the retry
            "protocol": 2,  # RESP2: no HELLO round trip, the same on every redis-py release
        }
        if _make_pool(url, self._pool_options) is None:
            # raised outside the handler so that no chained exception can quote the URL
            raise ValueError(f"invalid redis URL: {self.where}")
        self.clock = clock
        self._deadline = connect_timeout + timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._client: Redis | None = None
        self._closed = False
        self.listeners: list[Callable[[str], None]] = []
        # backoff state: failing since the last success; no Redis call before _down_until
        self._failing = False
        self._down_until = 0.0
        self._next_backoff = backoff_initial
        self._probing = False
        self._log = RateLimitedLog(_log, clock, secrets_of(url))

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._client is None:
            state = "not open"
        else:
            state = "backing off" if self._failing else "up"
        return f"<SharedRedis {self.where} {state}>"

    @classmethod
    def connect(cls, url: str, **options: Any) -> SharedRedis:
        """A client that is open at once (for a caller without an app lifecycle)."""
        shared = cls(url, **options)
        shared.open()
        return shared

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        """Make the client (idempotent); nothing connects until the first call."""
        if self._client is not None or self._closed:
            return
        pool = _make_pool(self._url, self._pool_options)
        assert pool is not None  # the URL was checked in __init__
        self._client = Redis.from_pool(pool)

    async def close(self) -> None:
        """Close the connections; later calls raise :class:`RedisSkippedError`."""
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def backing_off(self) -> bool:
        """Whether Redis failed recently and calls are being skipped."""
        return self._failing

    @property
    def client(self) -> Redis:
        """The redis-py client, for building pipelines and scripts; run them with
        :meth:`call`."""
        if self._client is None:
            raise RedisSkippedError("the Redis client is not open")
        return self._client

    # -- calls ------------------------------------------------------------------------------
    async def call(
        self,
        what: str,
        operation: Callable[..., Awaitable[_T]],
        *args: Any,
        background: bool = False,
        **kwargs: Any,
    ) -> _T:
        """``await operation(*args, **kwargs)`` under the deadline and the backoff.

        Raises :class:`RedisSkippedError` without a round trip while backing off (one
        caller at a time probes once the backoff is over), :class:`RedisFailedError` when
        the call fails for any reason (socket, protocol, server error, deadline, a bug in a
        parser: it costs the caller its use of Redis, never the request).

        A ``background`` call (periodic work off the request path, such as renewing the
        replica locks) is made even while backing off: it costs no request anything, and
        its success ends the backoff for everyone."""
        if self._closed or self._client is None:
            raise RedisSkippedError("the Redis client is not open")
        probe = False
        if self._failing and not background:
            if self._probing or self.clock() < self._down_until:
                raise RedisSkippedError("Redis failed recently: backing off")
            self._probing = probe = True
        try:
            async with asyncio.timeout(self._deadline):
                result = await operation(*args, **kwargs)
        except Exception as exc:
            self.failed(what, exc)
            raise RedisFailedError(f"{what} failed") from None
        finally:
            if probe:
                self._probing = False
        self._succeeded()
        return result

    def failed(self, what: str, exc: BaseException) -> None:
        """Count a failure and start (or lengthen) the backoff."""
        self._notify("error")
        now = self.clock()
        if not (self._failing and now < self._down_until):
            # a new failure episode (or a failed probe): back off, longer each time
            delay = self._next_backoff * (0.5 + 0.5 * self._jitter())
            self._down_until = now + delay
            self._next_backoff = min(self._next_backoff * 2, self._backoff_max)
        self._failing = True
        self._log.warning(
            f"redis {self.where}: {what} failed ({type(exc).__name__}: {exc or 'no detail'});"
            " doing without Redis for a while"
        )

    async def ping(self) -> bool:
        """Whether Redis answers ``PING`` now (ignores and, on success, ends a backoff)."""
        if self._closed or self._client is None:
            return False
        try:
            async with asyncio.timeout(self._deadline):
                ok = await self._client.ping()
        except Exception:  # any failure means "not ready": the reason is not the point here
            return False
        if ok is True:
            self._succeeded()
            return True
        return False

    def _succeeded(self) -> None:
        if not self._failing:
            return
        self._failing = False
        self._down_until = 0.0
        self._next_backoff = self._backoff_initial
        self._notify("reconnect")
        _log.info("redis %s: reachable again", self.where)

    def _notify(self, kind: str) -> None:
        for listener in self.listeners:
            try:
                listener(kind)
            except Exception:  # a broken metric must not break a request
                _log.debug("redis: a listener failed on %r", kind, exc_info=True)


def _make_pool(url: str, options: dict[str, Any]) -> BlockingConnectionPool | None:
    """The bounded pool for ``url``, or ``None`` if the URL is unusable (the library's
    message may quote the URL, so the caller reports the error in its own words)."""
    try:
        return BlockingConnectionPool.from_url(url, **options)
    except Exception:
        return None
