"""The account wizard's "test settings": the OAuth token (for an OAuth2 mailbox), connect,
TLS, authenticate, CAPA and STAT, each
timed, stopping at the first failure, described in our own words. Every failure of a step
(rejected credentials included, whoever's they are) is reported as that step, in one
:class:`CheckResult`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..accounts import Account, OAuthCredential
from ..oauth.errors import OAuthError
from ..pop3 import POP3AuthError, POP3Client, POP3Error, POP3TimeoutError, TLSMode
from .errors import connection_failure_words, failure_reason
from .sessions import SessionObserver, SessionSource

#: Our own words for each kind of failure (never the server's text, never a secret).
_DESCRIPTIONS: dict[str, str] = {
    "tls": "TLS failed (certificate not trusted, wrong host name, or handshake error)",
    "auth": "the server rejected the credentials",
    "in-use": "the mailbox is locked by another session",
    "login-delay": "the server asks to wait before logging in again",
    "unreachable": "cannot reach the server or the connection broke",
    "outcome-unknown": "cannot reach the server or the connection broke",
    "protocol": "the server answered something that is not POP3",
    "reply-too-large": "the server's reply was larger than the gateway accepts",
}


def describe_failure(exc: BaseException) -> str:
    """Our own words for a failure (never the server's raw text, never a secret)."""
    words = connection_failure_words(exc)
    if words is not None:
        return words
    reason = failure_reason(exc)
    if reason == "timeout":
        phase = exc.phase if isinstance(exc, POP3TimeoutError) else "network"
        return f"timed out ({phase})"
    if reason in _DESCRIPTIONS:
        return _DESCRIPTIONS[reason]
    command = getattr(exc, "command", None)
    if isinstance(command, str):  # a -ERR of the server (POP3ResponseError)
        code = getattr(exc, "code", None)
        return f"the server refused {command}" + (f" [{code}]" if code else "")
    return type(exc).__name__


@dataclass
class CheckStep:
    name: str
    ok: bool
    ms: float
    detail: str | None = None


@dataclass
class CheckResult:
    ok: bool
    steps: list[CheckStep]
    capabilities: list[str]
    messages: int | None = None
    octets: int | None = None
    #: the server rejected the credentials (the auth step failed with -ERR)
    credentials_rejected: bool = False


class Checker:
    """Checks an account the way every route uses it: through the session pool (its caps,
    one session per mailbox, the replica gate) and the login throttle, so that ``/check``
    is no way around them. The new session it opens goes back to the pool."""

    def __init__(self, sessions: SessionSource, observer: SessionObserver | None = None) -> None:
        self._sessions = sessions
        self._observer = observer

    async def check(self, account: Account) -> CheckResult:
        """Connect, TLS, authenticate, CAPA and STAT, each timed; stops at the first
        failure. Limits that refuse the attempt (throttle, pool) raise, as on every route."""
        steps: list[CheckStep] = []
        upstream = account.upstream
        caps: list[str] = []
        messages = octets = None
        rejected = False

        async def step(name: str, action: Callable[[], Awaitable[Any]]) -> Any:
            started = time.perf_counter()
            try:
                result = await action()
            except (POP3Error, OSError) as exc:
                steps.append(CheckStep(name, False, _ms(started), describe_failure(exc)))
                raise
            steps.append(CheckStep(name, True, _ms(started)))
            return result

        async def connect_and_login() -> POP3Client:
            steps.clear()  # a login the pool retries ([IN-USE]) reports its last attempt
            connect_mode = TLSMode.PLAIN if upstream.tls is TLSMode.STARTTLS else upstream.tls
            client: POP3Client = await step(
                "connect",
                lambda: upstream.connect(
                    tls=connect_mode,
                    on_command=self._observer.observe_pop3 if self._observer else None,
                ),
            )
            try:
                if upstream.tls is TLSMode.STARTTLS:
                    await step("tls", client.stls)
                elif upstream.tls is TLSMode.IMPLICIT:
                    steps.append(CheckStep("tls", True, 0.0, "implicit TLS, negotiated on connect"))
                else:
                    steps.append(CheckStep("tls", False, 0.0, "plaintext: no TLS configured"))
                await step("greeting", _noop)
                await step("auth", lambda: account.login(client))
            except BaseException:
                client.abort()
                raise
            return client

        token_step: list[CheckStep] = []
        if isinstance(account.credential, OAuthCredential):
            token_step.append(await _token_step(account.credential))
            if not token_step[0].ok:
                return CheckResult(False, token_step, [], None, None)
        try:
            async with self._sessions.lease(account, fresh=True, how=connect_and_login) as session:
                capabilities = await step("capa", session.client.capa)
                caps = sorted(capabilities.items)
                messages, octets = await step("stat", session.client.stat)
        except POP3AuthError:
            rejected = True
        except (POP3Error, OSError):
            if not steps:
                raise  # refused before any step (pool, gate): a problem, as on every route
        steps[:0] = token_step
        ok = all(s.ok for s in steps if s.name != "tls" or upstream.tls is not TLSMode.PLAIN)
        ok = ok and any(s.name == "stat" for s in steps)
        return CheckResult(ok, steps, caps, messages, octets, credentials_rejected=rejected)


_TOKEN_SOURCES = {
    "endpoint": "obtained from the token endpoint",
    "cache": "cached",
    "replica": "obtained by another replica (shared through Redis)",
}


async def _token_step(credential: OAuthCredential) -> CheckStep:
    """The OAuth token: where it came from and how long it lasts, never the token."""
    source = credential.source
    started = time.perf_counter()
    try:
        token = await source.token()
    except OAuthError as exc:
        return CheckStep("token", False, _ms(started), str(exc))
    left = token.expires_at - source.clock()
    return CheckStep(
        "token", True, _ms(started), f"{_TOKEN_SOURCES[token.source]}, expires in {left:.0f} s"
    )


async def _noop() -> None:
    return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
