"""A local OAuth2 authorization server for tests (aiohttp, on loopback only).

It serves what a provider serves the gateway and its mail server:

- ``POST /token`` (RFC 6749): the ``refresh_token`` grant and the ``client_credentials``
  grant, with client authentication by ``client_id`` + ``client_secret`` in the form.
  It issues random access tokens, rotates refresh tokens when ``rotate`` is set (the old
  one is then revoked: using it again answers ``invalid_grant``), and can be made to fail:
  ``down`` (HTTP 503), ``delay`` (seconds before answering), ``answer`` (a fixed answer).
- ``POST /introspect`` (RFC 7662), which Dovecot's ``oauth2`` passdb asks at every login:
  ``{"active": true, "username": <user>}`` for a token it issued and did not expire or
  revoke, else ``{"active": false}``.

Every request is recorded (``token_requests``, ``introspected``), so tests can count
refreshes and see which token each login used.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Issued:
    user: str
    active: bool = True


@dataclass
class TokenRequest:
    grant_type: str
    refresh_token: str | None
    client_id: str | None
    scope: str | None
    answered: int = 0  #: the HTTP status sent


@dataclass
class AuthServer:
    """The authorization server; ``await start(port)``, ``await stop()``."""

    client_id: str = "pop3gw-test-client"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_urlsafe(16))
    #: seconds in expires_in
    lifetime: int = 3600
    #: replace the refresh token at every refresh (and revoke the old one)
    rotate: bool = False
    #: answer 503 to every token request
    down: bool = False
    #: seconds to wait before answering a token request
    delay: float = 0.0
    #: a fixed (status, JSON body) for token requests
    answer: tuple[int, Any] | None = None
    #: the user that client-credentials (app-only) tokens act for
    app_user: str | None = None
    #: access tokens to issue next, in order (then random ones)
    next_tokens: list[str] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    access_tokens: dict[str, Issued] = field(default_factory=dict)
    token_requests: list[TokenRequest] = field(default_factory=list)
    introspected: list[str] = field(default_factory=list)
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None

    # -- the test's side ----------------------------------------------------------------
    def grant(self, user: str) -> str:
        """A refresh token for ``user``, as a consent screen would give one."""
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = user
        return token

    def revoke(self, refresh_token: str) -> None:
        self.refresh_tokens.pop(refresh_token, None)

    def expire(self, access_token: str) -> None:
        """The token no longer passes introspection (expired at the provider)."""
        self.access_tokens[access_token].active = False

    @property
    def issued(self) -> list[str]:
        return list(self.access_tokens)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = "localhost" if self.ssl_context else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def introspection_url(self) -> str:
        return self.url + "/introspect"

    @property
    def refreshes(self) -> int:
        """Token requests answered 200."""
        return sum(1 for r in self.token_requests if r.answered == 200)

    async def start(self, port: int = 0) -> AuthServer:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/introspect", self._introspect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AuthServer:
        return await self.start(self.port)

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the endpoints ------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        record = TokenRequest(
            grant_type=str(form.get("grant_type", "")),
            refresh_token=_str(form.get("refresh_token")),
            client_id=_str(form.get("client_id")),
            scope=_str(form.get("scope")),
        )
        self.token_requests.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        status, body = self._answer(form)
        record.answered = status
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    def _answer(self, form: Any) -> tuple[int, Any]:
        if self.down:
            return 503, {"error": "temporarily_unavailable"}
        if self.answer is not None:
            return self.answer
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return 401, {"error": "invalid_client"}
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            refresh = _str(form.get("refresh_token")) or ""
            user = self.refresh_tokens.get(refresh)
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "revoked or unknown"}
            body: dict[str, Any] = {
                "access_token": self.issue(user),
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            }
            if self.rotate:
                self.revoke(refresh)
                body["refresh_token"] = self.grant(user)
            return 200, body
        if grant_type == "client_credentials" and self.app_user is not None:
            return 200, {
                "access_token": self.issue(self.app_user),
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            }
        return 400, {"error": "unsupported_grant_type"}

    def issue(self, user: str) -> str:
        """An access token for ``user`` (as a caller that obtained its own has one)."""
        token = self.next_tokens.pop(0) if self.next_tokens else "at-" + secrets.token_urlsafe(32)
        self.access_tokens[token] = Issued(user)
        return token

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = _str(form.get("token")) or ""
        self.introspected.append(token)
        issued = self.access_tokens.get(token)
        if issued is None or not issued.active:
            return web.json_response({"active": False})
        return web.json_response({"active": True, "username": issued.user})


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
