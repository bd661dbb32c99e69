"""Parsing in worker processes (gateway.service.parsing, gateway.mail.worker): the same
results as in the event loop, and every way a parse can go wrong stops at its worker."""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest

from gateway.mail import find_attachment, parse_message
from gateway.mail import worker as wire
from gateway.service import MessageParser, ParseBusyError, ParsedCache, ParseFailedError
from gateway.service.parsing import ParseWorkers
from tests.support.clock import FakeClock
from tests.support.corpus import generate_corpus, large_message
from tests.support.slow_parser import command
from tests.support.wait import wait_until

SMALL = b"From: A <a@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def workers() -> ParseWorkers:
    pool = ParseWorkers(2, timeout=30, queue_timeout=30, memory_limit=1024**3)
    yield pool
    await pool.close()


async def test_workers_answer_what_the_parser_answers_in_process(workers: ParseWorkers) -> None:
    corpus = generate_corpus()
    assert len(corpus) > 20
    for item in corpus:
        assert await workers.run(wire.OP_PARSE, item.raw) == parse_message(item.raw), item.name
        for info in parse_message(item.raw).attachments:
            found = await workers.run(wire.OP_ATTACHMENT, item.raw, info.id)
            assert found == find_attachment(item.raw, info.id)
    assert await workers.run(wire.OP_ATTACHMENT, SMALL, "7") is None
    assert workers.killed == 0


async def test_a_parse_past_its_time_limit_kills_its_worker_and_the_next_job_gets_a_new_one() -> (
    None
):
    pool = ParseWorkers(1, timeout=0.3, queue_timeout=5, command=command("stall"))
    try:
        with pytest.raises(ParseFailedError) as failed:
            await pool.run(wire.OP_PARSE, SMALL)
        assert failed.value.cause == "timeout"
        assert "0.3 s" in str(failed.value)
        assert pool.killed == 1
        assert pool.pids == []
        task = asyncio.ensure_future(pool.run(wire.OP_PARSE, SMALL))
        await wait_until(lambda: pool.pids != [])
        first = pool.pids[0]
        with pytest.raises(ParseFailedError):
            await task
        assert pool.killed == 2
        await wait_until(lambda: not alive(first))
    finally:
        await pool.close()


async def test_a_job_nobody_waits_for_any_more_is_stopped_with_its_worker() -> None:
    pool = ParseWorkers(1, timeout=60, queue_timeout=5, command=command("stall"))
    try:
        task = asyncio.ensure_future(pool.run(wire.OP_PARSE, SMALL))
        await wait_until(lambda: pool.jobs == 1 and pool.pids != [])
        pid = pool.pids[0]
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.killed == 1
        await wait_until(lambda: not alive(pid), timeout=5)
    finally:
        await pool.close()


@pytest.mark.parametrize(("mode", "cause"), [("exit", "crash"), ("huge", "answer")])
async def test_a_worker_that_dies_or_answers_too_much_is_a_parse_failure(
    mode: str, cause: str
) -> None:
    pool = ParseWorkers(1, timeout=10, queue_timeout=5, command=command(mode))
    try:
        with pytest.raises(ParseFailedError) as failed:
            await pool.run(wire.OP_PARSE, SMALL)
        assert failed.value.cause == cause
        assert pool.killed == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("kind", ["garbage", "foreign"])
async def test_a_worker_that_answers_no_parse_result_is_a_parse_failure_and_is_replaced(
    kind: str,
) -> None:
    pool = ParseWorkers(1, timeout=10, queue_timeout=5, command=command(f"lie:{kind}"))
    try:
        await pool.start()
        [liar] = pool.pids
        with pytest.raises(ParseFailedError) as failed:
            await pool.run(wire.OP_PARSE, SMALL)
        assert failed.value.cause == "crash"
        assert "not a parse result" in str(failed.value)
        # the worker that lied gets no other job
        assert pool.killed == 1
        await wait_until(lambda: not alive(liar))
    finally:
        await pool.close()


async def test_an_error_answer_shows_a_word_never_what_the_worker_wrote() -> None:
    pool = ParseWorkers(1, timeout=10, queue_timeout=5, command=command("lie:error"))
    try:
        with pytest.raises(ParseFailedError) as failed:
            await pool.run(wire.OP_PARSE, SMALL)
        assert str(failed.value) == "the parser stopped on this message (error)"
    finally:
        await pool.close()


async def test_a_message_that_needs_more_memory_than_allowed_ends_in_its_worker_only() -> None:
    pool = ParseWorkers(1, timeout=30, queue_timeout=5, memory_limit=64 * 1024 * 1024)
    try:
        with pytest.raises(ParseFailedError) as failed:
            await pool.run(wire.OP_PARSE, large_message(40 * 1024 * 1024))
        assert failed.value.cause == "crash"
        assert "MemoryError" in str(failed.value)
        # the worker answered (it survived its MemoryError): the next job is served
        parsed = await pool.run(wire.OP_PARSE, SMALL)
        assert parsed == parse_message(SMALL)
    finally:
        await pool.close()


async def test_when_every_worker_stays_busy_a_job_is_refused_after_the_queue_timeout() -> None:
    pool = ParseWorkers(1, timeout=60, queue_timeout=0.2, command=command("stall"))
    try:
        first = asyncio.ensure_future(pool.run(wire.OP_PARSE, SMALL))
        await wait_until(lambda: pool.jobs == 1)
        with pytest.raises(ParseBusyError) as busy:
            await pool.run(wire.OP_PARSE, SMALL)
        assert "0.2 s" in str(busy.value)
        assert pool.jobs == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await pool.close()


async def test_a_worker_answer_is_read_only_as_a_parse_result() -> None:
    class Sneaky:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="not a parse result"):
        wire.loads(pickle.dumps(Sneaky()))
    assert wire.loads(pickle.dumps(parse_message(SMALL))) == parse_message(SMALL)


async def test_concurrent_parses_of_one_message_share_one_job() -> None:
    pool = ParseWorkers(2, timeout=30, queue_timeout=5, command=command("delay:0.3"))
    parser = MessageParser(pool, ParsedCache(1024 * 1024, 60))
    key = ("ns", "uid-1")
    try:
        results = await asyncio.gather(*(parser.parse(key, SMALL) for _ in range(4)))
        assert results == [parse_message(SMALL)] * 4
        assert pool.jobs == 1
        # then it is cached: no job at all
        assert parser.cached(key) == parse_message(SMALL)
        assert await parser.join(key) is None  # nothing under way
    finally:
        await pool.close()


async def test_a_shared_parse_goes_on_while_one_waiter_is_left() -> None:
    pool = ParseWorkers(1, timeout=30, queue_timeout=5, command=command("delay:0.5"))
    parser = MessageParser(pool, ParsedCache(1024 * 1024, 60))
    key = ("ns", "uid-1")
    try:
        gone = asyncio.ensure_future(parser.parse(key, SMALL))
        stays = asyncio.ensure_future(parser.parse(key, SMALL))
        await wait_until(lambda: pool.jobs == 1)
        gone.cancel()
        assert await stays == parse_message(SMALL)
        assert pool.killed == 0
        # when every waiter goes, the work is stopped
        last = asyncio.ensure_future(parser.parse(("ns", "uid-2"), SMALL))
        await wait_until(lambda: pool.jobs == 2)
        last.cancel()
        await wait_until(lambda: pool.killed == 1)
        assert parser.cached(("ns", "uid-2")) is None
        assert not parser.in_flight(("ns", "uid-2"))
    finally:
        await pool.close()


async def test_an_idle_worker_that_died_is_replaced_before_a_job_reaches_it(
    workers: ParseWorkers,
) -> None:
    await workers.start()
    for pid in workers.pids:
        os.kill(pid, 9)  # what the OOM killer or an operator may do
    await wait_until(lambda: workers.pids == [])
    assert await workers.run(wire.OP_PARSE, SMALL) == parse_message(SMALL)
    assert workers.killed == 2


async def test_a_parse_joined_as_it_is_being_cancelled_still_answers() -> None:
    """The last waiter of a parse leaves and, in the same turn of the loop, another
    request asks for the same message: it must get it, not the cancellation."""
    pool = ParseWorkers(1, timeout=30, queue_timeout=5, command=command("delay:0.2"))
    parser = MessageParser(pool, ParsedCache(1024 * 1024, 60))
    key = ("ns", "uid-1")
    try:
        first = asyncio.ensure_future(parser.parse(key, SMALL))
        await wait_until(lambda: pool.jobs == 1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not parser.in_flight(key)  # the doomed parse cannot be joined
        assert await parser.join(key) is None
        assert await parser.parse(key, SMALL) == parse_message(SMALL)
    finally:
        await pool.close()


def test_the_parsed_cache_is_bounded_in_bytes_and_age() -> None:
    clock = FakeClock()
    cache = ParsedCache(1000, 60, clock=clock)
    parsed = parse_message(SMALL)
    for i in range(5):
        cache.put(("ns", f"u{i}"), parsed, 300)
    assert len(cache) == 3
    assert cache.bytes == 900
    assert cache.get(("ns", "u0")) is None  # the oldest went first
    assert cache.get(("ns", "u2")) == parsed  # now the most recently used
    cache.put(("ns", "u5"), parsed, 300)
    assert cache.get(("ns", "u3")) is None
    assert cache.get(("ns", "u2")) == parsed
    cache.put(("ns", "big"), parsed, 1001)  # never kept: larger than the whole budget
    assert cache.get(("ns", "big")) is None
    clock.advance(61)
    cache.purge()
    assert len(cache) == 0
    assert cache.bytes == 0
