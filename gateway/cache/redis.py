"""The shared header cache in Redis: one ``MGET`` per page, one pipeline per write-back.

Keys are ``{prefix}{namespace}:{uid}``, where the namespace is a keyed digest chosen by the
caller and the uid is base64url (no padding) of its latin-1 bytes, so no unique-id, however
odd, can reach into another key. Values are compact JSON objects.

Redis is an accelerator here, never a dependency: when it is down, slow or answers garbage,
every call still returns (misses, dropped writes), the failure is counted and logged, and the
cache stops talking to Redis for a backoff period (1 s doubling to 30 s, with jitter), so a
dead Redis costs nothing per request. After the backoff one call probes Redis; on success
the cache is back (a ``reconnect`` event). The URL may carry a password: it never appears in
``repr``, logs or exceptions.

Events passed to ``on_event`` (one call per event, meant for counters):

* ``hit`` / ``miss``: one per distinct uid asked of ``get_many``; a uid that could not be
  looked up (Redis failing or backing off) is a miss.
* ``error``: a failed Redis call, or a stored value that is not a JSON object.
* ``reconnect``: the first successful Redis call after a failure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["DEFAULT_PREFIX", "RedisHeaderCache"]

DEFAULT_PREFIX: Final = "pop3gw:v1:hdr:"
#: Keys per MGET / DEL and commands per pipeline: a page is at most 500 uids, so one call.
CHUNK: Final = 1000
#: At most one warning line per this many seconds (the rest are counted, then summarised).
LOG_INTERVAL: Final = 10.0

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_SECRET_QUERY_KEYS: Final = frozenset({"password", "username", "ssl_password"})


def encode_uid(uid: str) -> str:
    """A key-safe, injective spelling of a unique-id (base64url, no padding).

    Unique-ids are latin-1 strings (bytes as the server sent them). A string outside latin-1
    cannot come from the POP3 layer, but still gets a distinct key: ``~`` is not in the
    base64url alphabet, so the two spellings never collide.
    """
    try:
        raw, mark = uid.encode("latin-1"), ""
    except UnicodeEncodeError:
        raw, mark = uid.encode("utf-8", "surrogatepass"), "~"
    return mark + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


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


def _secrets_of(url: str) -> tuple[str, ...]:
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


class RedisHeaderCache:
    """``HeaderCache`` over Redis (redis-py asyncio, bounded pool, short timeouts).

    ``timeout`` bounds each socket read/write and a wait for a pooled connection;
    ``connect_timeout`` bounds a connect. A round trip to Redis never takes longer than
    ``connect_timeout + timeout`` (an outer deadline) and is never retried; a call makes one
    round trip (two when it finds garbage to delete, one per 1000 keys beyond that).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = 7 * 24 * 3600,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 32,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        on_event: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValueError("ttl must be a whole number of seconds, at least 1")
        if not timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeouts must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        self._where = redact_url(url)
        self._secrets = _secrets_of(url)
        pool = _make_pool(url, max_connections, timeout, connect_timeout)
        if pool is None:
            # raised outside the handler so that no chained exception can quote the URL
            raise ValueError(f"invalid redis URL: {self._where}")
        self._client: Redis = Redis.from_pool(pool)
        self._prefix = prefix
        self._ttl = ttl
        self._deadline = connect_timeout + timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_event = on_event
        self._clock = clock
        self._jitter = jitter
        self._closed = False
        # backoff state: failing since the last success; no Redis call before _down_until
        self._failing = False
        self._down_until = 0.0
        self._next_backoff = backoff_initial
        self._probing = False
        # rate-limited warnings
        self._last_log = float("-inf")
        self._suppressed = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "backing off" if self._failing else "up"
        return f"<RedisHeaderCache {self._where} prefix={self._prefix!r} {state}>"

    # -- keys and values --------------------------------------------------------------------
    def key(self, namespace: str, uid: str) -> str:
        """The Redis key of ``uid`` in ``namespace``."""
        return f"{self._prefix}{namespace}:{encode_uid(uid)}"

    # -- HeaderCache ------------------------------------------------------------------------
    async def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(uids))
        found: dict[str, dict[str, Any]] = {}
        if not wanted:
            return found
        keys = [self.key(namespace, uid) for uid in wanted]
        values: list[Any] = []
        for chunk in _chunks(keys):
            got = await self._call("MGET", self._client.mget, chunk)
            if got is None:
                break
            if not isinstance(got, list) or len(got) != len(chunk):
                self._failure("MGET", TypeError("reply does not match the keys asked"))
                break
            values += got
        garbage: list[str] = []
        for uid, key, value in zip(wanted, keys, values, strict=False):
            if value is None:
                continue
            entry = _decode(value)
            if entry is None:
                garbage.append(key)
            else:
                found[uid] = entry
        for _ in range(len(found)):
            self._event("hit")
        for _ in range(len(wanted) - len(found)):
            self._event("miss")
        if garbage:
            for _ in garbage:
                self._event("error")
            self._warn(f"{len(garbage)} stored value(s) are not JSON objects; deleting them")
            await self._delete(garbage)
        return found

    async def set_many(self, namespace: str, entries: Mapping[str, dict[str, Any]]) -> None:
        encoded: list[tuple[str, str]] = []
        for uid, entry in entries.items():
            try:
                encoded.append((self.key(namespace, uid), _encode(entry)))
            except (TypeError, ValueError) as exc:
                self._event("error")
                self._warn(f"entry not stored, not JSON-ready: {type(exc).__name__}")
        if not encoded:
            return
        for chunk in _chunks(encoded):
            if await self._call("SET", self._set_pipeline, chunk) is None:
                return

    async def delete_many(self, namespace: str, uids: Iterable[str]) -> None:
        await self._delete([self.key(namespace, uid) for uid in dict.fromkeys(uids)])

    async def close(self) -> None:
        """Close the connection pool; later calls answer misses and send nothing."""
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()

    # -- readiness --------------------------------------------------------------------------
    async def ping(self) -> bool:
        """Whether Redis answers ``PING`` now (ignores and, on success, ends a backoff)."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(self._deadline):
                ok = await self._client.ping()
        except Exception:  # any failure means "not ready": the reason is not the point here
            return False
        if ok is True:
            self._success()
            return True
        return False

    # -- Redis calls, guarded ---------------------------------------------------------------
    async def _set_pipeline(self, items: Sequence[tuple[str, str]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(key, value, ex=self._ttl)
            return await pipe.execute()

    async def _delete(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys):
            if await self._call("DEL", self._client.delete, *chunk) is None:
                return

    async def _call(
        self, what: str, operation: Callable[..., Awaitable[_T]], *args: Any
    ) -> _T | None:
        """The result of one Redis call, or ``None`` when skipped (backoff) or failed."""
        if self._closed:
            return None
        probe = False
        if self._failing:
            if self._probing or self._clock() < self._down_until:
                return None
            self._probing = probe = True
        try:
            async with asyncio.timeout(self._deadline):
                result = await operation(*args)
        except Exception as exc:
            # Whatever goes wrong below (socket, protocol, server error, deadline, a bug
            # in a parser) costs this call its cache, never the request.
            self._failure(what, exc)
            return None
        finally:
            if probe:
                self._probing = False
        self._success()
        return result

    def _failure(self, what: str, exc: BaseException) -> None:
        self._event("error")
        now = self._clock()
        if not (self._failing and now < self._down_until):
            # a new failure episode (or a failed probe): back off, longer each time
            delay = self._next_backoff * (0.5 + 0.5 * self._jitter())
            self._down_until = now + delay
            self._next_backoff = min(self._next_backoff * 2, self._backoff_max)
        self._failing = True
        self._warn(f"{what} failed ({type(exc).__name__}: {exc or 'no detail'}); serving uncached")

    def _success(self) -> None:
        if not self._failing:
            return
        self._failing = False
        self._down_until = 0.0
        self._next_backoff = self._backoff_initial
        self._event("reconnect")
        _log.info("redis header cache %s: reachable again", self._where)

    # -- reporting --------------------------------------------------------------------------
    def _event(self, kind: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind)
        except Exception:  # a broken metric must not break a request
            _log.debug("redis header cache: on_event(%r) failed", kind, exc_info=True)

    def _warn(self, message: str) -> None:
        now = self._clock()
        if now - self._last_log < LOG_INTERVAL:
            self._suppressed += 1
            return
        for secret in self._secrets:
            message = message.replace(secret, "***")
        if len(message) > 300:
            message = message[:300] + "..."
        more = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
        self._last_log = now
        self._suppressed = 0
        _log.warning("redis header cache %s: %s%s", self._where, message, more)


def _make_pool(
    url: str, max_connections: int, timeout: float, connect_timeout: float
) -> BlockingConnectionPool | None:
    """The bounded pool for ``url``, or ``None`` if the URL is unusable (the library's
    message may quote the URL, so the caller reports the error in its own words)."""
    try:
        return BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,  # waiting for a free connection counts as slow Redis
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),  # no retries: the next request is the retry
            protocol=2,  # RESP2: no HELLO round trip, the same on every redis-py release
        )
    except Exception:
        return None


def _chunks(items: Sequence[_T]) -> list[Sequence[_T]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def _encode(entry: dict[str, Any]) -> str:
    if not isinstance(entry, dict):
        raise TypeError("an entry is a dict")
    return json.dumps(entry, separators=(",", ":"), allow_nan=False)


def _decode(value: object) -> dict[str, Any] | None:
    """The entry stored as ``value``, or ``None`` if it is not a JSON object."""
    if not isinstance(value, bytes | str):
        return None
    try:
        entry = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None
