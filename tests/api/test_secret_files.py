"""A configured mailbox's secret file that goes away (or turns unreadable) while the gateway
runs: a clear problem that names no secret, and the file is read again once it is back."""

from __future__ import annotations

from pathlib import Path

from gateway.app import create_app
from tests.support.api import READ_KEY, ClientFactory, bearer, checked, settings_for
from tests.support.fakepop3 import FakePOP3Server


async def test_a_password_file_gone_is_a_clear_problem_until_it_is_back(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server, tmp_path: Path
) -> None:
    secret = tmp_path / "box.password"
    secret.write_text("pw\n")
    settings = settings_for(fake_server.port, user="alice", password="pw")
    box = settings.mailboxes[0].model_copy(update={"password": None, "password_file": secret})
    settings = settings.model_copy(update={"mailboxes": [box, *settings.mailboxes[1:]]})
    api = await aiohttp_client(create_app(settings))
    await checked(await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)

    secret.unlink()  # an operator's mistake, or a Secret volume being replaced
    fresh = "/v1/mailboxes/box?fresh=true"
    body = await checked(await api.get(fresh, headers=bearer(READ_KEY)), 502)
    assert body["type"] == "/problems/upstream-auth-failed"
    assert "secret file is missing, unreadable or not UTF-8" in body["detail"]
    assert str(secret) not in body["detail"]

    secret.write_bytes(b"\xff\xfe")  # not UTF-8
    body = await checked(await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 502)
    assert body["type"] == "/problems/upstream-auth-failed"

    secret.write_text("pw\n")  # back: read again, no restart
    await checked(await api.get(fresh, headers=bearer(READ_KEY)), 200)
