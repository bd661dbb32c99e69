"""The token lifecycle against Dovecot and the local authorization server: rotated refresh
tokens kept and used, ``invalid_grant`` as ``needs-reauth`` (no refresh loop), a token
endpoint that is down or slow (backoff, the old token while it lasts), and sessions
recycled before their token is due. Time is a fake clock the test moves."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from gateway.app import create_app
from tests.support.api import READ_KEY, Client, ClientFactory, bearer, checked, validator
from tests.support.clock import FakeClock
from tests.support.dovecot import DovecotUser
from tests.support.oauth import AuthServer

from .conftest import GrantedSettings, write_secret

GET = "/v1/mailboxes/box"


async def _get(client: Client, status: int = 200, path: str = GET) -> dict[str, object]:
    body: dict[str, object] = await checked(
        await client.get(path, headers=bearer(READ_KEY)), status
    )
    return body


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


async def test_a_rotated_refresh_token_is_kept_and_used_after_a_restart(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
) -> None:
    auth_server.rotate = True  # every refresh revokes the refresh token it was given
    first = auth_server.grant(oauth_user.name)
    store = tmp_path / "store" / "box.json"
    store.parent.mkdir()
    settings = granted_settings(refresh_token=first, oauth={"refresh_token_store": str(store)})
    clock = FakeClock()
    client = await aiohttp_client(create_app(settings, clock=clock))
    await _get(client)
    clock.advance(3600)  # due: the next request refreshes with the rotated token
    await _get(client)
    used = [r.refresh_token for r in auth_server.token_requests]
    assert used[0] == first
    assert used[1] is not None
    assert used[1] != first  # the rotated one
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert "pop3gw_oauth_refresh_tokens_rotated_total" in await _metrics(client)

    # a restart: the configured token was revoked long ago; the stored one works
    again = await aiohttp_client(create_app(settings, clock=FakeClock()))
    await _get(again)
    assert auth_server.token_requests[2].refresh_token not in (first, used[1])
    assert all(r.answered == 200 for r in auth_server.token_requests)


async def test_a_new_configured_refresh_token_wins_over_the_stored_one(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
) -> None:
    auth_server.rotate = True
    store = tmp_path / "store.json"
    settings = granted_settings(oauth={"refresh_token_store": str(store)})
    await _get(await aiohttp_client(create_app(settings)))
    assert store.exists()
    renewed = auth_server.grant(oauth_user.name)  # the operator authorized it again
    write_secret(tmp_path / "refresh-token", renewed)

    await _get(await aiohttp_client(create_app(settings)))
    assert auth_server.token_requests[-1].refresh_token == renewed


async def test_invalid_grant_is_needs_reauth_without_a_refresh_loop(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    revoked = auth_server.grant(oauth_user.name)
    auth_server.revoke(revoked)
    settings = granted_settings(refresh_token=revoked)
    client = await aiohttp_client(create_app(settings))

    with caplog.at_level(logging.ERROR, logger="gateway.oauth"):
        for _ in range(3):
            problem = await _get(client, 503)
            assert problem["type"] == "/problems/mailbox-needs-reauth"
            assert problem["retry_after"] == 300
    assert len(auth_server.token_requests) == 1  # asked once, never again
    assert auth_server.introspected == []  # nothing sent to the mail server
    [line] = [r for r in caplog.records if r.name == "gateway.oauth"]
    assert "mailbox box needs to be authorized again" in line.getMessage()
    assert "invalid_grant" in line.getMessage()
    text = await _metrics(client)
    assert "pop3gw_oauth_needs_reauth_mailboxes 1.0" in text
    assert (
        'pop3gw_oauth_token_requests_total{outcome="invalid-grant",provider="generic"} 1.0' in text
    )

    # the operator puts a new refresh token in the file: picked up without a restart
    write_secret(tmp_path / "refresh-token", auth_server.grant(oauth_user.name))
    await _get(client)
    assert "pop3gw_oauth_needs_reauth_mailboxes 0.0" in await _metrics(client)


async def test_the_token_endpoint_down_backoff_and_the_old_token_while_it_lasts(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
) -> None:
    settings = granted_settings(pool={"min_fresh_interval": 0})
    clock = FakeClock()
    client = await aiohttp_client(create_app(settings, clock=clock))
    await _get(client)
    [token] = auth_server.issued

    auth_server.down = True
    clock.advance(3400)  # due (refresh margin 300 s), still valid for 200 s
    await _get(client, 200, GET + "?fresh=true")
    assert len(auth_server.token_requests) == 2  # tried, failed
    await _get(client, 200, GET + "?fresh=true")
    assert len(auth_server.token_requests) == 2  # backing off: not asked again
    assert auth_server.introspected == [token, token, token]  # the old token, still good

    clock.advance(300)  # expired; the backoff is over
    problem = await _get(client, 503, GET + "?fresh=true")
    assert problem["type"] == "/problems/token-unavailable"
    assert "answered HTTP 503" in str(problem["detail"])
    assert len(auth_server.token_requests) == 3
    problem = await _get(client, 503, GET + "?fresh=true")
    assert len(auth_server.token_requests) == 3  # backing off (2 s now)
    assert problem["retry_after"] in (1, 2)

    auth_server.down = False
    clock.advance(3)
    await _get(client, 200, GET + "?fresh=true")
    assert auth_server.introspected[-1] == auth_server.issued[-1] != token
    assert 'outcome="error",provider="generic"} 2.0' in await _metrics(client)


async def test_a_slow_token_endpoint_times_out(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
) -> None:
    auth_server.delay = 5.0
    settings = granted_settings(oauth={"timeout": 0.2})
    client = await aiohttp_client(create_app(settings))
    problem = await _get(client, 503)
    assert problem["type"] == "/problems/token-unavailable"
    assert "timed out after 0.2 s" in str(problem["detail"])
    assert 'outcome="timeout",provider="generic"} 1.0' in await _metrics(client)


async def test_a_session_ends_before_its_token_is_due(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
) -> None:
    """A session logged in late in its token's life is not reused past the token's refresh
    time, however fresh its snapshot may be; the next login has a new token."""
    settings = granted_settings(pool={"snapshot_max_age": 60})
    clock = FakeClock()
    client = await aiohttp_client(create_app(settings, clock=clock))
    listing = await _get(client, path="/v1/mailboxes/box/messages")
    [message] = listing["messages"]  # type: ignore[misc]
    raw = f"/v1/mailboxes/box/messages/{message['id']}/raw"
    [first] = auth_server.issued

    async def read_raw() -> None:
        response = await client.get(raw, headers=bearer(READ_KEY))
        assert response.status == 200
        assert b"hello oauth" in await validator().check(response)

    clock.advance(3290)  # the session is too old; the token is fresh for 10 s more
    await read_raw()
    assert auth_server.introspected == [first, first]
    clock.advance(5)
    await read_raw()  # the same session (no login)
    assert auth_server.introspected == [first, first]
    clock.advance(6)  # past the token's refresh time: new token, new session
    await read_raw()
    second = auth_server.issued[-1]
    assert second != first
    assert auth_server.introspected == [first, first, second]


async def test_an_expires_in_that_is_not_a_number_is_a_failed_answer_not_a_token(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
) -> None:
    # "expires_in": NaN, which Python's JSON reads: a token of it would be neither valid
    # nor due, and every request would ask the token endpoint again
    auth_server.lifetime = float("nan")  # type: ignore[assignment]
    settings = granted_settings(pool={"min_fresh_interval": 0})
    client = await aiohttp_client(create_app(settings, clock=FakeClock()))
    problem = await _get(client, 503)
    assert problem["type"] == "/problems/token-unavailable"
    assert "expires_in that is not a number" in str(problem["detail"])
    await _get(client, 503, GET + "?fresh=true")
    assert len(auth_server.token_requests) == 1  # backing off, not asking at every request
