"""Fixtures for API tests: the real app factory in front of a real Dovecot (the scriptable
server's ``fake_server`` and ``fake_api`` are in tests/conftest.py, shared with the fault
matrix)."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from tests.support.api import Client, ClientFactory, settings_for
from tests.support.dovecot import Dovecot, DovecotUser


@pytest.fixture
async def dovecot_api(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> Client:
    settings = settings_for(dovecot.port, user=dovecot_user.name, password=dovecot_user.password)
    return await aiohttp_client(create_app(settings))
