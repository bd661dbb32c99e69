"""Passthrough with the caller's own OAuth access token on ``me``: ``Authorization: XOAUTH2
<base64 of the SASL XOAUTH2 string>``, a scheme of its own so that an API key is never
taken for a mail token; the token logs in and is kept nowhere."""

from __future__ import annotations

import base64

from aiohttp import web

from gateway.accounts import preset_upstream
from gateway.app import create_app
from gateway.keys import DIRECTORY
from gateway.pop3 import Timeouts
from tests.support.api import READ_KEY, ClientFactory, bearer, checked, settings_for, sha
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.oauth import AuthServer


def xoauth2(user: str, token: str) -> dict[str, str]:
    raw = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return {"Authorization": "XOAUTH2 " + base64.b64encode(raw).decode()}


def _app(dovecot: Dovecot) -> web.Application:
    settings = settings_for(
        dovecot.port,
        api_keys=[{"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["*"]}],
    )
    return create_app(settings)


async def test_the_callers_own_token_reads_its_mailbox_and_is_not_kept(
    aiohttp_client: ClientFactory,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
) -> None:
    token = auth_server.issue(oauth_user.name)  # obtained by the caller, elsewhere
    app = _app(oauth_dovecot)
    client = await aiohttp_client(app)

    body = await checked(
        await client.get("/v1/mailboxes/me/messages", headers=xoauth2(oauth_user.name, token)),
        200,
    )
    assert [m["subject"] for m in body["messages"]] == ["hello oauth"]
    assert auth_server.introspected == [token]
    assert auth_server.token_requests == []  # the gateway asked for nothing itself
    assert len(app[DIRECTORY].recent) == 0
    oauth_dovecot.wait_for_log(lambda log: f"user=<{oauth_user.name}>, method=XOAUTH2" in log)


async def test_a_refused_token_is_401_and_an_api_key_is_never_sent_as_a_token(
    aiohttp_client: ClientFactory,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
) -> None:
    client = await aiohttp_client(_app(oauth_dovecot))

    refused = await checked(
        await client.get("/v1/mailboxes/me", headers=xoauth2(oauth_user.name, "at-unknown")), 401
    )
    assert refused["type"] == "/problems/unauthorized"
    # an API key on me is Bearer: asks for credentials, sends nothing to the mail server
    wrong = await checked(await client.get("/v1/mailboxes/me", headers=bearer(READ_KEY)), 401)
    assert wrong["type"] == "/problems/unauthorized"
    # and XOAUTH2 is no way into a configured mailbox
    token = auth_server.issue(oauth_user.name)
    other = await checked(
        await client.get("/v1/mailboxes/box", headers=xoauth2(oauth_user.name, token)), 401
    )
    assert other["type"] == "/problems/unauthorized"
    assert auth_server.introspected == ["at-unknown"]


async def test_malformed_xoauth2_credentials_are_400(
    aiohttp_client: ClientFactory, oauth_dovecot: Dovecot
) -> None:
    client = await aiohttp_client(_app(oauth_dovecot))
    for header in (
        "XOAUTH2 not-base64!",
        "XOAUTH2 " + base64.b64encode(b"user=a\x01auth=Basic x\x01\x01").decode(),
        "XOAUTH2 " + base64.b64encode(b"user=a\x01auth=Bearer x y\x01\x01").decode(),
    ):
        problem = await checked(
            await client.get("/v1/mailboxes/me", headers={"Authorization": header}), 400
        )
        assert problem["type"] == "/problems/invalid-request"


def test_microsoft_presets_take_xoauth2_in_two_steps() -> None:
    outlook = preset_upstream("outlook.com", Timeouts())
    gmail = preset_upstream("gmail.com", Timeouts())
    assert outlook is not None
    assert gmail is not None
    assert outlook.xoauth2_two_step
    assert not gmail.xoauth2_two_step
