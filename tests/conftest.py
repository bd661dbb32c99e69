"""Shared fixtures; their logic lives in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support.dovecot import Dovecot, DovecotUser, require_dovecot

# One Hypothesis profile for the whole suite, registered once: the same inputs on every run
# (a red test is red again on the next run, on any machine), no example database left in
# the work tree, no deadline (the machines are shared and noisy: time is never what a
# property checks). Tests set only their own max_examples; the fuzz suite's long runs
# (make fuzz) use tests/fuzz/profiles.py on top of this.
settings.register_profile(
    "pop3gw",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("pop3gw")


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
