"""Shared fixtures; their logic lives in tests/support/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from gateway.app import create_app
from tests.support.api import Client, ClientFactory, settings_for
from tests.support.dovecot import Dovecot, DovecotUser, require_dovecot
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

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


@pytest.fixture(scope="session")
def lab_dovecot() -> Iterator[Dovecot]:
    """A second Dovecot, with the self-signed certificate (for mail.lab.example) a lab
    server often has."""
    require_dovecot()
    with Dovecot(certificate="self-signed") as server:
        yield server


@pytest.fixture
def dovecot_user(dovecot: Dovecot) -> DovecotUser:
    """A fresh mailbox with a random password on the session's Dovecot."""
    return dovecot.new_user()


@pytest.fixture
async def fake_server() -> AsyncIterator[FakePOP3Server]:
    """A scriptable POP3 server with two messages for user alice (password pw)."""
    box = FakeMailbox(
        [
            ("uid-1", b"Subject: one\r\nFrom: A <a@example.com>\r\n\r\nfirst\r\n"),
            ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
        ]
    )
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        yield server


@pytest.fixture
async def fake_api(aiohttp_client: ClientFactory, fake_server: FakePOP3Server) -> Client:
    """The gateway in front of ``fake_server``, with short timeouts (faults answer fast)."""
    settings = settings_for(
        fake_server.port,
        user="alice",
        password="pw",
        timeouts={"connect": 2, "tls": 2, "command": 0.5, "idle": 0.5},
        pool={"retry_budget": 0.3},
    )
    return await aiohttp_client(create_app(settings))
