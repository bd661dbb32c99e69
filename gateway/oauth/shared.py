"""OAuth token records shared by replicas in Redis: one refresh at a time across replicas,
and every replica uses the token (and the rotated refresh token) one of them obtained.

Why share rather than keep tokens per replica: a provider that rotates refresh tokens
revokes the old one at each refresh (and some revoke the whole grant when a revoked one is
used again), so replicas refreshing on their own would lock each other out; sharing also
means one refresh per token lifetime for the whole deployment, not one per replica.

What Redis holds is sealed: AES-256-GCM with a key derived from the cache secret (the
same on every replica), the Redis key bound in as associated data, so a value is neither
readable nor movable to another mailbox's key, and one written by anyone without the
secret is refused (a miss). Key names are HMACs of the mailbox id. Redis down or slow:
each replica does on its own (the shared client's backoff), never a failed request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..redis import RedisUnavailableError, SharedRedis
from .tokens import TokenRecord

log = logging.getLogger("gateway.oauth")

PREFIX: Final = "pop3gw:v1:oauth:"
_VERSION: Final = b"\x01"
_NONCE: Final = 12
#: a record holds a rotated refresh token: kept long (providers' refresh tokens last
#: weeks to months); refreshed at every write
RECORD_TTL: Final = 90 * 24 * 3600

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisTokens:
    """:class:`gateway.oauth.tokens.SharedTokens` in Redis; never raises for Redis."""

    def __init__(
        self,
        redis: SharedRedis,
        *,
        key: bytes,
        ttl: int = RECORD_TTL,
        on_invalid: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._aead = AESGCM(hmac.new(key, b"pop3gw oauth seal v1", "sha256").digest())
        self._names = hmac.new(key, b"pop3gw oauth names v1", "sha256").digest()
        self._ttl = ttl
        self._unlock_script: Any = None
        #: records refused (sealed with another key, altered, or garbage); each is told to
        #: ``on_invalid`` too (the metric)
        self.invalid = 0
        self._on_invalid = on_invalid

    def __repr__(self) -> str:
        return f"<RedisTokens {self._redis!r}>"

    def key(self, name: str) -> str:
        digest = hmac.new(self._names, name.encode(), hashlib.sha256).hexdigest()[:32]
        return PREFIX + digest

    def seal(self, key: str, plain: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plain, key.encode())

    def unseal(self, key: str, sealed: bytes) -> bytes | None:
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            return None
        nonce = sealed[1 : 1 + _NONCE]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE :], key.encode())
        except InvalidTag:
            return None

    async def load(self, name: str) -> TokenRecord | None:
        key = self.key(name)
        redis = self._redis
        try:
            sealed = await redis.call("oauth token read", redis.client.get, key)
        except RedisUnavailableError:
            return None
        if sealed is None:
            return None
        plain = self.unseal(key, sealed) if isinstance(sealed, bytes) else None
        record = TokenRecord.from_json(plain) if plain is not None else None
        if record is None:
            self.invalid += 1
            if self._on_invalid is not None:
                self._on_invalid()
            log.warning("a shared OAuth token record failed its integrity check; ignored")
        return record

    async def save(self, name: str, record: TokenRecord) -> None:
        key = self.key(name)
        redis = self._redis
        try:
            await redis.call(
                "oauth token write",
                redis.client.set,
                key,
                self.seal(key, record.to_json()),
                ex=self._ttl,
            )
        except RedisUnavailableError:
            return

    async def lock(self, name: str, ttl: float) -> tuple[bool, object | None]:
        token = os.urandom(16).hex()
        redis = self._redis
        try:
            taken = await redis.call(
                "oauth refresh lock",
                redis.client.set,
                self.key(name) + ":lock",
                token,
                nx=True,
                px=max(1, int(ttl * 1000)),
            )
        except RedisUnavailableError:
            return True, None  # uncoordinated: this replica refreshes on its own
        return (True, token) if taken else (False, None)

    async def unlock(self, name: str, token: object | None) -> None:
        if token is None:
            return
        redis = self._redis
        try:
            if self._unlock_script is None:
                self._unlock_script = redis.client.register_script(_UNLOCK)
            await redis.call(
                "oauth refresh unlock",
                self._unlock_script,
                keys=[self.key(name) + ":lock"],
                args=[str(token)],
            )
        except RedisUnavailableError:
            return  # the lock's TTL frees it
