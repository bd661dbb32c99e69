"""Provider quirks, on the one POP3 server we own (it records every line it receives):
Microsoft 365 wants AUTH XOAUTH2 in two steps (the command alone, the token after the
empty challenge) and, for app-only access, the client-credentials flow with the
``.default`` scope of outlook.office365.com; Google takes XOAUTH2 in one line; OAUTHBEARER
is used where a server offers it and XOAUTH2 where it does not."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from tests.support.api import READ_KEY, ClientFactory, bearer, checked, settings_for, sha
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server
from tests.support.oauth import AuthServer

from .conftest import write_secret

TOKEN = "at-the-one-token-the-server-accepts-0123456789"


@pytest.fixture
async def auth() -> AsyncIterator[AuthServer]:
    async with AuthServer(next_tokens=[TOKEN]) as server:
        yield server


async def _pop3(mechanisms: tuple[str, ...]) -> FakePOP3Server:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nfirst\r\n")])
    return FakePOP3Server(box, users={}, tokens={"alice@example.com": TOKEN}, mechanisms=mechanisms)


def _settings(pop3: FakePOP3Server, auth: AuthServer, tmp: Path, **oauth: Any) -> Any:
    secret = write_secret(tmp / "secret", auth.client_secret)
    return settings_for(
        pop3.port,
        mailboxes=[
            {
                "id": "box",
                "upstream": f"pop3://127.0.0.1:{pop3.port}",
                "user": "alice@example.com",
                "auth": "oauth2",
                "oauth": {
                    "client_id": auth.client_id,
                    "client_secret_file": str(secret),
                    "token_url": auth.token_url,
                    **oauth,
                },
            }
        ],
        api_keys=[{"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"]}],
    )


def _auth_lines(pop3: FakePOP3Server) -> list[bytes]:
    lines = pop3.received[0]
    start = next(i for i, line in enumerate(lines) if line.startswith(b"AUTH"))
    return lines[start : start + 2]


async def test_microsoft_app_only_access_logs_in_with_two_step_xoauth2(
    aiohttp_client: ClientFactory, auth: AuthServer, tmp_path: Path
) -> None:
    auth.app_user = "alice@example.com"
    async with await _pop3(("PLAIN", "XOAUTH2")) as pop3:
        settings = _settings(
            pop3,
            auth,
            tmp_path,
            provider="microsoft",
            tenant="contoso.example",
            client_credentials=True,
        )
        client = await aiohttp_client(create_app(settings))
        await checked(await client.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)

        command, response = _auth_lines(pop3)
    assert [(r.grant_type, r.scope) for r in auth.token_requests] == [
        ("client_credentials", "https://outlook.office365.com/.default")
    ]
    assert command == b"AUTH XOAUTH2\r\n"  # no initial response: the token comes after "+"
    payload = base64.b64decode(response.strip())
    assert payload == b"user=alice@example.com\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01"


async def test_microsoft_refresh_flow_asks_for_the_pop_scope(
    aiohttp_client: ClientFactory, auth: AuthServer, tmp_path: Path
) -> None:
    refresh = write_secret(tmp_path / "rt", auth.grant("alice@example.com"))
    async with await _pop3(("XOAUTH2",)) as pop3:
        settings = _settings(
            pop3, auth, tmp_path, provider="microsoft", refresh_token_file=str(refresh)
        )
        client = await aiohttp_client(create_app(settings))
        await checked(await client.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)
        command, _ = _auth_lines(pop3)
    assert auth.token_requests[0].scope == (
        "https://outlook.office.com/POP.AccessAsUser.All offline_access"
    )
    assert command == b"AUTH XOAUTH2\r\n"


async def test_google_logs_in_with_one_line_xoauth2(
    aiohttp_client: ClientFactory, auth: AuthServer, tmp_path: Path
) -> None:
    refresh = write_secret(tmp_path / "rt", auth.grant("alice@example.com"))
    async with await _pop3(("PLAIN", "XOAUTH2", "OAUTHBEARER")) as pop3:
        settings = _settings(
            pop3,
            auth,
            tmp_path,
            provider="google",
            mechanism="xoauth2",
            refresh_token_file=str(refresh),
        )
        client = await aiohttp_client(create_app(settings))
        await checked(await client.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)
        command, _ = _auth_lines(pop3)
    assert auth.token_requests[0].scope is None  # granted with the refresh token
    verb, mechanism, initial = command.split()
    assert (verb, mechanism) == (b"AUTH", b"XOAUTH2")
    assert TOKEN.encode() in base64.b64decode(initial)


@pytest.mark.parametrize(
    ("offered", "used"),
    [(("PLAIN", "XOAUTH2", "OAUTHBEARER"), b"OAUTHBEARER"), (("PLAIN", "XOAUTH2"), b"XOAUTH2")],
)
async def test_auto_uses_oauthbearer_where_offered(
    aiohttp_client: ClientFactory,
    auth: AuthServer,
    tmp_path: Path,
    offered: tuple[str, ...],
    used: bytes,
) -> None:
    refresh = write_secret(tmp_path / "rt", auth.grant("alice@example.com"))
    async with await _pop3(offered) as pop3:
        settings = _settings(
            pop3, auth, tmp_path, provider="generic", refresh_token_file=str(refresh)
        )
        client = await aiohttp_client(create_app(settings))
        await checked(await client.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)
        command, _ = _auth_lines(pop3)
    assert command.split()[1] == used
