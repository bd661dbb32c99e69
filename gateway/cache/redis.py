"""The shared header cache in Redis: one ``MGET`` per page, one pipeline per write-back.

Keys are ``{prefix}{namespace}:{uid}``, where the namespace is a keyed digest chosen by the
caller and the uid is base64url (no padding) of its latin-1 bytes, so no unique-id, however
odd, can reach into another key. Values are compact JSON objects, sealed: 32 hex digits of
an HMAC-SHA256 (keyed by the cache secret) over the value's key and its JSON, then the JSON.
Redis holds what we wrote but does not vouch for it: a value whose seal does not check (
written by someone else, or moved from another key, such as another mailbox's) is a miss,
counted as ``invalid`` and deleted, never shown.

Redis is an accelerator here, never a dependency: the connection and its failure policy are
the process's one :class:`gateway.redis.SharedRedis` (bounded pool, short timeouts, one
backoff shared with the replica gate). When Redis is down, slow or answers garbage, every
call still returns (misses, dropped writes) and the failure is counted; while the shared
client backs off, a call costs nothing. The first success after a failure is a
``reconnect`` event.

Events passed to ``on_event`` (one call per event, meant for counters):

* ``hit`` / ``miss``: one per distinct uid asked of ``get_many``; a uid that could not be
  looked up (Redis failing or backing off) is a miss.
* ``error``: a failed Redis call of the cache's, or a sealed value that is not a JSON object.
* ``invalid``: a stored value whose seal does not check (deleted, never shown).
* ``reconnect``: the first successful Redis call (of any user of the client) after a failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from ..redis import RateLimitedLog, RedisFailedError, RedisUnavailableError, SharedRedis

__all__ = ["DEFAULT_PREFIX", "RedisHeaderCache"]

DEFAULT_PREFIX: Final = "pop3gw:v2:hdr:"  # v2: values are sealed (v1 values are not read)
#: Hex digits of the seal in front of a value (128 bits of HMAC-SHA256).
SEAL_HEX: Final = 32
#: Keys per MGET / DEL and commands per pipeline: a page is at most 500 uids, so one call.
CHUNK: Final = 1000

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


class RedisHeaderCache:
    """``HeaderCache`` over the process's shared Redis client.

    A call makes one round trip (two when it finds garbage to delete, one per 1000 keys
    beyond that), each bounded by the shared client's deadline and never retried.
    """

    def __init__(
        self,
        redis: SharedRedis,
        *,
        seal_key: bytes,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = 7 * 24 * 3600,
        on_event: Callable[[str], None] | None = None,
        owns_redis: bool = False,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValueError("ttl must be a whole number of seconds, at least 1")
        if len(seal_key) < 16:
            raise ValueError("seal_key must be at least 16 bytes")
        self._sealer = hmac.new(seal_key, digestmod=hashlib.sha256)
        self._redis = redis
        self._owns_redis = owns_redis
        self._prefix = prefix
        self._ttl = ttl
        self._on_event = on_event
        self._closed = False
        self._log = RateLimitedLog(_log, redis.clock)
        redis.listeners.append(self._redis_event)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = 7 * 24 * 3600,
        on_event: Callable[[str], None] | None = None,
        seal_key: bytes | None = None,
        **redis_options: Any,
    ) -> RedisHeaderCache:
        """A cache with a Redis client of its own (closed with the cache): for a caller
        that shares it with nothing else. Without ``seal_key``, one random to this cache
        (what it writes is readable by it alone)."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValueError("ttl must be a whole number of seconds, at least 1")
        redis = SharedRedis.connect(url, **redis_options)
        return cls(
            redis,
            seal_key=seal_key if seal_key is not None else os.urandom(32),
            prefix=prefix,
            ttl=ttl,
            on_event=on_event,
            owns_redis=True,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "backing off" if self._redis.backing_off else "up"
        return f"<RedisHeaderCache {self._redis.where} prefix={self._prefix!r} {state}>"

    # -- keys and values --------------------------------------------------------------------
    def key(self, namespace: str, uid: str) -> str:
        """The Redis key of ``uid`` in ``namespace``."""
        return f"{self._prefix}{namespace}:{encode_uid(uid)}"

    def seal(self, key: str, text: str) -> str:
        """What is stored under ``key`` for the JSON ``text``: its seal, then the text."""
        return self._mac(key.encode(), text.encode()) + text

    def _mac(self, key: bytes, text: bytes) -> str:
        mac = self._sealer.copy()
        mac.update(len(key).to_bytes(4, "big"))
        mac.update(key)
        mac.update(text)
        return mac.hexdigest()[:SEAL_HEX]

    def _unseal(self, key: str, value: object) -> bytes | None:
        """The JSON of a stored value if its seal checks for ``key``, else None."""
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        if not isinstance(value, bytes) or len(value) < SEAL_HEX:
            return None
        seal, text = value[:SEAL_HEX], value[SEAL_HEX:]
        expected = self._mac(key.encode(), text).encode()
        return text if hmac.compare_digest(seal, expected) else None

    # -- HeaderCache ------------------------------------------------------------------------
    async def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(uids))
        found: dict[str, dict[str, Any]] = {}
        if not wanted:
            return found
        keys = [self.key(namespace, uid) for uid in wanted]
        values: list[Any] = []
        for chunk in _chunks(keys):
            got = await self._call("MGET", self._mget, chunk)
            if got is None:
                break
            if not isinstance(got, list) or len(got) != len(chunk):
                # The cache's own trouble (a proxy in between, say): it does without Redis
                # for this call; the other users of the client are not held back for it.
                self._event("error")
                self._warn("MGET answered something that does not match the keys asked")
                break
            values += got
        garbage: list[str] = []
        forged: list[str] = []
        for uid, key, value in zip(wanted, keys, values, strict=False):
            if value is None:
                continue
            text = self._unseal(key, value)
            entry = None if text is None else _decode(text)
            if text is None:
                forged.append(key)
            elif entry is None:
                garbage.append(key)
            else:
                found[uid] = entry
        for _ in range(len(found)):
            self._event("hit")
        for _ in range(len(wanted) - len(found)):
            self._event("miss")
        if forged:
            for _ in forged:
                self._event("invalid")
            self._warn(f"{len(forged)} stored value(s) fail their seal; deleting them")
        if garbage:
            for _ in garbage:
                self._event("error")
            self._warn(f"{len(garbage)} sealed value(s) are not JSON objects; deleting them")
        if forged or garbage:
            await self._delete(forged + garbage)
        return found

    async def set_many(self, namespace: str, entries: Mapping[str, dict[str, Any]]) -> None:
        encoded: list[tuple[str, str]] = []
        for uid, entry in entries.items():
            try:
                key = self.key(namespace, uid)
                encoded.append((key, self.seal(key, _encode(entry))))
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
        """Stop using Redis (and close the client if the cache owns it); later calls answer
        misses and send nothing."""
        if self._closed:
            return
        self._closed = True
        if self._redis_event in self._redis.listeners:
            self._redis.listeners.remove(self._redis_event)
        if self._owns_redis:
            await self._redis.close()

    # -- readiness --------------------------------------------------------------------------
    async def ping(self) -> bool:
        """Whether Redis answers ``PING`` now (ignores and, on success, ends a backoff)."""
        if self._closed:
            return False
        return await self._redis.ping()

    # -- Redis calls, guarded ---------------------------------------------------------------
    async def _mget(self, keys: Sequence[str]) -> list[Any]:
        return await self._redis.client.mget(keys)

    async def _set_pipeline(self, items: Sequence[tuple[str, str]]) -> list[Any]:
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(key, value, ex=self._ttl)
            return await pipe.execute()

    async def _del(self, *keys: str) -> int:
        return await self._redis.client.delete(*keys)

    async def _delete(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys):
            if await self._call("DEL", self._del, *chunk) is None:
                return

    async def _call(
        self, what: str, operation: Callable[..., Awaitable[_T]], *args: Any
    ) -> _T | None:
        """The result of one Redis call, or ``None`` when skipped (backoff) or failed."""
        if self._closed:
            return None
        try:
            return await self._redis.call(what, operation, *args)
        except RedisFailedError:
            self._event("error")
            return None
        except RedisUnavailableError:
            return None

    # -- reporting --------------------------------------------------------------------------
    def _redis_event(self, kind: str) -> None:
        if kind == "reconnect":  # failures are counted per call, by the caller that saw them
            self._event(kind)

    def _event(self, kind: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind)
        except Exception:  # a broken metric must not break a request
            _log.debug("redis header cache: on_event(%r) failed", kind, exc_info=True)

    def _warn(self, message: str) -> None:
        self._log.warning(f"redis header cache {self._redis.where}: {message}")


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
