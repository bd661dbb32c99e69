"""The access-token lifecycle of one configured mailbox (:class:`TokenSource`).

- A token is reused until its *refresh time*: ``refresh_margin`` seconds before it expires
  (at the latest half-way through its lifetime, for short-lived tokens). Sessions logged in
  with it end by then too (:attr:`AccessToken.refresh_at`), so no session outlives its
  token: Gmail ends an OAuth POP3 session when its token expires.
- One refresh at a time per mailbox (single flight): concurrent callers wait for the same
  refresh, and a caller that gives up does not cancel it for the others. With Redis
  (:class:`SharedTokens`), one refresh at a time across replicas too, and every replica
  uses the token one of them obtained.
- A refresh that returns a new refresh token (rotation) is kept in memory, in Redis (sealed)
  and in the operator's ``refresh_token_store`` file, and used from then on.
- ``invalid_grant`` (or ``invalid_client``, ``unauthorized_client``) puts the mailbox in
  ``needs-reauth``: :class:`NeedsReauthError` at once, no refresh, until the OAuth
  configuration changes (a new refresh token in its file or variable, another client
  secret...). Stored rotated tokens descend from one configured grant (its *origin*) and
  are ignored once the configuration changes.
- The token endpoint down, slow or answering errors: the current token is used while it is
  still valid, and the endpoint is asked again after a backoff (1 s doubling to 60 s);
  without a valid token, :class:`TokenUnavailableError` says when the next attempt is.

Tokens, refresh tokens and client secrets never appear in logs, errors or ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from .errors import (
    NeedsReauthError,
    SecretUnavailableError,
    TokenEndpointError,
    TokenUnavailableError,
)

log = logging.getLogger("gateway.oauth")

#: OAuth error codes that no retry can cure: the configuration must change.
PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
#: expires_in when a token endpoint does not say (RFC 6749 recommends it; most send it)
DEFAULT_LIFETIME = 3600.0
#: longest lifetime believed (a clock gone wrong on either side must not pin a token)
MAX_LIFETIME = 24 * 3600.0

TokenOrigin = Literal["endpoint", "cache", "replica"]


class _Cached(Protocol):
    _cached: tuple[float, int, str] | None


def read_secret_file(path: Path, lock: threading.Lock, holder: _Cached) -> str:
    """The text of a secret file, re-read when its size or time changes (cached in
    ``holder._cached``). :class:`SecretUnavailableError` when it cannot be read: the error
    names neither the file's content nor anything of it."""
    try:
        stat = path.stat()
        with lock:
            if holder._cached and holder._cached[:2] == (stat.st_mtime, stat.st_size):
                return holder._cached[2]
            text = path.read_text("utf-8")
            holder._cached = (stat.st_mtime, stat.st_size, text)
            return text
    except (OSError, UnicodeDecodeError) as exc:
        why = "is not UTF-8" if isinstance(exc, UnicodeDecodeError) else "cannot be read"
        raise SecretUnavailableError(f"a configured secret file {why}") from None


class Secret:
    """A secret from an environment variable or a file (re-read when it changes). ``repr``
    never shows it."""

    def __init__(self, *, env: str | None = None, path: Path | None = None) -> None:
        if (env is None) == (path is None):
            raise ValueError("a secret has exactly one source")
        self._env = env
        self._path = path
        self._cached: tuple[float, int, str] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Secret from {'env' if self._env else 'file'}>"

    def get(self) -> str:
        if self._env is not None:
            return os.environ.get(self._env, "").strip()
        assert self._path is not None
        return read_secret_file(self._path, self._lock, self).strip()


@dataclass(frozen=True)
class Grant:
    """Where and how a mailbox's tokens are asked for. ``refresh_token`` None: the client
    credentials flow (app-only access)."""

    provider: str  #: google, microsoft or generic (a metric label)
    token_url: str
    client_id: str
    client_secret: Secret | None = field(default=None, repr=False)
    refresh_token: Secret | None = field(default=None, repr=False)
    scope: str | None = None
    #: a PEM bundle of the CAs to trust for the token endpoint (else the system's)
    cafile: str | None = None

    @property
    def flow(self) -> str:
        return "refresh_token" if self.refresh_token is not None else "client_credentials"

    def origin(self) -> str:
        """A digest of the configuration the tokens descend from: when it changes (a new
        refresh token, another secret), stored state of the old one is ignored."""
        material = "\0".join(
            (
                self.token_url,
                self.client_id,
                self.client_secret.get() if self.client_secret else "",
                self.refresh_token.get() if self.refresh_token else "",
                self.scope or "",
            )
        )
        return hashlib.sha256(b"pop3gw oauth origin v1\0" + material.encode()).hexdigest()[:32]

    def form(self, refresh_token: str | None) -> dict[str, str]:
        form = {"client_id": self.client_id}
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret.get()
        if refresh_token is not None:
            form.update(grant_type="refresh_token", refresh_token=refresh_token)
        else:
            form["grant_type"] = "client_credentials"
        if self.scope:
            form["scope"] = self.scope
        return form


@dataclass(frozen=True)
class AccessToken:
    """An access token, times on the source's clock. ``refresh_at``: when a new one is
    asked for, and when sessions logged in with this one end."""

    value: str = field(repr=False)
    expires_at: float
    refresh_at: float
    source: TokenOrigin = "endpoint"

    def valid(self, now: float) -> bool:
        return now < self.expires_at

    def fresh(self, now: float) -> bool:
        return now < self.refresh_at


class TokenEndpoint(Protocol):
    """The HTTP side (gateway.oauth.http): a POST of a form to a token endpoint."""

    async def post(
        self, url: str, form: Mapping[str, str], *, cafile: str | None
    ) -> Mapping[str, Any]:
        """The JSON object of a 2xx answer; :class:`TokenEndpointError` for anything else
        (with the OAuth ``error`` code of a JSON error answer)."""
        ...


class TokenObserver(Protocol):
    """What token sources report (implemented by the metrics)."""

    def token_request(self, provider: str, outcome: str) -> None: ...

    def refresh_token_rotated(self, provider: str) -> None: ...

    def token_shared(self) -> None: ...


@dataclass(frozen=True)
class TokenRecord:
    """What replicas share about one mailbox's grant (sealed in Redis): times are wall
    clock seconds (replicas' monotonic clocks differ)."""

    origin: str
    access_token: str | None = field(default=None, repr=False)
    expires_at: float = 0.0
    refresh_at: float = 0.0
    refresh_token: str | None = field(default=None, repr=False)
    needs_reauth: bool = False

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "origin": self.origin,
                "access_token": self.access_token,
                "expires_at": self.expires_at,
                "refresh_at": self.refresh_at,
                "refresh_token": self.refresh_token,
                "needs_reauth": self.needs_reauth,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TokenRecord | None:
        try:
            raw = json.loads(data)
            record = cls(
                origin=str(raw["origin"]),
                access_token=_optional_str(raw.get("access_token")),
                expires_at=float(raw.get("expires_at", 0.0)),
                refresh_at=float(raw.get("refresh_at", 0.0)),
                refresh_token=_optional_str(raw.get("refresh_token")),
                needs_reauth=bool(raw.get("needs_reauth", False)),
            )
        except (ValueError, TypeError, KeyError):
            return None
        return record


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


class SharedTokens(Protocol):
    """Token records shared by replicas (gateway.oauth.shared). Implementations never
    raise for their own failures: without Redis, each replica does on its own."""

    async def load(self, name: str) -> TokenRecord | None: ...

    async def save(self, name: str, record: TokenRecord) -> None: ...

    async def lock(self, name: str, ttl: float) -> tuple[bool, object | None]:
        """(acquired, token to unlock with). Redis unavailable: (True, None), go ahead
        uncoordinated."""
        ...

    async def unlock(self, name: str, token: object | None) -> None: ...


class RefreshTokenFile:
    """A file the operator names (``refresh_token_store``) where rotated refresh tokens are
    kept across restarts: JSON with the grant's origin, mode 0600, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<RefreshTokenFile {self.path}>"

    def load(self, origin: str) -> str | None:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read the refresh token store %s: %s", self.path, type(exc).__name__)
            return None
        if not isinstance(raw, dict) or raw.get("origin") != origin:
            return None  # written for another configuration
        token = raw.get("refresh_token")
        return token if isinstance(token, str) and token else None

    def save(self, origin: str, token: str) -> bool:
        data = json.dumps({"origin": origin, "refresh_token": token}).encode()
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "wb") as out:  # mkstemp makes it 0600
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.error(
                "cannot write the refresh token store %s (%s): the rotated refresh token is "
                "kept in memory only",
                self.path,
                exc.strerror or type(exc).__name__,
            )
            return False
        return True


class TokenSource:
    """The access tokens of one configured mailbox (see the module docstring)."""

    def __init__(
        self,
        mailbox_id: str,
        grant: Grant,
        endpoint: TokenEndpoint,
        *,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        shared: SharedTokens | None = None,
        store: RefreshTokenFile | None = None,
        observer: TokenObserver | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        request_timeout: float = 10.0,
        on_state: Callable[[], None] | None = None,
    ) -> None:
        self.mailbox_id = mailbox_id
        self.grant = grant
        self._endpoint = endpoint
        self.refresh_margin = refresh_margin
        self.clock = clock
        self._wall = wall
        self._shared = shared
        self._store = store
        self._observer = observer
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        #: how long a replica waits for another one's refresh before trying itself
        self._replica_wait = request_timeout * 2 + 5.0
        self._on_state = on_state
        self._origin: str | None = None
        self._token: AccessToken | None = None
        self._refresh_token: str | None = None  #: rotated, of the current origin
        self._needs_reauth = False
        self._rejected: str | None = None  #: digest of a token the mail server refused
        self._retry_at = -math.inf
        self._delay = backoff_initial
        self._last_failure: str | None = None
        self._inflight: asyncio.Task[AccessToken] | None = None
        #: the name of this mailbox's shared record (SharedTokens keys it by an HMAC)
        self.shared_name = mailbox_id

    def __repr__(self) -> str:
        return f"<TokenSource {self.mailbox_id} {self.grant.provider} {self.grant.flow}>"

    @property
    def needs_reauth(self) -> bool:
        return self._needs_reauth

    # -- the one entry point -----------------------------------------------------------
    async def token(self) -> AccessToken:
        """A token valid now, and until its ``refresh_at`` unless the endpoint is failing
        (then the last one while it lasts). Raises :class:`NeedsReauthError`,
        :class:`TokenUnavailableError`."""
        self._follow_configuration()
        now = self.clock()
        current = self._token
        if current is not None and current.fresh(now):
            return replace(current, source="cache")
        if self._needs_reauth:
            raise self._reauth_error()
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(
                self._refresh(), name=f"pop3gw-oauth-{self.mailbox_id}"
            )
            self._inflight = task
            task.add_done_callback(self._landed)
        # shielded: a caller that gives up does not cancel the refresh for the others
        return await asyncio.shield(self._inflight)

    def rejected(self, token: AccessToken) -> None:
        """The mail server refused ``token``: ask for a new one next time (never adopt it
        again from another replica)."""
        self._rejected = _digest(token.value)
        if self._token is not None and self._token.value == token.value:
            self._token = None

    def describe(self) -> str:
        """The state in words, for logs and ``/check`` (never a token)."""
        if self._needs_reauth:
            return "needs-reauth"
        return "ok" if self._last_failure is None else f"failing ({self._last_failure})"

    # -- internals ---------------------------------------------------------------------
    def _landed(self, task: asyncio.Task[AccessToken]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: waiters raise it; nobody else must log it

    def _follow_configuration(self) -> None:
        origin = self.grant.origin()
        if origin == self._origin:
            return
        if self._origin is not None:
            log.info(
                "mailbox %s: its OAuth configuration changed; starting afresh", self.mailbox_id
            )
        self._origin = origin
        was = self._needs_reauth
        self._token = None
        self._refresh_token = None
        self._needs_reauth = False
        self._rejected = None
        self._retry_at = -math.inf
        self._delay = self._backoff_initial
        self._last_failure = None
        if was and self._on_state is not None:
            self._on_state()

    def _reauth_error(self) -> NeedsReauthError:
        return NeedsReauthError(
            f"the OAuth grant of mailbox {self.mailbox_id!r} was refused by the token endpoint; "
            "it needs to be authorized again (a new refresh token in its configuration)"
        )

    def _from_record(self, record: TokenRecord, now: float) -> AccessToken | None:
        if record.access_token is None or _digest(record.access_token) == self._rejected:
            return None
        wall = self._wall()
        return AccessToken(
            record.access_token,
            expires_at=now + (record.expires_at - wall),
            refresh_at=now + (record.refresh_at - wall),
            source="replica",
        )

    def _adopt(self, record: TokenRecord | None, origin: str) -> AccessToken | None:
        """A fresh token another replica obtained, or the needs-reauth it found."""
        if record is None or record.origin != origin:
            return None
        if record.refresh_token:
            self._refresh_token = record.refresh_token
        if record.needs_reauth:
            self._enter_reauth(None)
            raise self._reauth_error()
        now = self.clock()
        token = self._from_record(record, now)
        if token is not None and token.fresh(now):
            self._token = token
            self._succeeded()
            if self._observer is not None:
                self._observer.token_shared()
            return token
        return None

    async def _refresh(self) -> AccessToken:
        origin = self._origin
        assert origin is not None
        shared = self._shared
        name = self.shared_name
        if shared is not None:
            adopted = self._adopt(await shared.load(name), origin)
            if adopted is not None:
                return adopted
        now = self.clock()
        if now < self._retry_at:
            return self._without_endpoint(now)
        held: object | None = None
        try:
            if shared is not None:
                deadline = now + self._replica_wait
                while True:
                    acquired, held = await shared.lock(name, self._replica_wait)
                    # after taking the lock: what the replica before us stored
                    adopted = self._adopt(await shared.load(name), origin)
                    if adopted is not None:
                        return adopted
                    if acquired or self.clock() >= deadline:
                        break
                    await asyncio.sleep(0.05)
            return await self._ask(origin)
        finally:
            if shared is not None and held is not None:
                await shared.unlock(name, held)

    def _refresh_token_now(self, origin: str) -> str | None:
        refresh = self.grant.refresh_token
        if refresh is None:
            return None
        if self._refresh_token is None and self._store is not None:
            self._refresh_token = self._store.load(origin)
        return self._refresh_token or refresh.get()

    async def _ask(self, origin: str) -> AccessToken:
        grant = self.grant
        used = self._refresh_token_now(origin)
        started = self.clock()
        try:
            answer = await self._endpoint.post(
                grant.token_url, grant.form(used), cafile=grant.cafile
            )
            token, rotated = self._parse(answer, started, used)
        except TokenEndpointError as exc:
            if exc.error in PERMANENT_ERRORS:
                self._observe("invalid-grant" if exc.error == "invalid_grant" else "refused")
                self._enter_reauth(exc.error)
                await self._share(TokenRecord(origin, needs_reauth=True))
                raise self._reauth_error() from None
            self._observe("timeout" if exc.why.startswith("timed out") else "error")
            return self._failed(exc.why)
        self._observe("ok")
        self._token = token
        self._succeeded()
        next_refresh_token = rotated or self._refresh_token
        if rotated is not None:
            self._refresh_token = rotated
            if self._observer is not None:
                self._observer.refresh_token_rotated(grant.provider)
            log.info(
                "mailbox %s: the token endpoint rotated the refresh token; the new one is "
                "used from now on%s",
                self.mailbox_id,
                ""
                if self._store or self._shared
                else " (kept in memory only: name a "
                "refresh_token_store, or use Redis, to keep it across restarts)",
            )
            if self._store is not None:
                self._store.save(origin, rotated)
        wall = self._wall()
        now = self.clock()
        await self._share(
            TokenRecord(
                origin,
                access_token=token.value,
                expires_at=wall + (token.expires_at - now),
                refresh_at=wall + (token.refresh_at - now),
                refresh_token=next_refresh_token,
            )
        )
        return token

    def _parse(
        self, answer: Mapping[str, Any], started: float, used: str | None
    ) -> tuple[AccessToken, str | None]:
        value = answer.get("access_token")
        if not isinstance(value, str) or not value or not value.isascii():
            raise TokenEndpointError("answered without an access token")
        if any(c in value for c in "\r\n\0 \x01"):
            raise TokenEndpointError("answered an access token that cannot be sent")
        kind = answer.get("token_type", "Bearer")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise TokenEndpointError("answered a token that is not a Bearer token")
        lifetime = answer.get("expires_in", DEFAULT_LIFETIME)
        try:
            seconds = min(max(float(lifetime), 0.0), MAX_LIFETIME)
        except (TypeError, ValueError):
            seconds = math.nan
        if math.isnan(seconds):  # NaN (JSON as Python reads it): never valid, never due
            raise TokenEndpointError("answered an expires_in that is not a number")
        margin = max(seconds - self.refresh_margin, seconds / 2)
        token = AccessToken(value, expires_at=started + seconds, refresh_at=started + margin)
        rotated = answer.get("refresh_token")
        if not isinstance(rotated, str) or not rotated or rotated == used:
            rotated = None
        return token, rotated

    def _without_endpoint(self, now: float) -> AccessToken:
        """In backoff: the current token while it is valid, else a clear failure."""
        current = self._token
        if current is not None and current.valid(now):
            return replace(current, source="cache")
        raise TokenUnavailableError(
            f"no access token for mailbox {self.mailbox_id!r}: the token endpoint "
            f"{self._last_failure or 'failed'}; next attempt in {self._retry_at - now:.0f} s",
            retry_after=max(1.0, self._retry_at - now),
        )

    def _failed(self, why: str) -> AccessToken:
        now = self.clock()
        self._last_failure = why
        self._retry_at = now + self._delay
        current = self._token
        keeps = current is not None and current.valid(now)
        log.warning(
            "mailbox %s: the token endpoint %s; next attempt in %.0f s%s",
            self.mailbox_id,
            why,
            self._delay,
            "; the current access token stays in use while it is valid" if keeps else "",
        )
        self._delay = min(self._delay * 2, self._backoff_max)
        return self._without_endpoint(now)

    def _succeeded(self) -> None:
        self._retry_at = -math.inf
        self._delay = self._backoff_initial
        self._last_failure = None

    def _enter_reauth(self, error: str | None) -> None:
        already = self._needs_reauth
        self._needs_reauth = True
        self._token = None
        if already:
            return
        log.error(
            "mailbox %s needs to be authorized again: %s; no token refresh is tried until "
            "its OAuth configuration changes (a new refresh token, or another client secret)",
            self.mailbox_id,
            f"the token endpoint answered {error}" if error else "another replica found so",
        )
        if self._on_state is not None:
            self._on_state()

    async def _share(self, record: TokenRecord) -> None:
        if self._shared is not None:
            await self._shared.save(self.shared_name, record)

    def _observe(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer.token_request(self.grant.provider, outcome)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


#: a token source's ``token`` method, as accounts use it
GetToken = Callable[[], Awaitable[AccessToken]]
