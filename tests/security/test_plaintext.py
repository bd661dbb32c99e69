"""Plaintext POP3 to a host that is not loopback is refused when the configuration loads,
unless explicitly allowed. Nothing here connects anywhere: only configuration is loaded."""

from __future__ import annotations

import pytest

from gateway.accounts import PRESETS
from gateway.app import build_directory
from gateway.config import ConfigError, load_settings
from gateway.pop3 import TLSMode

NOT_LOOPBACK = [
    "10.0.0.1",
    "192.168.1.10",
    "mail.example.com",
    "127.0.0.1.nip.io",
    "localhost.example.com",
    "localhost.",
    "0.0.0.0",
    "[::ffff:10.0.0.1]",
    "[2001:db8::1]",
    "127.1",  # not an address ipaddress reads: treated as a name, so refused
]
LOOPBACK = ["127.0.0.1", "127.0.0.2", "localhost", "[::1]"]


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_default_upstream(host: str) -> None:
    with pytest.raises(ConfigError, match="default_upstream_allow_plaintext"):
        load_settings(default_upstream=f"pop3://{host}")
    with pytest.raises(ConfigError, match="default_upstream_allow_plaintext"):
        load_settings(default_upstream=f"POP3://{host}:110")
    allowed = load_settings(
        default_upstream=f"pop3://{host}", default_upstream_allow_plaintext=True
    )
    assert allowed.default_upstream == f"pop3://{host}"


def test_default_upstream_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POP3GW_DEFAULT_UPSTREAM", "pop3://10.0.0.1")
    with pytest.raises(ConfigError, match="default_upstream"):
        load_settings()
    monkeypatch.setenv("POP3GW_DEFAULT_UPSTREAM_ALLOW_PLAINTEXT", "true")
    assert load_settings().default_upstream == "pop3://10.0.0.1"


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_configured_upstream(host: str) -> None:
    upstream = {"name": "corp", "url": f"pop3://{host}:110"}
    with pytest.raises(ConfigError, match=r"upstreams\.0\.url.*allow_plaintext"):
        load_settings(upstreams=[upstream])
    load_settings(upstreams=[{**upstream, "allow_plaintext": True}])


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_mailbox_with_a_plaintext_url(host: str) -> None:
    box = {"id": "box", "upstream": f"pop3://{host}", "user": "u", "password": "p"}
    with pytest.raises(ConfigError, match=r"mailboxes\.0\.upstream: plaintext"):
        load_settings(mailboxes=[box])


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_plaintext_needs_no_opt_in(host: str) -> None:
    load_settings(default_upstream=f"pop3://{host}:1110")
    load_settings(upstreams=[{"name": "local", "url": f"pop3://{host}:1110"}])


@pytest.mark.parametrize("scheme", ["pop3s", "pop3+starttls"])
def test_tls_needs_no_opt_in(scheme: str) -> None:
    settings = load_settings(
        default_upstream=f"{scheme}://10.0.0.1",
        upstreams=[{"name": "corp", "url": f"{scheme}://mail.example.com"}],
    )
    directory = build_directory(settings)
    upstream = directory.upstream_for_user("someone")
    assert upstream is not None
    assert upstream.tls is not TLSMode.PLAIN


def test_presets_are_implicit_tls() -> None:
    directory = build_directory(load_settings(presets=True))
    for domain in PRESETS:
        upstream = directory.upstream_for_user(f"someone@{domain}")
        assert upstream is not None
        assert upstream.tls is TLSMode.IMPLICIT, domain
        assert upstream.tls_config.verify, domain


def test_upstream_host_never_comes_from_the_request() -> None:
    """A passthrough user name that looks like a route does not choose the server."""
    directory = build_directory(load_settings(default_upstream="pop3s://pop.example.com"))
    for user in ("a@10.0.0.1", "a@[127.0.0.1]", "a@evil.example:110", "pop3://10.0.0.1"):
        upstream = directory.upstream_for_user(user)
        assert upstream is not None
        assert (upstream.host, upstream.port) == ("pop.example.com", 995)
