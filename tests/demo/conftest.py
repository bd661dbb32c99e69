"""Fixtures for the demo server: a started server, and no errors logged by it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.demo import DemoPOP3Server


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A session handler that fails logs the exception; that fails the test."""
    caplog.set_level(logging.INFO, logger="gateway.demo")
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    errors = [
        r for r in records if r.name.startswith("gateway.demo") and r.levelno >= logging.WARNING
    ]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def server() -> AsyncIterator[DemoPOP3Server]:
    async with DemoPOP3Server() as srv:
        yield srv
