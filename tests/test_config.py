"""Configuration: sources, precedence, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.accounts import Credential
from gateway.app import build_directory
from gateway.config import ConfigError, UpstreamURL, is_loopback, load_settings

DIGEST = "a" * 64


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("POP3GW_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("pop3://127.0.0.1:1110", "127.0.0.1", 1110, "plain"),
        ("pop3s://pop.example.com", "pop.example.com", 995, "tls"),
        ("pop3+starttls://mail.example.com", "mail.example.com", 110, "starttls"),
        ("POP3S://[::1]:9995", "::1", 9995, "tls"),
    ],
)
def test_upstream_urls(url: str, host: str, port: int, tls: str) -> None:
    parsed = UpstreamURL.parse(url)
    assert (parsed.host, parsed.port, parsed.tls) == (host, port, tls)
    assert UpstreamURL.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("imap://x", "scheme"),
        ("pop3s://user:pw@x", "credentials"),
        ("pop3s://x/path", "path"),
        ("pop3s://x?q=1", "path"),
        ("pop3s://", "no host"),
        ("pop3s://x:99999", "port"),
    ],
)
def test_bad_upstream_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UpstreamURL.parse(url)


def test_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.9.9.9")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("pop.example.com")


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pop3gw.toml"
    path.write_text('listen = "127.0.0.1:9000"\ndefault_upstream = "pop3s://pop.example.com"\n')
    monkeypatch.setenv("POP3GW_CONFIG", str(path))
    assert load_settings().listen == "127.0.0.1:9000"
    monkeypatch.setenv("POP3GW_LISTEN", "127.0.0.1:9100")
    settings = load_settings()
    assert settings.listen == "127.0.0.1:9100"
    assert settings.default_upstream == "pop3s://pop.example.com"


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_file_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    data = {
        "upstreams": [
            {"name": "corp", "url": "pop3s://pop.corp.example", "domains": ["corp.example"]}
        ],
        "mailboxes": [
            {"id": "inbox", "upstream": "corp", "user": "svc", "password_env": "INBOX_PW"}
        ],
        "api_keys": [{"name": "svc", "sha256": DIGEST, "mailboxes": ["inbox"]}],
    }
    path = tmp_path / f"config{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    elif suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(
            '[[upstreams]]\nname = "corp"\nurl = "pop3s://pop.corp.example"\n'
            'domains = ["corp.example"]\n'
            '[[mailboxes]]\nid = "inbox"\nupstream = "corp"\nuser = "svc"\n'
            'password_env = "INBOX_PW"\n'
            f'[[api_keys]]\nname = "svc"\nsha256 = "{DIGEST}"\nmailboxes = ["inbox"]\n'
        )
    monkeypatch.setenv("POP3GW_CONFIG", str(path))
    monkeypatch.setenv("INBOX_PW", "s3cret")
    settings = load_settings()
    directory = build_directory(settings)
    account = directory.mailboxes["inbox"]
    assert account.upstream.host == "pop.corp.example"
    assert account.credential.secret() == "s3cret"
    assert directory.upstream_for_user("bob@corp.example") is account.upstream
    assert "s3cret" not in repr(settings)
    assert DIGEST not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"listen": "nope"}, "listen"),
        ({"default_upstream": "http://x"}, "default_upstream"),
        ({"default_upstream": "pop3://mail.example.com"}, "default_upstream"),
        (
            {"upstreams": [{"name": "x", "url": "pop3://10.1.2.3"}]},
            "upstreams.0.url",
        ),
        (
            {"upstreams": [{"name": "x", "url": "pop3s://a", "verify_tls": False}]},
            "upstreams.0.verify_tls",
        ),
        (
            {"mailboxes": [{"id": "b", "upstream": "nowhere", "user": "u", "password": "p"}]},
            "mailboxes.0.upstream",
        ),
        (
            {"mailboxes": [{"id": "b", "upstream": "pop3s://a", "user": "u"}]},
            "mailboxes.0",
        ),
        (
            {
                "mailboxes": [
                    {
                        "id": "b",
                        "upstream": "pop3s://a",
                        "user": "u",
                        "auth": "xoauth2",
                        "password": "p",
                    }
                ]
            },
            "mailboxes.0",
        ),
        (
            {
                "mailboxes": [
                    {"id": "b", "upstream": "pop3s://a", "user": "u", "password_env": "NOPE_X"}
                ]
            },
            "mailboxes.0.password_env",
        ),
        (
            {"mailboxes": [{"id": "me", "upstream": "pop3s://a", "user": "u", "password": "p"}]},
            "mailboxes.0.id",
        ),
        (
            {
                "mailboxes": [
                    {"id": "b", "upstream": "pop3s://a", "user": "u\r\nx", "password": "p"}
                ]
            },
            "mailboxes.0.user",
        ),
        ({"api_keys": [{"name": "k", "sha256": "short", "mailboxes": ["*"]}]}, "api_keys.0.sha256"),
        (
            {"api_keys": [{"name": "k", "sha256": DIGEST, "mailboxes": ["ghost"]}]},
            "api_keys.0.mailboxes",
        ),
        ({"redis_url": "redis://127.0.0.1:6379/0"}, "cache_secret"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_errors_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert field in str(caught.value)


def test_bad_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POP3GW_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    monkeypatch.setenv("POP3GW_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="not valid"):
        load_settings()
    odd = tmp_path / "config.ini"
    odd.write_text("[x]")
    monkeypatch.setenv("POP3GW_CONFIG", str(odd))
    with pytest.raises(ConfigError, match="must end in"):
        load_settings()
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]")
    monkeypatch.setenv("POP3GW_CONFIG", str(listy))
    with pytest.raises(ConfigError, match="mapping"):
        load_settings()


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    credential = Credential("xoauth2", path=token)
    assert credential.secret() == "first-token"
    token.write_text("second-token-longer\n")
    assert credential.secret() == "second-token-longer"
    assert "token" not in repr(credential).replace("xoauth2", "")


def test_presets_route_passthrough_users() -> None:
    directory = build_directory(load_settings())
    gmail = directory.upstream_for_user("alice@gmail.com")
    assert gmail is not None
    assert (gmail.host, gmail.port, gmail.read_only_sessions) == ("pop.gmail.com", 995, True)
    assert directory.upstream_for_user("bob@126.com").host == "pop.126.com"  # type: ignore[union-attr]
    assert directory.upstream_for_user("nobody-without-domain") is None
    no_presets = build_directory(load_settings(presets=False))
    assert no_presets.upstream_for_user("alice@gmail.com") is None
