"""Fixtures for OAuth2 tests: a Dovecot whose ``oauth2`` passdb asks a local token
introspection endpoint, and the local authorization server that serves it (and the token
endpoint the gateway refreshes tokens at), both on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from gateway.config import Settings
from tests.support.api import READ_KEY, settings_for, sha
from tests.support.dovecot import Dovecot, DovecotUser, free_port, require_dovecot
from tests.support.oauth import AuthServer

MESSAGE = b"Subject: hello oauth\r\nFrom: a@example.com\r\n\r\nbody\r\n"


@pytest.fixture(scope="session")
def introspection_port() -> int:
    """The port every test's authorization server listens on (Dovecot's configuration
    names it once for the session)."""
    return free_port()


@pytest.fixture(scope="session")
def oauth_dovecot(introspection_port: int) -> Iterator[Dovecot]:
    require_dovecot()
    url = f"http://127.0.0.1:{introspection_port}/introspect"
    with Dovecot(oauth2_introspection_url=url) as server:
        yield server


@pytest.fixture
async def auth_server(introspection_port: int) -> AsyncIterator[AuthServer]:
    async with AuthServer(port=introspection_port) as server:
        yield server


@pytest.fixture
def oauth_user(oauth_dovecot: Dovecot) -> DovecotUser:
    user = oauth_dovecot.new_user("oauth")
    user.deliver(MESSAGE)
    return user


def write_secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    return path


def oauth_settings(
    dovecot: Dovecot,
    server: AuthServer,
    user: str,
    tmp_path: Path,
    *,
    refresh_token: str | None = None,
    oauth: dict[str, Any] | None = None,
    **extra: Any,
) -> Settings:
    """A configured OAuth2 mailbox 'box' (generic provider at the local token endpoint; the
    client secret and the refresh token in files under ``tmp_path``), readable with
    ``READ_KEY``."""
    settings: dict[str, Any] = {
        "provider": "generic",
        "token_url": server.token_url,
        "client_id": server.client_id,
        "client_secret_file": str(write_secret(tmp_path / "client-secret", server.client_secret)),
    }
    if refresh_token is not None:
        settings["refresh_token_file"] = str(
            write_secret(tmp_path / "refresh-token", refresh_token)
        )
    settings.update(oauth or {})
    values: dict[str, Any] = {
        "mailboxes": [
            {
                "id": "box",
                "upstream": f"pop3://127.0.0.1:{dovecot.port}",
                "user": user,
                "auth": "oauth2",
                "oauth": settings,
            }
        ],
        "api_keys": [{"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"]}],
    }
    values.update(extra)
    return settings_for(dovecot.port, **values)


class GrantedSettings(Protocol):
    def __call__(self, *, refresh_token: str | None = None, **extra: Any) -> Settings: ...


@pytest.fixture
def granted_settings(
    oauth_dovecot: Dovecot, auth_server: AuthServer, oauth_user: DovecotUser, tmp_path: Path
) -> GrantedSettings:
    """:func:`oauth_settings` for the test's ``oauth_user`` on ``oauth_dovecot``, with a
    refresh token ``auth_server`` grants them when called (or the ``refresh_token`` given);
    ``extra`` as :func:`oauth_settings` takes it (``oauth=...``, settings)."""

    def make(*, refresh_token: str | None = None, **extra: Any) -> Settings:
        if refresh_token is None:
            refresh_token = auth_server.grant(oauth_user.name)
        return oauth_settings(
            oauth_dovecot,
            auth_server,
            oauth_user.name,
            tmp_path,
            refresh_token=refresh_token,
            **extra,
        )

    return make
