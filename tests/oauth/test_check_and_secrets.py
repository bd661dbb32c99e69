"""``POST /check`` shows the token step (obtained, cached, expires in N s) and never the
token; and after a run through everything OAuth does (refreshes, rotation, a refused
token, needs-reauth, Redis, the debug log of the POP3 conversation, metrics, check-config),
no token, refresh token or client secret is found in any log line, metric, answer,
check-config output or Redis value."""

from __future__ import annotations

import json
import logging
import re
import secrets
from pathlib import Path

import pytest

from gateway.__main__ import main
from gateway.app import create_app
from gateway.redis import SharedRedis
from tests.support.api import READ_KEY, ClientFactory, bearer, checked
from tests.support.clock import FakeClock
from tests.support.oauth import AuthServer

from .conftest import GrantedSettings

CHECK = "/v1/mailboxes/box/check"


async def test_check_shows_the_token_step_without_the_token(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
) -> None:
    settings = granted_settings()
    clock = FakeClock()
    client = await aiohttp_client(create_app(settings, clock=clock))

    first = await checked(await client.post(CHECK, headers=bearer(READ_KEY)), 200)
    assert first["ok"] is True
    assert [s["name"] for s in first["steps"]][:2] == ["token", "connect"]
    assert first["steps"][0]["detail"] == "obtained from the token endpoint, expires in 3600 s"
    clock.advance(100)
    again = await checked(await client.post(CHECK, headers=bearer(READ_KEY)), 200)
    assert again["steps"][0]["detail"] == "cached, expires in 3500 s"
    assert auth_server.issued[0] not in json.dumps([first, again])

    auth_server.revoke(auth_server.token_requests[0].refresh_token or "")
    clock.advance(3400)  # due: the refresh is refused for good
    refused = await checked(await client.post(CHECK, headers=bearer(READ_KEY)), 200)
    assert refused["ok"] is False
    [step] = refused["steps"]
    assert step["name"] == "token"
    assert step["ok"] is False
    assert "needs to be authorized again" in step["detail"]


@pytest.mark.redis
async def test_no_secret_anywhere_after_a_run(
    aiohttp_client: ClientFactory,
    granted_settings: GrantedSettings,
    auth_server: AuthServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth_server.rotate = True
    cache_secret = "cache-" + secrets.token_urlsafe(16)
    settings = granted_settings(
        oauth={"refresh_token_store": str(tmp_path / "store.json")},
        redis_url="redis://127.0.0.1:6379/0",
        cache_secret=cache_secret,
        pool={"min_fresh_interval": 0},
        log={"level": "DEBUG"},
    )
    seen: list[str] = []
    # every logger at DEBUG, the POP3 conversation included (another test may have set
    # its level when it configured logging)
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, "gateway.pop3.wire"):
        client = await aiohttp_client(create_app(settings))
        for method, path, status in [
            ("GET", "/v1/mailboxes/box", 200),
            ("POST", "/v1/mailboxes/box/check", 200),
            ("GET", "/v1/mailboxes/box/messages", 200),
        ]:
            response = await client.request(method, path, headers=bearer(READ_KEY))
            seen.append(json.dumps(await checked(response, status)))
        fresh = "/v1/mailboxes/box?fresh=true"
        for _ in range(2):
            auth_server.expire(auth_server.issued[-1])  # a token the mail server refuses
            refused = await client.get(fresh, headers=bearer(READ_KEY))
            seen.append(json.dumps(await checked(refused, 502)))
            if len(auth_server.issued) == 2:
                for refresh in list(auth_server.refresh_tokens):
                    auth_server.revoke(refresh)  # then the grant is withdrawn
                needs_reauth = await client.get(fresh, headers=bearer(READ_KEY))
                seen.append(json.dumps(await checked(needs_reauth, 503)))
            else:  # a new token, from the rotated refresh token
                seen.append(
                    json.dumps(
                        await checked(await client.get(fresh, headers=bearer(READ_KEY)), 200)
                    )
                )
        seen.append(await (await client.get("/metrics")).text())
    box = settings.mailboxes[0].model_dump(mode="json", exclude_none=True)
    (tmp_path / "config.json").write_text(json.dumps({"mailboxes": [box]}))
    monkeypatch.setenv("POP3GW_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("POP3GW_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("POP3GW_CACHE_SECRET", cache_secret)
    capsys.readouterr()
    assert main(["check-config"]) == 0, capsys.readouterr().err
    seen.extend(capsys.readouterr())
    seen.append(caplog.text)
    seen.extend(str(record.__dict__) for record in caplog.records)
    redis = SharedRedis.connect("redis://127.0.0.1:6379/0")
    try:
        keys = [key async for key in redis.client.scan_iter(match="pop3gw:*")]
        values = [await redis.client.dump(key) for key in keys]
    finally:
        await redis.close()
    seen.extend(repr(v) for v in values if v is not None)
    seen.extend(repr(k) for k in keys)

    hidden = {
        auth_server.client_secret,
        *auth_server.issued,
        *(r.refresh_token for r in auth_server.token_requests if r.refresh_token),
    }
    assert len(hidden) == 6  # the client secret, two access tokens, three refresh tokens
    logged = [record.getMessage() for record in caplog.records]
    assert any("mailbox box needs to be authorized again" in line for line in logged)
    assert any("rotated the refresh token" in line for line in logged)
    assert "C: AUTH <redacted>" in logged  # the wire log ran
    everything = "\n".join(seen)
    for secret in hidden:
        assert secret not in everything
        # nor its tail (a token cut or reformatted in a message)
        assert not re.search(re.escape(secret[-16:]), everything)
