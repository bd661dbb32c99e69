"""Who logs in where: upstreams, credentials, accounts, API keys, provider presets.

Built by ``app.py`` from the settings; used by the API layer to turn a request's credentials
into an :class:`Account`, and by the service to open POP3 sessions for it. The upstream host
never comes from a request: passthrough users are routed by their domain to a configured
upstream or a built-in preset, or to the default upstream.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .hosts import is_loopback
from .oauth.tokens import AccessToken, TokenSource, read_secret_file
from .pop3 import Capabilities, POP3AuthError, POP3Client, Timeouts, TLSConfig, TLSMode

AuthMethod = Literal["pass", "plain", "login", "xoauth2", "oauthbearer", "apop"]
OAuthMechanism = Literal["auto", "xoauth2", "oauthbearer"]


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), the same value as ``hmac.digest(key, message, "sha256")``.

    The keyed inner and outer hash states are prepared once per key (the gateway has one
    or two); each call then costs two hash updates. OpenSSL's one-shot HMAC looks the
    algorithm up on every call, which is several times slower and runs on every request.
    """
    inner, outer = _hmac_states(key)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


@functools.lru_cache(maxsize=16)
def _hmac_states(key: bytes) -> tuple[Any, Any]:
    block = 64  # SHA-256's block size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


@dataclass(frozen=True)
class Upstream:
    """A POP3 server and how to talk to it."""

    name: str
    host: str
    port: int
    tls: TLSMode
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    pipelining: bool = True
    #: end sessions without QUIT after reading (Gmail: RETR + QUIT marks mail downloaded)
    read_only_sessions: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: AUTH XOAUTH2 in two steps, the token only after the server's empty challenge
    #: (Microsoft 365 wants it so); else with the command when it fits in 255 octets
    xoauth2_two_step: bool = False

    async def connect(
        self,
        *,
        tls: TLSMode | None = None,
        on_command: Callable[[str, str, float], None] | None = None,
        capa: bool = True,
    ) -> POP3Client:
        """A new session (``tls`` overrides the mode, e.g. PLAIN to do STLS by hand).

        ``capa``: CAPA as soon as the greeting is read: a password login is then one AUTH
        PLAIN where offered, and the first batch after login carries the next CAPA along.
        False when the caller knows what this server listed (:class:`KnownServers`)."""
        return await POP3Client.connect(
            self.host,
            self.port,
            tls=self.tls if tls is None else tls,
            tls_config=self.tls_config,
            timeouts=self.timeouts,
            pipelining=self.pipelining,
            on_command=on_command,
            capa=capa,
        )

    @property
    def server_key(self) -> tuple[str, int, str, str | None]:
        """Which server this is, for what is remembered of it (:class:`KnownServers`): the
        TLS name too (one address may route by it to different servers)."""
        return self.host, self.port, self.tls.value, self.tls_config.server_hostname


#: Servers remembered by :class:`KnownServers` at most (the least recently used go).
MAX_KNOWN_SERVERS = 1024
#: What a server's CAPA listed is trusted for this long (servers are reconfigured rarely;
#: a stale entry costs one round trip, see :meth:`POP3Client.login`).
KNOWN_SERVER_SECONDS = 3600.0
_PLAIN = Capabilities({"SASL": ("PLAIN",)})
_PLAIN_PIPELINING = Capabilities({"SASL": ("PLAIN",), "PIPELINING": ()})


class KnownServers:
    """What servers' CAPA listed before login, remembered from one session to the next, so
    that a password login to a server that offered SASL PLAIN sends ``AUTH PLAIN`` as soon
    as the greeting is read: one round trip fewer for every new session (10-200 ms where
    users' servers are). Only two facts are kept per server (SASL PLAIN offered, PIPELINING
    offered), for :data:`KNOWN_SERVER_SECONDS`, for at most :data:`MAX_KNOWN_SERVERS`
    servers; nothing about any user. A server that stopped offering PLAIN costs one round
    trip and is then forgotten (:meth:`POP3Client.login` falls back on its own)."""

    def __init__(
        self,
        max_entries: int = MAX_KNOWN_SERVERS,
        max_age: float = KNOWN_SERVER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_entries
        self._max_age = max_age
        self._clock = clock
        #: server -> (its CAPA listed PIPELINING, until when this is trusted)
        self._known: OrderedDict[tuple[str, int, str, str | None], tuple[bool, float]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._known)

    @staticmethod
    def applies(upstream: Upstream) -> bool:
        """Implicit TLS, or plaintext to a loopback address: STARTTLS asks its CAPA after
        STLS anyway, and a plaintext server elsewhere that stopped taking passwords in clear
        (CAPA then lists only STLS, and USER is refused before any password) must never be
        sent one in an assumed AUTH PLAIN."""
        if upstream.tls is TLSMode.IMPLICIT:
            return True
        return upstream.tls is TLSMode.PLAIN and is_loopback(upstream.host)

    def assumed(self, upstream: Upstream) -> Capabilities | None:
        """What to assume of ``upstream`` for a login without CAPA (``POP3Client.login``'s
        ``assume``), or None: unknown, no PLAIN last time, too old, or not a server this
        applies to (:meth:`applies`)."""
        if not self.applies(upstream):
            return None
        key = upstream.server_key
        found = self._known.get(key)
        if found is None:
            return None
        pipelining, until = found
        if self._clock() >= until:
            del self._known[key]
            return None
        self._known.move_to_end(key)
        return _PLAIN_PIPELINING if pipelining else _PLAIN

    def learn(self, upstream: Upstream, listed: Capabilities | None) -> None:
        """After a login: what ``upstream``'s CAPA listed before it (None: the session asked
        none, and what was assumed held)."""
        if listed is None or not self.applies(upstream):
            return
        key = upstream.server_key
        if "PLAIN" not in listed.sasl:
            self._known.pop(key, None)
            return
        self._known[key] = (listed.pipelining, self._clock() + self._max_age)
        self._known.move_to_end(key)
        while len(self._known) > self._max:
            self._known.popitem(last=False)


#: Built-in presets by e-mail domain, as a mail client's account wizard has them.
#: Hosts that want AUTH XOAUTH2 in two steps (Microsoft 365 / Outlook).
TWO_STEP_XOAUTH2_HOSTS = frozenset({"outlook.office365.com"})

PRESETS: dict[str, tuple[str, int, bool]] = {
    # domain: (host, port, read-only sessions)
    "126.com": ("pop.126.com", 995, False),
    "163.com": ("pop.163.com", 995, False),
    "yeah.net": ("pop.yeah.net", 995, False),
    "qq.com": ("pop.qq.com", 995, False),
    "foxmail.com": ("pop.qq.com", 995, False),
    "gmail.com": ("pop.gmail.com", 995, True),
    "googlemail.com": ("pop.gmail.com", 995, True),
    "outlook.com": ("outlook.office365.com", 995, False),
    "hotmail.com": ("outlook.office365.com", 995, False),
    "live.com": ("outlook.office365.com", 995, False),
    "office365.com": ("outlook.office365.com", 995, False),
}


def preset_upstream(domain: str, timeouts: Timeouts) -> Upstream | None:
    found = PRESETS.get(domain.lower())
    if found is None:
        return None
    host, port, read_only = found
    return Upstream(
        name=f"preset-{domain.lower()}",
        host=host,
        port=port,
        tls=TLSMode.IMPLICIT,
        read_only_sessions=read_only,
        timeouts=timeouts,
        xoauth2_two_step=host in TWO_STEP_XOAUTH2_HOSTS,
    )


class Credential:
    """A password or OAuth token: given, from an environment variable, or from a file that
    is re-read when it changes. ``repr`` never shows it."""

    def __init__(
        self,
        method: AuthMethod,
        *,
        value: str | None = None,
        env: str | None = None,
        path: Path | None = None,
    ) -> None:
        if sum(x is not None for x in (value, env, path)) != 1:
            raise ValueError("a credential has exactly one source")
        self.method = method
        self._value = value
        self._env = env
        self._path = path
        self._cached: tuple[float, int, str] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        source = "file" if self._path else "env" if self._env else "value"
        return f"<Credential {self.method} from {source}>"

    @property
    def fixed(self) -> bool:
        """Whether the secret was given as a value: it never changes (an environment
        variable or a file may)."""
        return self._value is not None

    def secret(self) -> str:
        if self._value is not None:
            return self._value
        if self._env is not None:
            return os.environ.get(self._env, "")
        assert self._path is not None
        return read_secret_file(self._path, self._lock, self).strip()


class OAuthCredential:
    """Access tokens the gateway obtains itself (a :class:`TokenSource`), sent with
    OAUTHBEARER or XOAUTH2. ``repr`` names the mailbox, never a token."""

    method: Literal["oauth2"] = "oauth2"

    def __init__(self, source: TokenSource, mechanism: OAuthMechanism = "auto") -> None:
        self.source = source
        self.mechanism = mechanism

    def __repr__(self) -> str:
        return f"<OAuthCredential {self.source.mailbox_id} {self.mechanism}>"

    def secret(self) -> str:
        """Not a token: what the session pool keys sessions by (the grant's origin, so that
        a changed configuration never reuses a session of the old one). A session's token
        is bounded by :attr:`AccessToken.refresh_at` instead."""
        return "oauth2:" + self.source.grant.origin()


AnyCredential = Credential | OAuthCredential


@dataclass(frozen=True)
class Account:
    """One mailbox to log in to: where, as whom, with what."""

    mailbox_id: str  #: "me" for passthrough, else the configured id
    upstream: Upstream
    user: str
    credential: AnyCredential = field(repr=False)
    passthrough: bool
    #: the address the request came from (the peer, or X-Forwarded-For from a trusted
    #: proxy), set per request by the API layer: the failed-login rate per client
    client: str | None = field(default=None, compare=False, repr=False)
    #: :meth:`digest` by key, for a credential given as a value (that never changes): the
    #: same account object serves every request of its client (see RecentAccounts)
    _digests: dict[bytes, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    def digest(self, key: bytes) -> str:
        """A keyed digest of upstream + user + secret: the pool key (a changed password or
        token never reuses a session logged in with the old one)."""
        credential = self.credential
        fixed = isinstance(credential, Credential) and credential.fixed
        if fixed:
            known = self._digests.get(key)
            if known is not None:
                return known
        material = "\0".join(
            (self.upstream.name, self.upstream.host, str(self.upstream.port), self.user)
        )
        secret = credential.secret()
        value = hmac_sha256(key, f"{material}\0{secret}".encode()).hex()
        if fixed and len(self._digests) < 4:
            self._digests[key] = value
        return value

    def person(self, key: bytes) -> str:
        """A keyed digest of upstream + user as the server understands it: case spellings
        of one login (``bob``, ``Bob``, ``BOB``: one mailbox on Dovecot, Gmail, Outlook) are
        one person, for every limit (sessions, throttles, rates). Data stays apart by the
        exact spelling (:meth:`namespace`, :meth:`digest`), as a case-sensitive server
        keeps it."""
        material = "\0".join((self.upstream.host, str(self.upstream.port), self.user.casefold()))
        return "p" + hmac_sha256(key, material.encode())[:16].hex()

    def namespace(self, key: bytes) -> str:
        """A keyed digest of upstream + user: the cache namespace (no secret in it, so it
        survives a password change; no user name in clear)."""
        material = "\0".join((self.upstream.host, str(self.upstream.port), self.user))
        return hmac_sha256(key, material.encode())[:16].hex()

    async def prepare(self) -> None:
        """What a login needs before connecting: an OAuth access token (obtained now if none
        is fresh), so that the token endpoint is never waited for with a POP3 connection
        open. Raises the token's errors (gateway.oauth.errors)."""
        if isinstance(self.credential, OAuthCredential):
            await self.credential.source.token()

    @property
    def password_login(self) -> bool:
        """Whether :meth:`login` logs in with a password the fewest round trips allow
        (``POP3Client.login``: AUTH PLAIN where offered, else USER and PASS)."""
        return isinstance(self.credential, Credential) and self.credential.method == "pass"

    async def login(self, client: POP3Client, *, assume: Capabilities | None = None) -> None:
        """Log in on ``client``; ``assume`` (password logins only): what to assume of a
        server whose session asked no CAPA (``POP3Client.login``)."""
        credential = self.credential
        if isinstance(credential, OAuthCredential):
            await self._oauth_login(client, credential)
            return
        secret = credential.secret()
        method = credential.method
        if method == "pass":
            await client.login(self.user, secret, assume=assume)
        elif method == "plain":
            await client.auth_plain(self.user, secret)
        elif method == "login":
            await client.auth_login(self.user, secret)
        elif method == "xoauth2":
            await client.auth_xoauth2(self.user, secret, two_step=self.upstream.xoauth2_two_step)
        elif method == "oauthbearer":
            await client.auth_oauthbearer(self.user, secret)
        else:
            await client.apop(self.user, secret)

    async def _oauth_login(self, client: POP3Client, credential: OAuthCredential) -> None:
        """OAUTHBEARER where the server offers it (or where configured), else XOAUTH2; the
        session ends before the token is due for refresh (``client.valid_for``)."""
        source = credential.source
        token: AccessToken = await source.token()
        mechanism = credential.mechanism
        if mechanism == "auto":
            capabilities = await client.capa()
            mechanism = "oauthbearer" if "OAUTHBEARER" in capabilities.sasl else "xoauth2"
        try:
            if mechanism == "oauthbearer":
                await client.auth_oauthbearer(self.user, token.value)
            else:
                await client.auth_xoauth2(
                    self.user, token.value, two_step=self.upstream.xoauth2_two_step
                )
        except POP3AuthError:
            source.rejected(token)  # the next login asks for a new token
            raise
        client.valid_for = max(0.0, token.refresh_at - source.clock())


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes = field(repr=False)
    mailboxes: frozenset[str]
    scopes: frozenset[str]

    def grants(self, mailbox_id: str) -> bool:
        return "*" in self.mailboxes or mailbox_id in self.mailboxes

    def allows(self, mailbox_id: str, scope: str) -> bool:
        return self.grants(mailbox_id) and scope in self.scopes


class ApiKeys:
    """API keys kept as SHA-256 digests; a presented key is compared with every stored digest
    in constant time, so timing tells nothing about which keys exist."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


class RecentAccounts:
    """Passthrough accounts built for recent requests, found again by what the caller
    presented (an HTTP client sends the same credentials with every request).

    Entries are found by a keyed BLAKE2b digest of the presented value, never by the value
    itself (the key is random per process); each is kept at most ``ttl`` seconds, and at
    most ``size`` are kept. The accounts hold their secret as every account does (a
    session needs it to log in); nothing here holds another copy.
    """

    def __init__(
        self, size: int = 1024, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._key = os.urandom(32)
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._items: dict[bytes, tuple[float, Account]] = {}

    def _digest(self, presented: str) -> bytes:
        data = presented.encode("utf-8", "surrogateescape")
        return hashlib.blake2b(data, key=self._key, digest_size=32).digest()

    def get(self, presented: str) -> Account | None:
        key = self._digest(presented)
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._items[key]
            return None
        return item[1]

    def put(self, presented: str, account: Account) -> None:
        items = self._items
        items[self._digest(presented)] = (self._clock() + self._ttl, account)
        while len(items) > self._size:
            del items[next(iter(items))]  # the oldest first (dicts keep insertion order)

    def __len__(self) -> int:
        return len(self._items)


class Directory:
    """Resolves who a request is: configured mailboxes and passthrough routing."""

    def __init__(
        self,
        *,
        mailboxes: dict[str, Account],
        api_keys: ApiKeys,
        domain_upstreams: dict[str, Upstream],
        default_upstream: Upstream | None,
        presets: bool,
        passthrough: bool,
        timeouts: Timeouts,
        trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    ) -> None:
        self.mailboxes = mailboxes
        #: peers whose X-Forwarded-For names the client (load balancers, reverse proxies)
        self.trusted_proxies = trusted_proxies
        self.api_keys = api_keys
        self._domains = {d.lower(): u for d, u in domain_upstreams.items()}
        self._default = default_upstream
        self._presets = presets
        self.passthrough = passthrough
        self._timeouts = timeouts
        #: passthrough accounts of recent requests, by what they presented
        self.recent = RecentAccounts()

    def upstream_for_user(self, user: str) -> Upstream | None:
        domain = user.rpartition("@")[2].lower() if "@" in user else ""
        if domain:
            if domain in self._domains:
                return self._domains[domain]
            if self._presets:
                preset = preset_upstream(domain, self._timeouts)
                if preset is not None:
                    return preset
        return self._default

    def passthrough_account(
        self, user: str, password: str, *, method: AuthMethod = "pass"
    ) -> Account | None:
        """The caller's own mailbox: ``password`` is a password (USER/PASS), or with
        ``method="xoauth2"`` the caller's own OAuth access token."""
        upstream = self.upstream_for_user(user)
        if upstream is None:
            return None
        return Account(
            mailbox_id="me",
            upstream=upstream,
            user=user,
            credential=Credential(method, value=password),
            passthrough=True,
        )
