"""The token endpoint client: verified TLS (a certificate from an unknown CA is refused;
the operator's CA bundle is trusted), answers capped in size, error answers reduced to
their OAuth error code, never a redirect followed."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gateway.oauth.errors import TokenEndpointError
from gateway.oauth.http import TokenEndpointClient
from tests.support.oauth import AuthServer


@pytest.fixture
async def client() -> AsyncIterator[TokenEndpointClient]:
    endpoint = TokenEndpointClient(timeout=5, max_bytes=1024)
    yield endpoint
    await endpoint.close()


def _form(server: AuthServer, refresh: str) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "refresh_token": refresh,
        "client_id": server.client_id,
        "client_secret": server.client_secret,
    }


async def test_tls_is_verified_against_the_system_or_the_given_cas(
    client: TokenEndpointClient, tmp_path: Path
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    async with AuthServer(ssl_context=context) as server:
        form = _form(server, server.grant("alice"))
        with pytest.raises(TokenEndpointError, match="failed TLS verification"):
            await client.post(server.token_url, form)
        assert server.token_requests == []  # nothing sent to an unverified server
        answer = await client.post(server.token_url, form, cafile=str(cafile))
    assert answer["access_token"] in server.issued


async def test_answers_are_capped_and_errors_reduced_to_their_code(
    client: TokenEndpointClient,
) -> None:
    async with AuthServer() as server:
        server.answer = (200, {"access_token": "x" * 2000, "token_type": "Bearer"})
        with pytest.raises(TokenEndpointError, match="answered more than 1024 bytes"):
            await client.post(server.token_url, {})
        server.answer = (400, {"error": "invalid_grant", "error_description": "secret words"})
        with pytest.raises(TokenEndpointError) as refused:
            await client.post(server.token_url, {})
        assert refused.value.error == "invalid_grant"
        assert "secret words" not in str(refused.value)
        server.answer = (302, {"error": "go elsewhere"})
        with pytest.raises(TokenEndpointError, match="answered HTTP 302"):
            await client.post(server.token_url, {})
        server.answer = (200, ["not", "an", "object"])
        with pytest.raises(TokenEndpointError, match="not a JSON object"):
            await client.post(server.token_url, {})


async def test_an_endpoint_nobody_answers_at(client: TokenEndpointClient) -> None:
    async with AuthServer() as server:
        url = server.token_url
    with pytest.raises(TokenEndpointError, match="could not be reached"):
        await client.post(url, {})
