"""OAuth settings are checked at start and by ``pop3gw check-config``: every problem names
its setting; nothing secret is printed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.__main__ import main
from gateway.config import ConfigError, load_settings


def _box(**oauth: Any) -> dict[str, Any]:
    return {
        "id": "gmail",
        "upstream": "pop3s://pop.gmail.com:995",
        "user": "support@example.com",
        "auth": "oauth2",
        "oauth": {"provider": "google", "client_id": "cid", **oauth},
    }


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("POP3GW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CS", "client-secret-value")
    monkeypatch.setenv("RT", "refresh-token-value")


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(
    ("mailbox", "expected"),
    [
        (_box(client_secret_env="CS"), "mailboxes.0.oauth: needs exactly one of refresh_token_env"),
        (
            _box(client_secret_env="NOPE", refresh_token_env="RT"),
            "client_secret_env: NOPE is not set",
        ),
        (
            _box(refresh_token_env="RT", refresh_token_file="/nonexistent/rt"),
            "needs exactly one of refresh_token_env, refresh_token_file",
        ),
        (_box(provider="generic", refresh_token_env="RT"), "token_url: required with provider"),
        (
            _box(refresh_token_env="RT", token_url="http://auth.example.com/token"),
            "token_url: must be https:// (plain http:// only to a loopback host)",
        ),
        (
            _box(client_secret_env="CS", client_credentials=True),
            "Google has no app-only access",
        ),
        (
            _box(provider="microsoft", client_secret_env="CS", client_credentials=True),
            "tenant: client_credentials needs your tenant's id or domain",
        ),
        (
            _box(refresh_token_env="RT", refresh_token_store="/nonexistent/dir/store.json"),
            "refresh_token_store: /nonexistent/dir is not a directory",
        ),
        (
            {**_box(refresh_token_env="RT"), "auth": "pass", "password": "x"},
            "mailboxes.0.oauth: set only with auth = 'oauth2'",
        ),
        (
            {k: v for k, v in _box().items() if k != "oauth"},
            "mailboxes.0.oauth: required with auth = 'oauth2'",
        ),
        (
            {**_box(refresh_token_env="RT"), "password_env": "CS"},
            "auth 'oauth2' takes its secrets from oauth (not password_env)",
        ),
    ],
)
def test_oauth_settings_that_cannot_work_stop_the_start(
    mailbox: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(mailboxes=[mailbox])
    assert expected in str(caught.value)


@pytest.mark.usefixtures("secrets_env")
def test_provider_defaults() -> None:
    settings = load_settings(
        mailboxes=[
            _box(refresh_token_env="RT"),
            {
                **_box(client_secret_env="CS", client_credentials=True),
                "id": "m365",
                "oauth": {
                    "provider": "Microsoft",
                    "client_id": "cid",
                    "client_secret_env": "CS",
                    "client_credentials": True,
                    "tenant": "contoso.onmicrosoft.com",
                },
            },
        ]
    )
    google, microsoft = (box.oauth for box in settings.mailboxes)
    assert google is not None
    assert microsoft is not None
    assert google.resolved_token_url() == "https://oauth2.googleapis.com/token"
    assert google.resolved_scope() is None
    assert microsoft.resolved_token_url() == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert microsoft.resolved_scope() == "https://outlook.office365.com/.default"


@pytest.mark.usefixtures("secrets_env")
def test_check_config_validates_oauth_and_prints_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refresh = tmp_path / "rt"
    refresh.write_text("refresh-token-in-a-file\n")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "mailboxes": [
                    _box(
                        client_secret_env="CS",
                        refresh_token_file=str(refresh),
                        refresh_token_store=str(tmp_path / "store.json"),
                    )
                ]
            }
        )
    )
    monkeypatch.setenv("POP3GW_CONFIG", str(config))
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert shown["mailboxes"][0]["oauth"]["provider"] == "google"
    for secret in ("client-secret-value", "refresh-token-value", "refresh-token-in-a-file"):
        assert secret not in out + err

    monkeypatch.delenv("CS")
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert "mailboxes.0.oauth.client_secret_env: CS is not set" in err
