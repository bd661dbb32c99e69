"""A real OAuth2 round trip on this machine: the gateway obtains an access token from the
local token endpoint with the refresh token it was configured with, and logs in to Dovecot
with it (OAUTHBEARER where offered, or XOAUTH2); Dovecot's oauth2 passdb checks the very
token at the local introspection endpoint."""

from __future__ import annotations

from gateway.app import create_app
from tests.support.api import READ_KEY, ClientFactory, bearer, checked
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.oauth import AuthServer

from .conftest import GrantedSettings


async def test_a_token_obtained_by_the_gateway_logs_in_with_oauthbearer(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
) -> None:
    refresh = auth_server.grant(oauth_user.name)
    settings = granted_settings(refresh_token=refresh)
    client = await aiohttp_client(create_app(settings))

    body = await checked(await client.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)

    assert body["messages"] == 1
    assert [(r.grant_type, r.refresh_token) for r in auth_server.token_requests] == [
        ("refresh_token", refresh)
    ]
    # the token the gateway obtained is the one Dovecot was shown at login
    assert auth_server.introspected == auth_server.issued
    oauth_dovecot.wait_for_log(lambda log: f"user=<{oauth_user.name}>, method=OAUTHBEARER" in log)


async def test_xoauth2_when_configured_and_the_token_is_reused(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
) -> None:
    settings = granted_settings(oauth={"mechanism": "xoauth2"}, pool={"min_fresh_interval": 0})
    client = await aiohttp_client(create_app(settings))

    for _ in range(2):
        listing = await checked(
            await client.get("/v1/mailboxes/box/messages?fresh=true", headers=bearer(READ_KEY)),
            200,
        )
        assert [m["subject"] for m in listing["messages"]] == ["hello oauth"]

    assert auth_server.refreshes == 1  # one token for both logins
    assert len(auth_server.introspected) == 2
    assert set(auth_server.introspected) == set(auth_server.issued)
    oauth_dovecot.wait_for_log(lambda log: f"user=<{oauth_user.name}>, method=XOAUTH2" in log)


async def test_a_token_dovecot_refuses_is_replaced_at_the_next_login(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
) -> None:
    settings = granted_settings(pool={"min_fresh_interval": 0})
    client = await aiohttp_client(create_app(settings))
    await checked(await client.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)
    auth_server.expire(auth_server.issued[0])  # revoked at the provider before its time

    refused = await checked(
        await client.get("/v1/mailboxes/box?fresh=true", headers=bearer(READ_KEY)), 502
    )
    assert refused["type"] == "/problems/upstream-auth-failed"
    await checked(await client.get("/v1/mailboxes/box?fresh=true", headers=bearer(READ_KEY)), 200)

    assert auth_server.refreshes == 2
    assert auth_server.introspected == [*auth_server.issued[:1], *auth_server.issued]
