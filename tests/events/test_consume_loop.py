"""Consume mode without a mail server: the sweeper's own loop (``Consumer.run``) and the
bounds of the in-process consume store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import pytest

from gateway.events import (
    MESSAGE_NEW,
    Consumer,
    Cursor,
    Event,
    EventLogUnavailableError,
    MemoryConsumeStore,
)
from tests.support.wait import wait_until


class StubStore(MemoryConsumeStore):
    """The in-process store, with a failure of the test's choosing per mailbox."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: dict[str, BaseException] = {}
        self.looked: list[str] = []

    async def due(self, mailbox: str, limit: int) -> list[str]:
        self.looked.append(mailbox)
        failure = self.fail.get(mailbox)
        if failure is not None:
            raise failure
        return await super().due(mailbox, limit)


def new(mailbox: str, uid: str) -> Event:
    return Event(f"ev-{uid}", MESSAGE_NEW, mailbox, Cursor(1, 0), 0.0, {"uid": uid})


async def test_the_sweeper_sweeps_when_woken_and_outlives_a_failing_mailbox(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = StubStore()
    store.fail = {"a": EventLogUnavailableError("Redis"), "b": RuntimeError("a bug")}
    deleted: list[tuple[str, list[str]]] = []

    async def delete(mailbox: str, uids: Sequence[str]) -> list[str]:
        deleted.append((mailbox, list(uids)))
        return list(uids)

    subscribed = frozenset({"crm"})
    consumer = Consumer(store, delete, {"a": subscribed, "b": subscribed, "c": subscribed})
    with caplog.at_level(logging.ERROR, logger="gateway.events.consume"):
        task = asyncio.get_running_loop().create_task(consumer.run())
        try:
            # the first round looks at every mailbox at once, past the two that fail
            await wait_until(lambda: store.looked == ["a", "b", "c"])
            await consumer.delivered("crm", new("c", "uid-1"))  # acknowledged: wakes it
            await wait_until(lambda: deleted == [("c", ["uid-1"])])
            assert store.looked[3:] == ["a", "b", "c"]
            assert await store.due("c", 10) == []  # settled
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "consumed mailbox b: sweep crashed" in caplog.text
    assert "consumed mailbox a" not in caplog.text  # Redis away: the next sweep, quietly


async def test_the_memory_store_keeps_at_most_max_due_of_each_kind() -> None:
    store = MemoryConsumeStore(max_due=2)
    both = frozenset({"crm", "audit"})
    # partial acknowledgements: the oldest goes past the bound
    for uid in ("uid-1", "uid-2", "uid-3"):
        assert await store.acknowledge("box", uid, "crm", both) is False
    assert len(store._acked) == 2
    # uid-1's first acknowledgement was dropped: audit's alone does not make it due
    assert await store.acknowledge("box", "uid-1", "audit", both) is False
    assert await store.acknowledge("box", "uid-3", "audit", both) is True
    assert await store.due("box", 10) == ["uid-3"]
    # due deletions: past the bound a message stays on the server (the safe side)
    one = frozenset({"crm"})
    for uid in ("uid-4", "uid-5"):
        assert await store.acknowledge("box", uid, "crm", one) is True
    assert await store.due("box", 10) == ["uid-3", "uid-4"]
    assert len(store._acked) <= 2
