"""Trusting a mail server's certificate: a private CA (``cafile``) or a pinned certificate
(``fingerprint_sha256``), for the default upstream from the environment as for configured
upstreams. Against real Dovecots: one with a certificate from a test CA (trustme), one
with the self-signed certificate a lab server often has. A pin or a CA never lowers
verification: what is not trusted is refused before any credential is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import ConfigError, Settings, load_settings
from tests.support.api import ClientFactory, basic, bearer, checked, sha
from tests.support.dovecot import Dovecot, DovecotUser

KEY = "tls-trust-key-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("POP3GW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POP3GW_PRESETS", "false")


def env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"POP3GW_{name.upper()}", value)


async def mailbox(aiohttp_client: ClientFactory, user: DovecotUser, status: int) -> object:
    """GET /v1/mailboxes/me as ``user`` with settings from the environment."""
    api = await aiohttp_client(create_app(load_settings()))
    resp = await api.get("/v1/mailboxes/me", headers=basic(user.name, user.password))
    return await checked(resp, status)


def logins(server: Dovecot, user: DovecotUser) -> int:
    """Logins of ``user`` that reached Dovecot (its log names each one)."""
    return server.log_path.read_text(errors="replace").count(f"user=<{user.name}>")


async def test_default_upstream_trusts_a_private_ca_from_the_environment(
    aiohttp_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    dovecot: Dovecot,
    dovecot_user: DovecotUser,
) -> None:
    dovecot_user.deliver(b"Subject: hello\r\n\r\nbody\r\n")
    for url in (
        f"pop3s://localhost:{dovecot.tls_port}",
        f"pop3+starttls://localhost:{dovecot.port}",
    ):
        env(monkeypatch, default_upstream=url, default_upstream_cafile=str(dovecot.cafile))
        body = await mailbox(aiohttp_client, dovecot_user, 200)
        assert isinstance(body, dict)
        assert body["messages"] == 1, url


async def test_default_upstream_pinned_self_signed_certificate(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, lab_dovecot: Dovecot
) -> None:
    user = lab_dovecot.new_user()
    user.deliver(b"Subject: lab\r\n\r\nbody\r\n")
    # as `openssl x509 -noout -fingerprint -sha256` prints it
    pin = lab_dovecot.certificate_sha256.upper()
    printed = "sha256 Fingerprint=" + ":".join(pin[i : i + 2] for i in range(0, 64, 2))
    for url in (
        f"pop3s://127.0.0.1:{lab_dovecot.tls_port}",
        f"pop3+starttls://127.0.0.1:{lab_dovecot.port}",
    ):
        env(
            monkeypatch,
            default_upstream=url,
            default_upstream_fingerprint_sha256=printed,
            default_upstream_verify_tls="false",
        )
        body = await mailbox(aiohttp_client, user, 200)
        assert isinstance(body, dict)
        assert body["messages"] == 1, url
    assert logins(lab_dovecot, user) >= 1  # what the next test counts is in the log


async def test_a_pin_or_a_ca_never_lowers_verification(
    aiohttp_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    lab_dovecot: Dovecot,
    dovecot: Dovecot,
) -> None:
    user = lab_dovecot.new_user()
    url = f"pop3s://127.0.0.1:{lab_dovecot.tls_port}"
    # A pin alone is checked in addition to the chain: the self-signed chain still fails.
    env(
        monkeypatch,
        default_upstream=url,
        default_upstream_fingerprint_sha256=lab_dovecot.certificate_sha256,
    )
    body = await mailbox(aiohttp_client, user, 502)
    assert isinstance(body, dict)
    assert "self-signed certificate" in body["detail"]
    # Another CA trusted does not make this certificate trusted.
    monkeypatch.delenv("POP3GW_DEFAULT_UPSTREAM_FINGERPRINT_SHA256")
    env(monkeypatch, default_upstream_cafile=str(dovecot.cafile))
    body = await mailbox(aiohttp_client, user, 502)
    assert isinstance(body, dict)
    assert "self-signed certificate" in body["detail"]
    # Without chain verification, a pin of another certificate is refused.
    monkeypatch.delenv("POP3GW_DEFAULT_UPSTREAM_CAFILE")
    env(
        monkeypatch,
        default_upstream_fingerprint_sha256="ab" * 32,
        default_upstream_verify_tls="false",
    )
    body = await mailbox(aiohttp_client, user, 502)
    assert isinstance(body, dict)
    assert "does not match the pinned SHA-256 fingerprint" in body["detail"]
    assert logins(lab_dovecot, user) == 0  # no credential was sent


async def test_configured_upstream_pinned_self_signed_certificate(
    aiohttp_client: ClientFactory, lab_dovecot: Dovecot
) -> None:
    user = lab_dovecot.new_user()
    pin = lab_dovecot.certificate_sha256
    settings = load_settings(
        upstreams=[
            {
                "name": "lab",
                "url": f"pop3s://127.0.0.1:{lab_dovecot.tls_port}",
                "fingerprint_sha256": ":".join(pin[i : i + 2] for i in range(0, 64, 2)),
                "verify_tls": False,
            }
        ],
        mailboxes=[{"id": "lab", "upstream": "lab", "user": user.name, "password": user.password}],
        api_keys=[{"name": "k", "sha256": sha(KEY), "mailboxes": ["lab"]}],
    )
    api = await aiohttp_client(create_app(settings))
    body = await checked(await api.get("/v1/mailboxes/lab", headers=bearer(KEY)), 200)
    assert body["messages"] == 0


def test_default_upstream_tls_settings_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env(monkeypatch, default_upstream="pop3s://pop.example.com", default_upstream_verify_tls="0")
    with pytest.raises(ConfigError, match=r"default_upstream_verify_tls.*fingerprint"):
        load_settings()
    env(monkeypatch, default_upstream_verify_tls="1", default_upstream_fingerprint_sha256="abc")
    with pytest.raises(ConfigError, match=r"default_upstream_fingerprint_sha256.*64 hex"):
        load_settings()
    monkeypatch.delenv("POP3GW_DEFAULT_UPSTREAM_FINGERPRINT_SHA256")
    env(monkeypatch, default_upstream_cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"default_upstream_cafile.*cannot read"):
        load_settings()
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    env(monkeypatch, default_upstream_cafile=str(tmp_path / "empty.pem"))
    with pytest.raises(ConfigError, match=r"default_upstream_cafile.*no PEM certificate"):
        load_settings()
    env(monkeypatch, default_upstream="pop3://127.0.0.1:1110")
    with pytest.raises(ConfigError, match=r"default_upstream_cafile.*plaintext"):
        load_settings()
    monkeypatch.delenv("POP3GW_DEFAULT_UPSTREAM")
    with pytest.raises(
        ConfigError,
        match=r"default_upstream_cafile \(POP3GW_DEFAULT_UPSTREAM_CAFILE\): set without ",
    ):
        load_settings()


def test_configured_upstream_pins_are_checked_at_start() -> None:
    def upstream(**tls: object) -> Settings:
        return load_settings(upstreams=[{"name": "u", "url": "pop3s://pop.example.com", **tls}])

    with pytest.raises(ConfigError, match=r"upstreams\.0\.fingerprint_sha256.*64 hex"):
        upstream(fingerprint_sha256="not-hex")
    with pytest.raises(ConfigError, match=r"upstreams\.0\.cafile.*cannot read"):
        upstream(cafile="/nonexistent/ca.pem")
    settings = upstream(fingerprint_sha256="AB:" * 31 + "AB", verify_tls=False)
    assert settings.upstreams[0].fingerprint_sha256 == "ab" * 32
