"""Configuration: environment variables (prefix ``POP3GW_``) over an optional file.

The file is named by ``POP3GW_CONFIG`` (TOML, JSON or YAML, chosen by its extension) and holds
what does not fit in environment variables: upstreams, configured mailboxes and API keys.
Environment variables win over the file; nested fields use ``__`` (``POP3GW_LOG__LEVEL``).

Secrets are never written in the file in clear when it can be avoided: a mailbox password or
token comes from an environment variable (``password_env``) or a file (``password_file``,
``token_file``: re-read when it changes, so a sidecar can refresh an OAuth token); API keys
are stored as SHA-256 digests. Everything secret is a ``SecretStr``: hidden in ``repr`` and in
``check-config`` output.

Invalid configuration stops the start with a message naming the field
(:func:`load_settings` raises :class:`ConfigError`).
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import json
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .hosts import is_loopback as is_loopback  # (re-exported: the settings' rule for hosts)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SCHEMES = {"pop3": "plain", "pop3s": "tls", "pop3+starttls": "starttls"}
_DEFAULT_PORTS = {"plain": 110, "tls": 995, "starttls": 110}

AuthMethod = Literal["pass", "plain", "login", "xoauth2", "oauthbearer", "apop", "oauth2"]
OAuthProvider = Literal["google", "microsoft", "generic"]
OAuthMechanism = Literal["auto", "xoauth2", "oauthbearer"]

#: token endpoints of the built-in providers (``{tenant}``: the Microsoft Entra tenant)
OAUTH_TOKEN_URLS = {
    "google": "https://oauth2.googleapis.com/token",
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
}
#: scopes asked for by default: (refresh-token flow, client-credentials flow)
OAUTH_SCOPES: dict[str, tuple[str | None, str | None]] = {
    # Google: the scope was granted with the refresh token; a refresh need not repeat it
    "google": (None, None),
    "microsoft": (
        "https://outlook.office.com/POP.AccessAsUser.All offline_access",
        "https://outlook.office365.com/.default",
    ),
    "generic": (None, None),
}
#: ``admin`` is for the gateway's own administration: the dead letters of the webhooks whose
#: mailboxes the key is granted
Scope = Literal["read", "delete", "admin"]
EventKind = Literal[
    "message.new", "message.removed", "mailbox.reset", "mailbox.error", "mailbox.recovered"
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


def _cased(value: object, case: Callable[[str], str]) -> object:
    """An enumeration's value in the case its choices are written in."""
    return case(value.strip()) if isinstance(value, str) else value


def normalise_fingerprint(value: str | None) -> str | None:
    """A certificate's SHA-256 as 64 lower-case hex digits. Colons and case do not matter,
    and the whole line ``openssl x509 -noout -fingerprint -sha256`` prints is accepted."""
    if value is None:
        return None
    digest = value.rpartition("=")[2].strip().replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("must be the 64 hex digits of the certificate's SHA-256 (colons allowed)")
    return digest


class UpstreamURL(BaseModel):
    """``pop3://host:port`` (plaintext), ``pop3s://`` (implicit TLS) or
    ``pop3+starttls://`` (STLS). No user, password, path or query."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    tls: Literal["plain", "tls", "starttls"]

    @classmethod
    def parse(cls, url: str) -> UpstreamURL:
        parts = urlsplit(url.strip())
        tls = _SCHEMES.get(parts.scheme.lower())
        if tls is None:
            raise ValueError("scheme must be pop3://, pop3s:// or pop3+starttls://")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in an upstream URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("an upstream URL has no path, query or fragment")
        host = parts.hostname
        if not host:
            raise ValueError("the upstream URL has no host")
        try:
            port = parts.port or _DEFAULT_PORTS[tls]
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return cls(host=unquote(host), port=port, tls=tls)

    def __str__(self) -> str:
        scheme = {v: k for k, v in _SCHEMES.items()}[self.tls]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


class TimeoutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect: float = Field(10.0, gt=0, le=300)
    tls: float = Field(10.0, gt=0, le=300)
    command: float = Field(30.0, gt=0, le=600)
    idle: float = Field(30.0, gt=0, le=600)


class UpstreamSettings(BaseModel):
    """A POP3 server the gateway may talk to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    url: str
    #: user domains (``example.com``) whose passthrough logins go to this upstream
    domains: list[str] = Field(default_factory=list)
    #: plaintext POP3 to a non-loopback host needs this explicit opt-in
    allow_plaintext: bool = False
    #: switch off for servers that advertise PIPELINING and lose commands
    pipelining: bool = True
    #: false: the pinned certificate (fingerprint_sha256) is the only check (a self-signed
    #: server); refused without a pin
    verify_tls: bool = True
    #: a PEM bundle of the CAs to trust for this server (instead of the system's)
    cafile: Path | None = None
    #: the SHA-256 of the server's certificate: checked on every connection, in addition to
    #: the chain (or alone, with verify_tls = false)
    fingerprint_sha256: str | None = None
    #: the name the certificate must be valid for (default: the URL's host)
    tls_server_name: str | None = None
    #: end sessions without QUIT after reading (providers where RETR + QUIT marks mail read)
    read_only_sessions: bool = False
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        UpstreamURL.parse(value)
        return value

    @field_validator("fingerprint_sha256")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        return normalise_fingerprint(value)

    @property
    def parsed(self) -> UpstreamURL:
        return UpstreamURL.parse(self.url)


class OAuthSettings(BaseModel):
    """OAuth2 for a configured mailbox (``auth = "oauth2"``): the gateway obtains and
    refreshes access tokens itself. Secrets come from environment variables or files only."""

    model_config = ConfigDict(extra="forbid")

    provider: OAuthProvider
    #: the token endpoint: required for generic; for google and microsoft it replaces the
    #: provider's own (a national cloud, a proxy). https://, or http:// to a loopback host
    token_url: str | None = None
    #: microsoft: the Entra tenant (id or domain); "common" for the refresh-token flow
    tenant: str | None = None
    client_id: str = Field(min_length=1, max_length=512)
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = None
    #: app-only access without a refresh token (microsoft, generic): the client
    #: credentials flow, with the client secret
    client_credentials: bool = False
    #: the scope asked for (default: the provider's, see the README)
    scope: str | None = None
    #: a writable file where a rotated refresh token is kept across restarts (with Redis it
    #: is also kept there, sealed)
    refresh_token_store: Path | None = None
    #: SASL mechanism: auto = OAUTHBEARER where the server offers it, else XOAUTH2
    mechanism: OAuthMechanism = "auto"
    #: a PEM bundle of the CAs to trust for the token endpoint (a private one)
    cafile: Path | None = None
    #: a token is refreshed, and sessions logged in with it end, this many seconds before
    #: it expires (at the latest half-way through its lifetime)
    refresh_margin: float = Field(300.0, ge=0, le=3600)
    #: seconds one request to the token endpoint may take
    timeout: float = Field(10.0, gt=0, le=120)

    _provider = field_validator("provider", "mechanism", mode="before")(
        lambda v: _cased(v, str.lower)
    )

    @field_validator("client_id", "tenant", "scope")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and (not value.isprintable() or not value.strip()):
            raise ValueError("must be printable text")
        return value

    def resolved_token_url(self) -> str:
        if self.token_url:
            return self.token_url
        template = OAUTH_TOKEN_URLS[self.provider]
        return template.format(tenant=self.tenant or "common")

    def resolved_scope(self) -> str | None:
        if self.scope is not None:
            return self.scope
        refresh, app_only = OAUTH_SCOPES[self.provider]
        return app_only if self.client_credentials else refresh


class MailboxSettings(BaseModel):
    """A mailbox the operator configures for services (reached with an API key)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    #: an upstream name from ``upstreams``, or an upstream URL
    upstream: str
    user: str = Field(min_length=1, max_length=255)
    auth: AuthMethod = "pass"
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    #: poll the mailbox for new mail and record events (its change feed, stream, webhooks)
    watch: bool = False
    #: seconds between two polls of a watched mailbox
    watch_interval: float = Field(60.0, ge=1, le=86400)
    #: the first poll reports the messages already there as ``message.new`` (otherwise it
    #: only records them: a baseline)
    watch_report_existing: bool = False
    #: with auth = "oauth2": the OAuth client and grant
    oauth: OAuthSettings | None = None
    #: what the gateway itself may do to this mailbox beyond reading: ``delete`` is needed
    #: for ``watch_consume``
    grants: list[Literal["delete"]] = Field(default_factory=list)
    #: consume mode: a new message is deleted from the server once every webhook subscribed
    #: to this mailbox's message.new answered 2xx for it (needs grants = ["delete"])
    watch_consume: bool = False

    _auth = field_validator("auth", mode="before")(lambda v: _cased(v, str.lower))

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if any(c in value for c in "\r\n\0"):
            raise ValueError("must not contain CR, LF or NUL")
        return value

    def secret_sources(self) -> list[str]:
        return [
            name
            for name in ("password", "password_env", "password_file", "token_env", "token_file")
            if getattr(self, name) is not None
        ]


class ApiKeySettings(BaseModel):
    """An API key, stored as the hex SHA-256 of the key (never the key itself)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    sha256: SecretStr
    #: configured mailbox ids this key may use; ``"*"`` for all
    mailboxes: list[str] = Field(min_length=1)
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read"]), min_length=1)

    _scopes = field_validator("scopes", mode="before")(
        lambda v: [_cased(x, str.lower) for x in v] if isinstance(v, list) else v
    )

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: SecretStr) -> SecretStr:
        digest = value.get_secret_value().strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("must be the 64 hex digits of the key's SHA-256")
        return SecretStr(digest)


class PoolSettings(BaseModel):
    """POP3 session pool limits (be polite to servers: Dovecot allows 10 connections per
    user and IP by default, Courier 4 per IP)."""

    model_config = ConfigDict(extra="forbid")

    #: sessions per mailbox (RFC 1939 maildrop lock: 1)
    max_per_mailbox: int = Field(1, ge=1, le=16)
    max_per_upstream: int = Field(8, ge=1, le=1000)
    max_total: int = Field(64, ge=1, le=10_000)
    #: seconds a request waits for a session before 503 pool-exhausted
    acquire_timeout: float = Field(10.0, gt=0, le=300)
    #: a session (and what it shows) is reused this long after its login; new mail appears
    #: only in a new session
    snapshot_max_age: float = Field(5.0, ge=0, le=600)
    #: idle sessions are QUIT after this long (well before the 10-minute autologout)
    idle_timeout: float = Field(120.0, gt=0, le=540)
    #: a session given back stays its mailbox's this long, even while other mailboxes wait
    #: at the caps: a client that lists and then reads a message logs in once, not twice
    reuse_grace: float = Field(0.25, ge=0, le=5)
    #: seconds spent retrying [IN-USE] / [LOGIN-DELAY] logins before answering 423/429
    retry_budget: float = Field(8.0, ge=0, le=120)
    #: after this many failed logins to one mailbox within failed_login_window seconds, the
    #: gateway answers 429 instead of trying again (providers block addresses that keep
    #: failing)
    max_failed_logins: int = Field(5, ge=1, le=1000)
    failed_login_window: float = Field(300.0, gt=0, le=86400)
    #: with Redis, after a [LOGIN-DELAY] no replica logs in to that mailbox for this long
    login_delay_seconds: float = Field(60.0, ge=1, le=3600)
    #: ?fresh=true logs in again at most once per this many seconds per mailbox; within it
    #: the newest snapshot is served (its snapshot_at says how recent it is)
    min_fresh_interval: float = Field(2.0, ge=0, le=600)
    #: failed logins from one client address (IPv6: its /64), a token bucket: this many at
    #: once, refilled at client_failed_logins_per_minute. Logins with a credential that
    #: last succeeded never count, so a spray of user names stops here
    client_failed_login_burst: int = Field(10, ge=1, le=1_000_000)
    client_failed_logins_per_minute: float = Field(6.0, gt=0, le=1_000_000)
    #: failed logins to one upstream (host:port) from this process, whoever the client is:
    #: before the provider blocks the gateway's address
    upstream_failed_login_burst: int = Field(30, ge=1, le=1_000_000)
    upstream_failed_logins_per_minute: float = Field(30.0, gt=0, le=1_000_000)


class HTTPSettings(BaseModel):
    """The HTTP edge: what a client may hold on to (slowloris, idle keep-alives, connection
    floods) before the gateway lets go. See gateway/edge.py."""

    model_config = ConfigDict(extra="forbid")

    #: seconds from the first byte of a request to the end of its headers (slowloris)
    header_timeout: float = Field(10.0, gt=0, le=300)
    #: seconds from the end of the headers to the end of the body
    body_timeout: float = Field(30.0, gt=0, le=3600)
    #: seconds an idle keep-alive connection stays open between requests; above the idle
    #: timeouts of common load balancers (60 s), so that they, not we, close first
    keepalive_timeout: float = Field(75.0, gt=0, le=3600)
    #: concurrent HTTP connections; unset: min(1024, the file-descriptor limit less what
    #: POP3 sessions, Redis and files need). Beyond it the listener pauses (idle keep-alive
    #: connections are closed first) and resumes as connections close
    max_connections: int | None = Field(None, ge=1, le=1_000_000)
    #: largest request body (413 request-too-large beyond)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: proxies (CIDR list) whose X-Forwarded-For names the client; from anyone else the
    #: header is ignored and the peer address is the client
    trusted_proxies: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address or CIDR network") from None
        return value

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in self.trusted_proxies)


class StreamSettings(BaseModel):
    """What a client that reads a message slowly, or not at all, may hold (``/raw`` and
    attachments)."""

    model_config = ConfigDict(extra="forbid")

    #: seconds a client may accept no bytes of a message before the transfer is aborted
    send_timeout: float = Field(30.0, gt=0, le=3600)
    #: bytes of messages spooled at once (memory up to 1 MiB a message, then files in
    #: TMPDIR), so that a /raw reader's POP3 session is released at upstream speed; a message
    #: that does not fit is streamed from its session instead, bounded by send_timeout.
    #: 32 MiB stays below the 64 MiB /tmp emptyDir of the Kubernetes base. 0: no spooling
    spool_max_bytes: int = Field(32 * 1024 * 1024, ge=0, le=1024**4)
    #: where spool files go (unnamed, mode 0600); unset: the system's temporary directory
    spool_dir: Path | None = None


class ParseSettings(BaseModel):
    """How whole messages are parsed for ``GET`` of a message and of an attachment: in
    worker processes, so that no message can stall the event loop (every other request)."""

    model_config = ConfigDict(extra="forbid")

    #: worker processes that parse (started on first use); 0 parses in the event loop (a
    #: hostile message then stalls every request while it is parsed: tests and demos only)
    workers: int = Field(2, ge=0, le=64)
    #: seconds one parse may take; then its worker is killed and the answer is
    #: ``422 message-too-complex`` (the message is still there for /raw)
    timeout: float = Field(10.0, gt=0, le=600)
    #: seconds a request waits for a free worker before ``503 parser-busy``
    queue_timeout: float = Field(10.0, gt=0, le=600)
    #: address-space limit of each worker in bytes (0: none); a parse beyond it ends that
    #: worker, never the gateway
    memory_limit_bytes: int = Field(1024**3, ge=0)
    #: parsed messages kept in memory (counted at their size on the wire), so that opening
    #: a message again costs no RETR and no parse; 0 keeps none
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0, le=64 * 1024**3)
    #: seconds a parsed message is kept
    cache_ttl_seconds: float = Field(300.0, ge=0, le=7 * 24 * 3600)


class EventSettings(BaseModel):
    """New-mail events of watched mailboxes: how long they are kept, how much one poll or
    one client may take."""

    model_config = ConfigDict(extra="forbid")

    #: events older than this are dropped from a mailbox's log (7 days)
    retention_seconds: float = Field(7 * 24 * 3600.0, ge=60, le=365 * 24 * 3600)
    #: and at most this many are kept per mailbox, the oldest out first
    max_per_mailbox: int = Field(100_000, ge=100, le=10_000_000)
    #: new or removed messages one poll reports at most (the rest: the next poll, soon after)
    max_changes_per_poll: int = Field(500, ge=1, le=100_000)
    #: consecutive failed polls (server unreachable, timing out...) before mailbox.error; a
    #: rejected login reports at once
    error_after_failures: int = Field(3, ge=1, le=1000)
    #: mailboxes polled at once by one process
    max_concurrent_polls: int = Field(8, ge=1, le=1000)
    #: longest ``wait`` of the pull feed (seconds)
    max_wait: float = Field(60.0, ge=0, le=600)
    #: clients waiting on the pull feed or reading a stream at once (per process)
    max_waiters: int = Field(1000, ge=1, le=100_000)
    #: of them, on one mailbox at most (default: a tenth of ``max_waiters``): the readers of
    #: one mailbox never take every place
    max_waiters_per_mailbox: int | None = Field(None, ge=1, le=100_000)
    #: seconds between two heartbeats (comment lines) of an event stream without events
    stream_heartbeat: float = Field(15.0, ge=0.1, le=300)
    #: an event stream ends after this long (the client reconnects with Last-Event-ID)
    stream_max_seconds: float = Field(3600.0, ge=1, le=86400)


class WebhookSettings(BaseModel):
    """An endpoint that receives the events of watched mailboxes, signed per the Standard
    Webhooks spec. Secrets (``whsec_`` + base64, as the spec's libraries make them) come
    from ``secrets_env`` (names of environment variables) or ``secrets_file`` (one per
    line), or ``secrets``: every one is used to sign (rotation: add the new one, let
    receivers switch, remove the old one)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    url: str = Field(max_length=2048)
    secrets: list[SecretStr] = Field(default_factory=list, max_length=8)
    secrets_env: list[str] = Field(default_factory=list, max_length=8)
    secrets_file: Path | None = None
    #: watched mailbox ids whose events go here; ``"*"`` for all
    mailboxes: list[str] = Field(min_length=1)
    #: the kinds sent (default: all)
    kinds: list[EventKind] = Field(
        default_factory=lambda: list[EventKind](
            [
                "message.new",
                "message.removed",
                "mailbox.reset",
                "mailbox.error",
                "mailbox.recovered",
            ]
        ),
        min_length=1,
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (sign with secrets instead)")
        if any(c in value for c in "\r\n\0 "):
            raise ValueError("must not contain spaces, CR, LF or NUL")
        return value


class WebhookDeliverySettings(BaseModel):
    """How webhooks are sent: retries, bounds, and where they may go."""

    model_config = ConfigDict(extra="forbid")

    #: seconds one attempt may take (connect, send, response head)
    timeout: float = Field(10.0, gt=0, le=120)
    #: a delivery is retried this long after its first attempt (72 h), then dead-lettered
    retry_for_seconds: float = Field(72 * 3600.0, ge=60, le=30 * 24 * 3600)
    #: longest pause between two attempts (backoff doubles from 5 s up to it)
    max_backoff_seconds: float = Field(3600.0, ge=1, le=24 * 3600)
    #: attempts in flight at once, per process (one per mailbox per endpoint at most)
    max_in_flight: int = Field(32, ge=1, le=10_000)
    #: bytes of a receiver's answer read at most (the rest is dropped with the connection)
    max_response_bytes: int = Field(64 * 1024, ge=0, le=16 * 1024 * 1024)
    #: dead letters kept per endpoint, the oldest out first
    dead_letter_max: int = Field(10_000, ge=10, le=1_000_000)
    #: networks (CIDR) a webhook may reach although they are not public: by default
    #: loopback, private, link-local (cloud metadata), shared and reserved addresses are
    #: refused, checked on the address actually connected to
    allow_networks: list[str] = Field(default_factory=list, max_length=1000)
    #: networks refused even though public (checked first)
    deny_networks: list[str] = Field(default_factory=list, max_length=1000)
    #: a CA bundle (PEM) to trust for https receivers instead of the system's
    cafile: Path | None = None

    @field_validator("allow_networks", "deny_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address or CIDR network") from None
        return value


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"

    # Enumerations are read in any case (LOG__LEVEL=debug, LOG__FORMAT=TEXT).
    _level = field_validator("level", mode="before")(lambda v: _cased(v, str.upper))
    _format = field_validator("format", mode="before")(lambda v: _cased(v, str.lower))


class Settings(BaseSettings):
    """Everything pop3gw reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="POP3GW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    listen: str = "127.0.0.1:8080"
    #: where passthrough users (HTTP Basic on ``/v1/mailboxes/me``) log in when no
    #: configured upstream or preset matches their domain
    default_upstream: str | None = None
    #: allow plaintext POP3 to a non-loopback default upstream
    default_upstream_allow_plaintext: bool = False
    #: TLS of the default upstream, as for a configured upstream: a PEM bundle of the CAs
    #: to trust (a private CA), a certificate pin, whether the chain is verified too (false
    #: only with a pin), the name the certificate must be valid for
    default_upstream_cafile: Path | None = None
    default_upstream_fingerprint_sha256: str | None = None
    default_upstream_verify_tls: bool = True
    default_upstream_tls_server_name: str | None = None
    #: built-in provider presets by the user's domain (126.com, gmail.com, ...)
    presets: bool = True
    #: HTTP Basic passthrough on /v1/mailboxes/me
    passthrough: bool = True
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    mailboxes: list[MailboxSettings] = Field(default_factory=list)
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    redis_url: SecretStr | None = None
    #: HMAC key for cache keys (required with Redis so replicas agree; else random per start)
    cache_secret: SecretStr | None = None
    #: without Redis, the header summaries held in this process (the in-process header
    #: cache) are at most this many...
    cache_max_entries: int = Field(50_000, ge=0, le=10_000_000)
    #: ...and weigh at most this many bytes together (an estimate per summary)
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0, le=64 * 1024 * 1024 * 1024)
    #: seconds a header summary is kept (in Redis, or held in this process without it)
    cache_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    #: messages larger than this are not parsed to JSON (use /raw)
    max_parse_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    parse: ParseSettings = Field(default_factory=ParseSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    webhooks: list[WebhookSettings] = Field(default_factory=list, max_length=100)
    webhook_delivery: WebhookDeliverySettings = Field(default_factory=WebhookDeliverySettings)
    #: seconds in-flight requests get to finish on SIGTERM
    shutdown_grace_seconds: float = Field(25.0, ge=0, le=600)
    #: seconds /readyz answers 503 before the listener closes on SIGTERM, so that load
    #: balancers stop sending new requests first
    shutdown_delay_seconds: float = Field(3.0, ge=0, le=120)
    #: when set, /metrics requires "Authorization: Bearer <token>"
    metrics_token: SecretStr | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port")
        return value

    @field_validator("default_upstream")
    @classmethod
    def _default_upstream(cls, value: str | None) -> str | None:
        if value:
            UpstreamURL.parse(value)
        return value or None

    @field_validator("default_upstream_fingerprint_sha256")
    @classmethod
    def _default_fingerprint(cls, value: str | None) -> str | None:
        return normalise_fingerprint(value)

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"  # noqa: S104 - explicit

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments, then the environment, then the file named by POP3GW_CONFIG.
        return (init_settings, env_settings, _FileSource(settings_cls))


class _FileSource(PydanticBaseSettingsSource):
    """The file named by ``POP3GW_CONFIG`` (TOML, JSON or YAML)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything comes from __call__

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("POP3GW_CONFIG")
        if not path:
            return {}
        return read_config_file(Path(path))


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"POP3GW_CONFIG: cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text.decode("utf-8"))
        elif path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"POP3GW_CONFIG: {path} must end in .toml, .json, .yaml or .yml")
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"POP3GW_CONFIG: {path} is not valid: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"POP3GW_CONFIG: {path} must hold a mapping at the top")
    return data


def load_settings(**overrides: Any) -> Settings:
    """Read and cross-check the configuration; :class:`ConfigError` names what is wrong."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise _describe(exc) from None
    _cross_check(settings)
    return settings


def _describe(exc: ValidationError) -> ConfigError:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top)"
        message = error["msg"]
        env = env_name(where)
        if error["type"] == "extra_forbidden" and env:
            close = difflib.get_close_matches(env, known_variables(), n=1, cutoff=0.75)
            message = "not a setting" + (f"; did you mean {close[0]}?" if close else "")
        lines.append(f"{where}: {message}")
    return _invalid(lines)


def env_name(where: str) -> str | None:
    """The environment variable of a setting named by its path (``log.level`` ->
    ``POP3GW_LOG__LEVEL``); None inside a list (set in the file, or as JSON)."""
    parts = where.split(".")
    if parts[0] not in Settings.model_fields or any(p.isdigit() for p in parts):
        return None
    return "POP3GW_" + "__".join(parts).upper()


def _invalid(problems: list[str]) -> ConfigError:
    """One error for every problem, each naming its setting and, where there is one, the
    environment variable that sets it."""
    lines = []
    for problem in problems:
        where, sep, what = problem.partition(": ")
        env = env_name(where) if sep else None
        lines.append(f"{where} ({env}): {what}" if env else problem)
    return ConfigError("invalid configuration:\n  " + "\n  ".join(sorted(lines)))


def known_variables() -> frozenset[str]:
    """Every ``POP3GW_*`` environment variable the gateway reads."""
    names = {"POP3GW_CONFIG"}
    for name, field in Settings.model_fields.items():
        names.add(f"POP3GW_{name.upper()}")
        if _is_model(field) and isinstance(field.annotation, type):
            names.update(
                f"POP3GW_{name.upper()}__{sub.upper()}" for sub in field.annotation.model_fields
            )
    return frozenset(names)


def _is_model(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``POP3GW_*`` variable that sets nothing (a misspelt name is
    otherwise ignored in silence), with the nearest known name."""
    known = known_variables()
    nested = {f"POP3GW_{n.upper()}__" for n, f in Settings.model_fields.items() if _is_model(f)}
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("POP3GW_") or upper in known:
            continue
        if upper.startswith(tuple(nested)):
            continue  # inside a known group: refused at load, with the name meant
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a pop3gw setting and is ignored{hint}")
    return warnings


def _unreadable(path: Path) -> str | None:
    """Why a file cannot be read, or None. It is opened, not looked at: permissions,
    directories and dangling links are all found."""
    if not path.is_file():
        return f"{path} is not a readable file (missing, or not a file)"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _secret_has_line_breaks(box: MailboxSettings, source: str) -> bool:
    value: str | None = None
    if source == "password" and box.password is not None:
        value = box.password.get_secret_value()
    elif source in ("password_env", "token_env"):
        value = os.environ.get(getattr(box, source) or "")
    elif source in ("password_file", "token_file"):
        try:
            value = Path(getattr(box, source)).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return False  # reported as unreadable, or checked again when it is read
    return value is not None and any(c in value for c in "\r\n\0")


def _tls_options(cafile: Path | None, fingerprint: str | None, verify: bool) -> list[str]:
    return [
        name
        for name, set_ in (("cafile", cafile), ("fingerprint_sha256", fingerprint))
        if set_ is not None
    ] + ([] if verify else ["verify_tls"])


def _cafile_problems(field: str, path: Path | None) -> list[str]:
    """A CA bundle that cannot be used stops the start, rather than every connection."""
    if path is None:
        return []
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:  # before OSError, its base
        return [f"{field}: {path} holds no PEM certificate"]
    except OSError as exc:
        return [f"{field}: cannot read {path}: {exc.strerror or exc}"]
    return []


def _default_upstream_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    tls_set = _tls_options(
        settings.default_upstream_cafile,
        settings.default_upstream_fingerprint_sha256,
        settings.default_upstream_verify_tls,
    )
    if settings.default_upstream_tls_server_name is not None:
        tls_set.append("tls_server_name")
    if not settings.default_upstream:
        problems.extend(
            f"default_upstream_{name}: set without default_upstream" for name in tls_set
        )
        return problems
    url = UpstreamURL.parse(settings.default_upstream)
    if url.tls == "plain":
        if not settings.default_upstream_allow_plaintext and not is_loopback(url.host):
            problems.append(
                f"default_upstream: plaintext POP3 to {url.host} needs "
                "default_upstream_allow_plaintext = true"
            )
        problems.extend(
            f"default_upstream_{name}: {settings.default_upstream} is plaintext (pop3://); "
            "use pop3s:// or pop3+starttls://"
            for name in tls_set
        )
        return problems
    if (
        not settings.default_upstream_verify_tls
        and not settings.default_upstream_fingerprint_sha256
    ):
        problems.append(
            "default_upstream_verify_tls: false needs default_upstream_fingerprint_sha256 "
            "(nothing would be checked)"
        )
    problems.extend(_cafile_problems("default_upstream_cafile", settings.default_upstream_cafile))
    return problems


def _http_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL"
    if parts.username or parts.password:
        return "credentials do not belong in the URL (use client_secret_env or _file)"
    if parts.scheme == "http" and not is_loopback(host):
        return "must be https:// (plain http:// only to a loopback host)"
    return None


def _secret_source_problems(where: str, env: str | None, path: Path | None) -> list[str]:
    problems = []
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            problems.append(f"{where}_env: {env} is not set")
        elif not value.strip() or any(c in value.strip() for c in "\r\n\0"):
            problems.append(f"{where}_env: {env} is empty or contains CR, LF or NUL")
    if path is not None:
        unreadable = _unreadable(path)
        if unreadable:
            problems.append(f"{where}_file: {unreadable}")
    return problems


def _store_problem(path: Path) -> str | None:
    """A refresh token store must be writable (its directory too: it is replaced whole)."""
    directory = path.parent
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the directory {directory} is not writable (rotated tokens are written there)"
    if path.exists() and (not path.is_file() or not os.access(path, os.R_OK | os.W_OK)):
        return f"{path} is not a readable and writable file"
    return None


def _oauth_problems(i: int, box: MailboxSettings, sources: list[str]) -> list[str]:
    """What stops an OAuth2 mailbox from getting tokens, each naming its setting."""
    where = f"mailboxes.{i}"
    if box.auth != "oauth2":
        return [f"{where}.oauth: set only with auth = 'oauth2'"]
    oauth = box.oauth
    if oauth is None:
        return [f"{where}.oauth: required with auth = 'oauth2' (provider, client_id, ...)"]
    problems = []
    if sources:
        problems.append(
            f"{where}: auth 'oauth2' takes its secrets from oauth (not {', '.join(sources)})"
        )
    at = f"{where}.oauth"
    if oauth.provider == "generic" and not oauth.token_url:
        problems.append(f"{at}.token_url: required with provider 'generic'")
    if oauth.token_url:
        problem = _http_url_problem(oauth.token_url)
        if problem:
            problems.append(f"{at}.token_url: {problem}")
    secrets = [n for n in ("client_secret_env", "client_secret_file") if getattr(oauth, n)]
    refresh = [n for n in ("refresh_token_env", "refresh_token_file") if getattr(oauth, n)]
    if len(secrets) > 1:
        problems.append(f"{at}: at most one of client_secret_env, client_secret_file")
    if oauth.client_credentials:
        if oauth.provider == "google":
            problems.append(
                f"{at}.client_credentials: Google has no app-only access to Gmail over POP3; "
                "use a refresh token"
            )
        if refresh:
            problems.append(f"{at}: client_credentials takes no refresh token")
        if not secrets:
            problems.append(f"{at}: client_credentials needs client_secret_env or _file")
        if oauth.provider == "microsoft" and oauth.tenant in (None, "common", "organizations"):
            problems.append(
                f"{at}.tenant: client_credentials needs your tenant's id or domain (not 'common')"
            )
        if oauth.refresh_token_store is not None:
            problems.append(f"{at}.refresh_token_store: no refresh token with client_credentials")
    elif len(refresh) != 1:
        problems.append(
            f"{at}: needs exactly one of refresh_token_env, refresh_token_file "
            "(or client_credentials = true)"
        )
    if oauth.tenant is not None and oauth.provider != "microsoft":
        problems.append(f"{at}.tenant: only for provider 'microsoft'")
    problems.extend(
        _secret_source_problems(
            f"{at}.client_secret", oauth.client_secret_env, oauth.client_secret_file
        )
    )
    problems.extend(
        _secret_source_problems(
            f"{at}.refresh_token", oauth.refresh_token_env, oauth.refresh_token_file
        )
    )
    if oauth.refresh_token_store is not None:
        if oauth.refresh_token_store == oauth.refresh_token_file:
            problems.append(
                f"{at}.refresh_token_store: name another file than refresh_token_file "
                "(the store holds the gateway's own record)"
            )
        else:
            problem = _store_problem(oauth.refresh_token_store)
            if problem:
                problems.append(f"{at}.refresh_token_store: {problem}")
    problems.extend(_cafile_problems(f"{at}.cafile", oauth.cafile))
    return problems


def _cross_check(settings: Settings) -> None:
    problems: list[str] = []
    names = [u.name for u in settings.upstreams]
    for dup in {n for n in names if names.count(n) > 1}:
        problems.append(f"upstreams: name {dup!r} is used twice")
    by_name = {u.name: u for u in settings.upstreams}
    for i, up in enumerate(settings.upstreams):
        url = up.parsed
        if url.tls == "plain" and not up.allow_plaintext and not is_loopback(url.host):
            problems.append(
                f"upstreams.{i}.url: plaintext POP3 to {url.host} needs allow_plaintext = true"
            )
        if not up.verify_tls and not up.fingerprint_sha256:
            problems.append(f"upstreams.{i}.verify_tls: false needs fingerprint_sha256")
        if url.tls == "plain" and _tls_options(up.cafile, up.fingerprint_sha256, up.verify_tls):
            problems.append(f"upstreams.{i}: TLS settings for a plaintext pop3:// URL")
        problems.extend(_cafile_problems(f"upstreams.{i}.cafile", up.cafile))
    problems.extend(_default_upstream_problems(settings))
    ids = [m.id for m in settings.mailboxes]
    for dup in {n for n in ids if ids.count(n) > 1}:
        problems.append(f"mailboxes: id {dup!r} is used twice")
    for i, box in enumerate(settings.mailboxes):
        if box.id == "me":
            problems.append(f"mailboxes.{i}.id: 'me' is reserved for passthrough")
        if box.upstream not in by_name:
            try:
                url = UpstreamURL.parse(box.upstream)
            except ValueError as exc:
                problems.append(f"mailboxes.{i}.upstream: not an upstream name or URL ({exc})")
            else:
                if url.tls == "plain" and not is_loopback(url.host):
                    problems.append(
                        f"mailboxes.{i}.upstream: plaintext to {url.host}: declare it in "
                        "upstreams with allow_plaintext = true"
                    )
        sources = box.secret_sources()
        if box.auth == "oauth2" or box.oauth is not None:
            problems.extend(_oauth_problems(i, box, sources))
            continue
        token_auth = box.auth in ("xoauth2", "oauthbearer")
        wanted = (
            ("token_env", "token_file")
            if token_auth
            else (
                "password",
                "password_env",
                "password_file",
            )
        )
        if len(sources) != 1 or sources[0] not in wanted:
            problems.append(
                f"mailboxes.{i}: auth {box.auth!r} needs exactly one of {', '.join(wanted)}"
            )
        elif sources[0] == "password_env" and box.password_env not in os.environ:
            problems.append(f"mailboxes.{i}.password_env: {box.password_env} is not set")
        elif sources[0] == "token_env" and box.token_env not in os.environ:
            problems.append(f"mailboxes.{i}.token_env: {box.token_env} is not set")
        elif sources[0] in ("password_file", "token_file"):
            path = getattr(box, sources[0])
            unreadable = _unreadable(Path(path))
            if unreadable:
                problems.append(f"mailboxes.{i}.{sources[0]}: {unreadable}")
        if len(sources) == 1 and _secret_has_line_breaks(box, sources[0]):
            # Never sent, but better refused here than answered to API callers as their
            # own invalid request. The message says where, never what.
            problems.append(f"mailboxes.{i}.{sources[0]}: contains CR, LF or NUL")
    known = set(ids)
    key_names = [k.name for k in settings.api_keys]
    for dup in {n for n in key_names if key_names.count(n) > 1}:
        problems.append(f"api_keys: name {dup!r} is used twice")
    for i, key in enumerate(settings.api_keys):
        for box_id in key.mailboxes:
            if box_id != "*" and box_id not in known:
                problems.append(f"api_keys.{i}.mailboxes: unknown mailbox {box_id!r}")
    if settings.redis_url is not None and settings.cache_secret is None:
        problems.append(
            "cache_secret: required with POP3GW_REDIS_URL, so that every replica derives the "
            "same cache keys; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    problems.extend(_webhook_problems(settings))
    if settings.stream.spool_dir is not None and not settings.stream.spool_dir.is_dir():
        problems.append(f"stream.spool_dir: {settings.stream.spool_dir} is not a directory")
    if problems:
        raise _invalid(problems)


def webhook_secrets(hook: WebhookSettings) -> list[str]:
    """The endpoint's secrets, read now (the environment, the file), in their order."""
    found = [s.get_secret_value().strip() for s in hook.secrets]
    found += [os.environ.get(name, "").strip() for name in hook.secrets_env]
    if hook.secrets_file is not None:
        text = hook.secrets_file.read_text("utf-8")
        found += [line.strip() for line in text.splitlines() if line.strip()]
    return found


def _secret_problem(secret: str) -> str | None:
    raw = secret.removeprefix("whsec_")
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", raw):
        return "is not whsec_ followed by base64"
    decoded = base64.b64decode(raw + "==")
    if not 24 <= len(decoded) <= 64:
        return "must decode to 24 to 64 bytes"
    return None


def _webhook_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    names = [h.name for h in settings.webhooks]
    for dup in {n for n in names if names.count(n) > 1}:
        problems.append(f"webhooks: name {dup!r} is used twice")
    watched = {m.id for m in settings.mailboxes if m.watch}
    for i, box in enumerate(settings.mailboxes):
        if not box.watch_consume:
            continue
        if not box.watch:
            problems.append(f"mailboxes.{i}.watch_consume: needs watch = true")
        if "delete" not in box.grants:
            problems.append(f'mailboxes.{i}.watch_consume: deletes mail; needs grants = ["delete"]')
        if not any(
            h.name
            for h in settings.webhooks
            if ("*" in h.mailboxes or box.id in h.mailboxes) and "message.new" in h.kinds
        ):
            problems.append(
                f"mailboxes.{i}.watch_consume: no webhook takes this mailbox's message.new"
            )
    for i, hook in enumerate(settings.webhooks):
        for box_id in hook.mailboxes:
            if box_id != "*" and box_id not in watched:
                problems.append(f"webhooks.{i}.mailboxes: {box_id!r} is not a watched mailbox")
        for name in hook.secrets_env:
            if name not in os.environ:
                problems.append(f"webhooks.{i}.secrets_env: {name} is not set")
        if hook.secrets_file is not None:
            unreadable = _unreadable(hook.secrets_file)
            if unreadable:
                problems.append(f"webhooks.{i}.secrets_file: {unreadable}")
                continue
        secrets = webhook_secrets(hook)
        if not secrets:
            problems.append(f"webhooks.{i}: needs a secret (secrets, secrets_env, secrets_file)")
        for n, secret in enumerate(secrets):
            wrong = _secret_problem(secret)
            if wrong:  # which one, never what it is
                problems.append(f"webhooks.{i}: secret {n + 1} {wrong}")
    problems.extend(_cafile_problems("webhook_delivery.cafile", settings.webhook_delivery.cafile))
    return problems
