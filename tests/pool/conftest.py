"""Fixtures of the session pool tests: an injected clock, an event log, and pools that are
closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.pop3 import PoolLimits, SessionPool
from tests.pool.helpers import Events, MakePool
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def make_pool(clock: FakeClock, events: Events) -> AsyncIterator[MakePool]:
    """``make_pool(**limits)``: a pool on the injected clock, closed at teardown."""
    pools: list[SessionPool] = []

    def make(**limits: Any) -> SessionPool:
        pool = SessionPool(PoolLimits(**limits), clock=clock, on_event=events)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close(timeout=2.0)
