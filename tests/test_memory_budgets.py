"""Memory has a budget: the header summaries held in the process (without Redis, the
in-process header cache) and the kept snapshots and pages are bounded in bytes (not only in
entries), and what expires is dropped on a timer."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.app import create_app
from gateway.keys import SERVICE
from gateway.mail import Address, HeaderSummary, summarize
from gateway.service import Page, Snapshot, Summary
from gateway.service.listing import SnapshotCache, page_weight, snapshot_weight
from gateway.service.summaries import RecentSummaries, summary_weight
from tests.support.api import ClientFactory, basic, checked, settings_for
from tests.support.clock import FakeClock
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server
from tests.support.wait import wait_until

#: A summary of hostile mail, as large as the summary caps allow.
HOSTILE = HeaderSummary(
    subject="s" * 2000,
    to=[Address("N" * 256, "a" * 300 + "@example.com") for _ in range(100)],
    cc=[Address("N" * 256, "c" * 300 + "@example.com") for _ in range(100)],
).to_json()


def hostile_message(n: int) -> bytes:
    """A message whose header summary is as large as the summary caps allow."""
    to = ", ".join(f'"{"N" * 256}" <{"a" * 300}@example.com>' for _ in range(100))
    return f"Subject: {n} {'s' * 2000}\r\nTo: {to}\r\n\r\nbody\r\n".encode()


async def test_without_redis_the_held_summaries_are_bounded_by_the_cache_settings(
    aiohttp_client: ClientFactory,
) -> None:
    """Hostile mail, listed: what the process holds stays within POP3GW_CACHE_MAX_BYTES
    (and POP3GW_CACHE_MAX_ENTRIES)."""
    budget = 1024 * 1024
    box = FakeMailbox([(f"uid-{i:02d}", hostile_message(i)) for i in range(40)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port, cache_max_bytes=budget))
        api = await aiohttp_client(app)
        page = await checked(
            await api.get(
                "/v1/mailboxes/me/messages?limit=40&order=asc", headers=basic("alice", "pw")
            ),
            200,
        )
        assert [m["subject"][:3] for m in page["messages"][:2]] == ["0 s", "1 s"]
        held = app[SERVICE].recent_summaries
        weight = summary_weight(summarize(hostile_message(39)))
        assert weight > 50_000  # a summary of hostile mail weighs what it holds
        assert budget - weight < held.bytes <= budget  # as many as fit
        assert len(held) < 40

    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        app = create_app(settings_for(server.port, cache_max_entries=3))
        api = await aiohttp_client(app)
        await checked(await api.get("/v1/mailboxes/me/messages", headers=basic("alice", "pw")), 200)
        assert len(app[SERVICE].recent_summaries) == 3


def hostile_page(count: int) -> Page:
    headers = HeaderSummary.from_json(HOSTILE)
    items = [Summary(f"u{i}", 100, headers) for i in range(count)]
    return Page(items, count, None, datetime(2026, 1, 1, tzinfo=UTC))


def test_kept_snapshots_and_pages_are_bounded_in_bytes() -> None:
    clock = FakeClock()
    cache = SnapshotCache(key=b"k" * 32, max_age=5, clock=clock, max_bytes=8 * 1024 * 1024)
    page = hostile_page(50)
    assert page_weight(page) > 1024 * 1024
    for n in range(40):
        snap = Snapshot(datetime(2026, 1, 1, tzinfo=UTC), [1], {1: f"u{n}"}, {1: 10})
        view = _store(cache, f"view-{n}", snap)
        cache.remember(view, ("desc", None, 50), page)
        assert cache.bytes <= 8 * 1024 * 1024
    assert cache.live("view-39") is not None  # the most recent are kept
    assert cache.live("view-0") is None
    clock.advance(5)
    assert cache.purge() > 0
    assert cache.bytes == 0


def test_summaries_held_as_objects_are_bounded_in_bytes() -> None:
    recent = RecentSummaries(max_entries=1_000_000, max_bytes=2 * 1024 * 1024)
    hostile = HeaderSummary.from_json(HOSTILE)
    weight = summary_weight(hostile)
    assert weight > 100_000  # a summary of hostile mail weighs what it holds
    for start in range(0, 500, 50):
        recent.put_many("ns", {f"uid-{i:03d}": hostile for i in range(start, start + 50)})
        assert recent.bytes <= 2 * 1024 * 1024
    assert len(recent) == 2 * 1024 * 1024 // weight  # only what fits, the newest
    assert recent.get_many("ns", ["uid-499", "uid-000"]) == {"uid-499": hostile}
    assert recent.get_many("other", ["uid-499"]) == {}  # one mailbox's are not another's
    recent.drop("ns", ["uid-499", "uid-000"])
    assert recent.bytes == len(recent) * weight
    few = RecentSummaries(max_entries=3)
    few.put_many("ns", {f"u{i}": HeaderSummary() for i in range(5)})
    assert list(few.get_many("ns", [f"u{i}" for i in range(5)])) == ["u2", "u3", "u4"]
    nothing = RecentSummaries(max_entries=0)
    nothing.put("ns", "u", HeaderSummary())
    assert len(nothing) == 0


def _store(cache: SnapshotCache, key: str, snap: Snapshot) -> object:
    from gateway.service.listing import _View

    view = _View(key, snap, object(), cache._clock(), weight=snapshot_weight(snap))
    cache._store(key, view)
    return view


async def test_the_app_drops_expired_snapshots_on_its_own(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    clock = FakeClock()
    app = create_app(settings_for(fake_server.port, pool={"snapshot_max_age": 1}), clock=clock)
    api = await aiohttp_client(app)
    await checked(await api.get("/v1/mailboxes/me/messages", headers=basic("alice", "pw")), 200)
    service = app[SERVICE]
    assert service.snapshot_bytes > 0
    clock.advance(2)  # expired: no request will come to meet it
    await wait_until(lambda: service.snapshot_bytes == 0)


async def test_the_app_drops_held_summaries_past_their_ttl_on_its_own(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """Without Redis, summaries are held POP3GW_CACHE_TTL_SECONDS at most: then the timer
    drops them, with no request to meet them."""
    clock = FakeClock()
    app = create_app(
        settings_for(fake_server.port, cache_ttl_seconds=60, pool={"snapshot_max_age": 1}),
        clock=clock,
    )
    api = await aiohttp_client(app)
    await checked(await api.get("/v1/mailboxes/me/messages", headers=basic("alice", "pw")), 200)
    held = app[SERVICE].recent_summaries
    assert len(held) == 2
    clock.advance(59)
    await wait_until(lambda: app[SERVICE].snapshot_bytes == 0)  # a timer round went by
    assert len(held) == 2
    clock.advance(1)
    await wait_until(lambda: len(held) == 0)
    assert held.bytes == 0
