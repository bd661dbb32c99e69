"""The delivery loop's own wake-ups (``Deliverer.run``) on a clock that stands still: an
idle pair is looked at again when its mailbox gets events, whichever replica's watcher
recorded them (a shared store announces them), not on a short timer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from gateway.events import KINDS, Deliverer, Endpoint, EventLogUnavailableError, Pending
from tests.support.clock import FakeClock
from tests.support.wait import wait_until


class StubStore:
    """A shared store whose queues are always empty; it announces what the test says."""

    durable = True

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.announcements: list[list[str] | BaseException] = []

    async def setup(self, pairs: Any) -> None:
        return None

    async def hold(self, endpoint: str, mailbox: str) -> bool:
        return True

    async def release_all(self) -> None:
        return None

    async def changed(self) -> list[str]:
        if not self.announcements:
            return []
        next_ = self.announcements.pop(0)
        if isinstance(next_, BaseException):
            raise next_
        return next_

    async def head(self, endpoint: str, mailbox: str) -> Pending | None:
        self.heads.append(mailbox)
        return None

    async def dead_letters(self, endpoint: str, limit: int) -> tuple[list[Any], int]:
        return [], 0


class StubSender:
    async def send(self, *args: Any) -> Any:
        raise AssertionError("nothing to send")

    async def close(self) -> None:
        return None


async def test_an_idle_pair_is_woken_by_an_announcement_of_new_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = StubStore()
    endpoint = Endpoint("crm", "https://example.com/hook", (b"k",), frozenset({"*"}), KINDS)
    deliverer = Deliverer(
        store,  # type: ignore[arg-type]
        StubSender(),
        [endpoint],
        ["a", "b"],
        clock=FakeClock(),  # stands still: no pair is due again by time alone
    )
    with caplog.at_level(logging.ERROR, logger="gateway.events.delivery"):
        task = asyncio.get_running_loop().create_task(deliverer.run())
        try:
            await wait_until(lambda: sorted(store.heads) == ["a", "b"])
            # another replica's watcher recorded events of b; the first looks fail
            store.announcements = [EventLogUnavailableError("Redis"), RuntimeError("a bug"), ["b"]]
            await wait_until(lambda: len(store.heads) == 3)
            assert store.heads[2:] == ["b"]
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "reading the announcements of new events failed" in caplog.text
