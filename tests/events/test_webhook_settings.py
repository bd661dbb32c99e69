"""Webhook settings are checked at start (naming the field, never the secret), and the
address policy refuses every non-public address unless the operator allows its network."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings
from gateway.events import AddressPolicy
from tests.events.receiver import new_secret
from tests.support.api import settings_for


def settings(**hook: object) -> None:
    base = settings_for(1110, user="u", password="p").model_dump()
    mailboxes = base["mailboxes"]
    for box in mailboxes:
        box["password"] = "p"
    mailboxes[0]["watch"] = True
    load_settings(
        mailboxes=mailboxes,
        webhooks=[
            {"name": "crm", "url": "https://hooks.example.com/in", "mailboxes": ["box"], **hook}
        ],
    )


def test_a_valid_webhook_loads() -> None:
    settings(secrets=[new_secret(), new_secret()])


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ({"secrets": []}, "webhooks.0: needs a secret"),
        ({"secrets": ["whsec_not base64!"]}, "webhooks.0: secret 1 is not whsec_ followed by"),
        ({"secrets": ["whsec_c2hvcnQ="]}, "webhooks.0: secret 1 must decode to 24 to 64 bytes"),
        ({"secrets_env": ["POP3GW_TEST_NO_SUCH_SECRET"]}, "POP3GW_TEST_NO_SUCH_SECRET is not set"),
        ({"mailboxes": ["other"]}, "webhooks.0.mailboxes: 'other' is not a watched mailbox"),
        ({"url": "ftp://hooks.example.com/"}, "must be an http:// or https:// URL"),
        ({"url": "https://user:pw@hooks.example.com/"}, "must not carry credentials"),
    ],
)
def test_a_webhook_that_cannot_work_stops_the_start(hook: dict[str, object], problem: str) -> None:
    secret = "whsec_c2hvcnQ="
    with pytest.raises(ConfigError) as info:
        settings(**{"secrets": [new_secret()], **hook})
    assert problem in str(info.value)
    assert "c2hvcnQ" not in str(info.value)  # which secret, never what it is
    assert secret not in str(info.value)


def test_secrets_come_from_the_environment_and_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "secrets"
    path.write_text(new_secret() + "\n\n" + new_secret() + "\n")
    monkeypatch.setenv("POP3GW_TEST_HOOK_SECRET", new_secret())
    settings(secrets_env=["POP3GW_TEST_HOOK_SECRET"], secrets_file=str(path))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        # IPv6 forms that carry a non-public IPv4 address: NAT64 (to 169.254.169.254, to
        # 10.0.0.1), IPv4-translated, 6to4, IPv4-compatible; and site-local
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::10.0.0.1",
        "::ffff:0:127.0.0.1",
        "2002:a9fe:a9fe::1",
        "::127.0.0.1",
        "fec0::1",
        "not an address",
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    assert not AddressPolicy().permits(address)


def test_public_addresses_pass_and_the_operator_decides_the_rest() -> None:
    assert AddressPolicy().permits("93.184.215.14")
    assert AddressPolicy().permits("2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    # a public IPv4 receiver through NAT64 or 6to4 is public
    assert AddressPolicy().permits("64:ff9b::93.184.215.14")
    assert AddressPolicy().permits("2002:5db8:d70e::1")
    allowed = AddressPolicy(allow=["127.0.0.0/8", "10.0.0.0/8"])
    assert allowed.permits("127.0.0.1")
    assert allowed.permits("::ffff:10.2.3.4")
    assert allowed.permits("64:ff9b::10.2.3.4")
    assert not allowed.permits("169.254.169.254")
    denied = AddressPolicy(allow=["10.0.0.0/8"], deny=["93.184.0.0/16", "10.9.0.0/16"])
    assert not denied.permits("93.184.215.14")
    assert not denied.permits("10.9.1.1")
    assert not denied.permits("64:ff9b::10.9.1.1")
