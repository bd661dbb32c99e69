"""One contract, two implementations: Redis, and the dict-based cache tests inject
(tests/support/cache.py), behave the same. (Without Redis the gateway has no header cache:
tests/test_held_summaries.py holds the in-process summaries to the same promises.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.cache import HeaderCache, RedisHeaderCache
from tests.support.cache import DictHeaderCache

NS = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OTHER_NS = "ffeeddccbbaa99887766554433221100"

ODD_UIDS = [
    "/",
    "?",
    "%",
    "#",
    ":",
    "*",
    "a/b?c%d#e:f*g",
    "x" * 70,
    "".join(chr(c) for c in range(0x21, 0x7F)),  # every character RFC 1939 allows
    "é\xa0ÿ\x80",  # latin-1 beyond ASCII: servers do send such bytes
    "with space",
    "[abc]",
    "Ab",
    "aB",  # case matters
    f"{OTHER_NS}:x",
    "\\",
    '"',
    "%2F",
]


def entry(n: int) -> dict[str, Any]:
    return {
        "subject": f"Hello {n} – ünïcødé ✉",
        "from": [{"name": None, "addr": f"a{n}@example.org"}],
        "date": "2024-02-29T12:00:00+00:00",
        "size": 1000 + n,
        "flags": {"attachments": n % 2 == 0, "score": 0.5},
    }


@pytest.fixture(params=["dict", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[HeaderCache]:
    if request.param == "dict":
        impl: HeaderCache = DictHeaderCache()
    else:
        request.applymarker(pytest.mark.redis)
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("prefix")
        impl = RedisHeaderCache.from_url(url, prefix=prefix, ttl=600)
    try:
        yield impl
    finally:
        await impl.close()


async def test_round_trip_with_odd_uids(cache: HeaderCache) -> None:
    entries = {uid: entry(i) for i, uid in enumerate(ODD_UIDS)}
    await cache.set_many(NS, entries)
    assert await cache.get_many(NS, ODD_UIDS) == entries
    # each one alone, too: no uid answers for another
    for uid in ODD_UIDS:
        assert await cache.get_many(NS, [uid]) == {uid: entries[uid]}


async def test_missing_uids_are_absent(cache: HeaderCache) -> None:
    await cache.set_many(NS, {"a": entry(1)})
    assert await cache.get_many(NS, ["a", "b", "*", "a*"]) == {"a": entry(1)}
    assert await cache.get_many(NS, ["nope"]) == {}


async def test_empty_inputs(cache: HeaderCache) -> None:
    assert await cache.get_many(NS, []) == {}
    await cache.set_many(NS, {})
    await cache.delete_many(NS, [])


async def test_any_iterable_and_duplicates(cache: HeaderCache) -> None:
    await cache.set_many(NS, {"a": entry(1), "b": entry(2)})
    got = await cache.get_many(NS, (u for u in ["a", "b", "a", "c", "b"]))
    assert got == {"a": entry(1), "b": entry(2)}
    assert await cache.get_many(NS, {"a", "c"}) == {"a": entry(1)}


async def test_overwrite(cache: HeaderCache) -> None:
    await cache.set_many(NS, {"a": entry(1)})
    await cache.set_many(NS, {"a": entry(2)})
    assert await cache.get_many(NS, ["a"]) == {"a": entry(2)}


async def test_delete(cache: HeaderCache) -> None:
    await cache.set_many(NS, {uid: entry(i) for i, uid in enumerate(ODD_UIDS)})
    await cache.delete_many(NS, [*ODD_UIDS[:5], "never-stored"])
    got = await cache.get_many(NS, ODD_UIDS)
    assert sorted(got) == sorted(ODD_UIDS[5:])
    await cache.delete_many(NS, iter(ODD_UIDS))
    assert await cache.get_many(NS, ODD_UIDS) == {}


async def test_namespaces_are_separate(cache: HeaderCache) -> None:
    await cache.set_many(NS, {"x": entry(1)})
    await cache.set_many(OTHER_NS, {"x": entry(2)})
    assert await cache.get_many(NS, ["x", f"{OTHER_NS}:x"]) == {"x": entry(1)}
    assert await cache.get_many(OTHER_NS, ["x"]) == {"x": entry(2)}
    await cache.delete_many(OTHER_NS, ["x"])
    assert await cache.get_many(NS, ["x"]) == {"x": entry(1)}
    # a namespace that is a prefix of another does not see into it
    assert await cache.get_many(NS[:-1], ["x"]) == {}


async def test_large_batch(cache: HeaderCache) -> None:
    entries = {f"uid-{i:05d}": {"n": i} for i in range(2500)}
    await cache.set_many(NS, entries)
    wanted = [*entries, "absent"]
    assert await cache.get_many(NS, wanted) == entries


async def test_calls_after_close_do_not_raise(cache: HeaderCache) -> None:
    await cache.set_many(NS, {"a": entry(1)})
    await cache.close()
    await cache.get_many(NS, ["a"])
    await cache.set_many(NS, {"b": entry(2)})
    await cache.delete_many(NS, ["a"])
    await cache.close()
