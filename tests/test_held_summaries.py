"""The summaries a process holds as objects (``RecentSummaries``): without Redis they are the
in-process header cache, so they keep what the header cache contract promised: any unique-id
RFC 1939 allows, namespaces apart, overwrite, delete, a TTL and hit/miss counts."""

from __future__ import annotations

from gateway.mail import Address, HeaderSummary
from gateway.service.summaries import RecentSummaries, summary_weight
from tests.cache.test_contract import NS, ODD_UIDS, OTHER_NS
from tests.support.clock import FakeClock


def summary(n: int) -> HeaderSummary:
    return HeaderSummary(
        subject=f"Hello {n} – ünïcødé ✉",
        from_=Address(None, f"a{n}@example.org"),
        date="2024-02-29T12:00:00+00:00",
        size=1000 + n,
    )


def test_round_trip_with_odd_uids() -> None:
    held = RecentSummaries()
    summaries = {uid: summary(i) for i, uid in enumerate(ODD_UIDS)}
    held.put_many(NS, summaries)
    got = held.get_many(NS, ODD_UIDS)
    assert got == summaries
    assert all(got[uid] is summaries[uid] for uid in ODD_UIDS)  # the objects themselves
    for uid in ODD_UIDS:  # no uid answers for another
        assert held.get_many(NS, [uid]) == {uid: summaries[uid]}


def test_missing_uids_duplicates_and_empty_inputs() -> None:
    held = RecentSummaries()
    held.put_many(NS, {"a": summary(1), "b": summary(2)})
    assert held.get_many(NS, (u for u in ["a", "b", "a", "c", "*", "a*"])) == {
        "a": summary(1),
        "b": summary(2),
    }
    assert held.get_many(NS, []) == {}
    held.put_many(NS, {})
    held.drop(NS, [])
    assert len(held) == 2


def test_overwrite_delete_and_namespaces() -> None:
    held = RecentSummaries()
    held.put(NS, "a", summary(1))
    held.put(NS, "a", summary(2))
    assert held.get_many(NS, ["a"]) == {"a": summary(2)}
    assert len(held) == 1
    assert held.bytes == summary_weight(summary(2))
    held.put(NS, "x", summary(1))
    held.put(OTHER_NS, "x", summary(2))
    assert held.get_many(NS, ["x", f"{OTHER_NS}:x"]) == {"x": summary(1)}
    held.drop(OTHER_NS, ["x", "never-put"])
    assert held.get_many(NS, ["x"]) == {"x": summary(1)}
    assert held.get_many(OTHER_NS, ["x"]) == {}
    # a namespace that is a prefix of another does not see into it
    assert held.get_many(NS[:-1], ["x"]) == {}


def test_a_large_batch() -> None:
    held = RecentSummaries(max_entries=5000)
    summaries = {f"uid-{i:05d}": HeaderSummary(size=i) for i in range(2500)}
    held.put_many(NS, summaries)
    assert held.get_many(NS, [*summaries, "absent"]) == summaries


def test_lookups_are_counted_as_hits_and_misses() -> None:
    events: list[str] = []
    held = RecentSummaries(on_event=events.append)
    held.put_many(NS, {"a": summary(1), "b": summary(2)})
    held.get_many(NS, ["a", "c", "b"])
    assert events == ["hit", "miss", "hit"]
    assert held.held(NS, ["a", "c", "b"]) == {"a", "b"}  # looking is no lookup
    held.drop(NS, ["a"])
    assert events == ["hit", "miss", "hit"]
    held.get_many(NS, ["a"])
    assert events[-1] == "miss"


def test_a_summary_is_kept_at_most_ttl_seconds() -> None:
    clock = FakeClock()
    events: list[str] = []
    held = RecentSummaries(ttl=60, clock=clock, on_event=events.append)
    held.put_many(NS, {"a": summary(1), "b": summary(2)})
    clock.advance(30)
    held.put(NS, "c", summary(3))
    assert held.get_many(NS, ["a"]) == {"a": summary(1)}  # a hit keeps no one longer
    clock.advance(30)  # a and b: put 60 s ago
    assert held.held(NS, ["a", "b", "c"]) == {"c"}
    assert held.get_many(NS, ["a", "c"]) == {"c": summary(3)}  # a expired: met, dropped
    assert events == ["hit", "miss", "hit"]
    assert len(held) == 2  # b: expired, not met yet
    assert held.purge_expired() == 1
    assert len(held) == 1
    assert held.bytes == summary_weight(summary(3))
    held.put(NS, "c", summary(4))  # put again: 60 s from now
    clock.advance(59)
    assert held.purge_expired() == 0
    assert held.get_many(NS, ["c"]) == {"c": summary(4)}
    clock.advance(1)
    assert held.purge_expired() == 1
    assert (len(held), held.bytes) == (0, 0)


def test_without_a_ttl_nothing_expires() -> None:
    clock = FakeClock()
    held = RecentSummaries(clock=clock)
    held.put(NS, "a", summary(1))
    clock.advance(10 * 365 * 24 * 3600)
    assert held.purge_expired() == 0
    assert held.get_many(NS, ["a"]) == {"a": summary(1)}


def test_a_summary_heavier_than_the_budget_is_not_kept() -> None:
    """(It does not push out everything else on its way through, either.)"""
    big = HeaderSummary(subject="s" * 2000)
    held = RecentSummaries(max_bytes=summary_weight(big) - 1)
    held.put(NS, "small", summary(1))
    held.put(NS, "big", big)
    assert held.held(NS, ["small", "big"]) == {"small"}
    assert held.bytes == summary_weight(summary(1))
    nothing = RecentSummaries(max_bytes=0)
    nothing.put(NS, "u", HeaderSummary())
    assert len(nothing) == 0
