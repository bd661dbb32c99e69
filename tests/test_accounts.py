"""Keyed digests of accounts: the standard HMAC-SHA256, whatever the key length."""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounts import Account, Credential, RecentAccounts, Upstream, hmac_sha256
from gateway.pop3 import TLSConfig, TLSMode


@settings(max_examples=300)
@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_hmac_sha256_is_the_standard_hmac(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")
    # The prepared states are copied per call, never consumed.
    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


def _account(user: str, password: str) -> Account:
    upstream = Upstream(
        name="default",
        host="127.0.0.1",
        port=110,
        tls=TLSMode.PLAIN,
        tls_config=TLSConfig(),
    )
    return Account("me", upstream, user, Credential("pass", value=password), passthrough=True)


def test_recent_accounts_are_found_by_what_was_presented_only() -> None:
    now = [0.0]
    recent = RecentAccounts(size=3, ttl=10.0, clock=lambda: now[0])
    alice = _account("alice", "secret-pw")
    recent.put("Basic YWxpY2U6c2VjcmV0LXB3", alice)
    assert recent.get("Basic YWxpY2U6c2VjcmV0LXB3") is alice
    assert recent.get("Basic YWxpY2U6b3RoZXI=") is None  # another password, another entry
    # What was presented is not kept, only a keyed digest of it.
    assert all(isinstance(k, bytes) and len(k) == 32 for k in recent._items)
    assert b"YWxpY2U6c2VjcmV0LXB3" not in b"".join(recent._items)
    now[0] = 10.0
    assert recent.get("Basic YWxpY2U6c2VjcmV0LXB3") is None  # expired
    assert len(recent) == 0


def test_recent_accounts_are_bounded() -> None:
    recent = RecentAccounts(size=3, ttl=60.0)
    accounts = [_account(f"u{i}", "pw") for i in range(5)]
    for i, account in enumerate(accounts):
        recent.put(f"Basic {i}", account)
    assert len(recent) == 3
    assert recent.get("Basic 0") is None
    assert recent.get("Basic 1") is None
    assert recent.get("Basic 4") is accounts[4]


def _configured(credential: Credential) -> Account:
    return Account(
        mailbox_id="box",
        upstream=Upstream("u", "pop.example", 995, TLSMode.IMPLICIT),
        user="alice",
        credential=credential,
        passthrough=False,
    )


def test_a_digest_follows_a_secret_that_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pool key of an account is remembered only for a secret given as a value (it
    never changes); one from the environment or a file is read and digested every time,
    so a changed password never finds the sessions of the old one."""
    key = b"k" * 32
    fixed = _configured(Credential("pass", value="one"))
    assert (
        fixed.digest(key)
        == fixed.digest(key)
        == _configured(Credential("pass", value="one")).digest(key)
    )
    assert fixed.digest(b"other key") != fixed.digest(key)
    monkeypatch.setenv("POP3GW_TEST_SECRET", "one")
    from_env = _configured(Credential("pass", env="POP3GW_TEST_SECRET"))
    before = from_env.digest(key)
    assert before == fixed.digest(key)
    monkeypatch.setenv("POP3GW_TEST_SECRET", "two")
    assert from_env.digest(key) != before
    path = tmp_path / "secret"
    path.write_text("one\n")
    from_file = _configured(Credential("pass", path=path))
    assert from_file.digest(key) == before
    path.write_text("three\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new modification time
    assert from_file.digest(key) != before
