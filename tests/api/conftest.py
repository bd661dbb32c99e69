"""Fixtures for API tests: the real app factory, a real Dovecot, and a scriptable server."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings, load_settings
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

READ_KEY = "read-key-0123456789abcdef"
DELETE_KEY = "delete-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def settings_for(port: int, *, user: str = "", password: str = "", **extra: Any) -> Settings:
    """Passthrough to 127.0.0.1:port, plus a configured mailbox 'box' for user/password and
    three API keys: read-only on box, read+delete on box, read on another mailbox only."""
    mailboxes = []
    if user:
        mailboxes = [
            {
                "id": "box",
                "upstream": f"pop3://127.0.0.1:{port}",
                "user": user,
                "password": password,
            },
            {
                "id": "other",
                "upstream": f"pop3://127.0.0.1:{port}",
                "user": user,
                "password": password,
            },
        ]
    values: dict[str, Any] = {
        "default_upstream": f"pop3://127.0.0.1:{port}",
        "presets": False,
        "mailboxes": mailboxes,
        "api_keys": [
            {"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"], "scopes": ["read"]},
            {
                "name": "deleter",
                "sha256": sha(DELETE_KEY),
                "mailboxes": ["box"],
                "scopes": ["read", "delete"],
            },
            {"name": "other", "sha256": sha(OTHER_KEY), "mailboxes": ["other"]},
        ]
        if user
        else [],
    }
    values.update(extra)
    return load_settings(**values)


@pytest.fixture
async def dovecot_api(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> TestClient[web.Request, web.Application]:
    settings = settings_for(dovecot.port, user=dovecot_user.name, password=dovecot_user.password)
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def fake_server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox(
        [
            ("uid-1", b"Subject: one\r\nFrom: A <a@example.com>\r\n\r\nfirst\r\n"),
            ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
        ]
    )
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        yield server


@pytest.fixture
async def fake_api(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> TestClient[web.Request, web.Application]:
    settings = settings_for(
        fake_server.port,
        user="alice",
        password="pw",
        timeouts={"connect": 2, "tls": 2, "command": 0.5, "idle": 0.5},
        pool={"retry_budget": 0.3},
    )
    return await aiohttp_client(create_app(settings))
