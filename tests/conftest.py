"""Shared fixtures; their logic lives in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dovecot import Dovecot, DovecotUser, require_dovecot


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the whole run (plain POP3 + STLS, and POP3S), stopped at the end."""
    require_dovecot()
    with Dovecot() as server:
        yield server


@pytest.fixture
def dovecot_user(dovecot: Dovecot) -> DovecotUser:
    """A fresh mailbox with a random password on the session's Dovecot."""
    return dovecot.new_user()
