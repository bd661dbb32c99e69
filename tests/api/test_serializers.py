"""Wire shapes and the rendered-page cache of the API layer."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api import serializers
from gateway.api.serializers import ItemRenderings, PageRenderings, dumps, summary
from gateway.mail import Address, HeaderSummary
from gateway.service import Page, Summary

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def page(uids: int) -> Page:
    items = [Summary(f"uid-{i}", 100, None) for i in range(uids)]
    return Page(items, uids, None, datetime(2026, 1, 1, tzinfo=UTC))


def test_a_page_is_rendered_once_while_it_lives() -> None:
    renderings = PageRenderings()
    kept = page(3)
    first = renderings.render(kept)
    assert renderings.render(kept) is not first  # a new tuple...
    assert renderings.render(kept) == first  # ...of the same rendering
    assert b'"uid":"uid-0"' in first[1]


def test_renderings_go_with_their_pages() -> None:
    """A page the service did not keep is rendered for its one answer: its body must not
    stay behind (one caller asking for many page sizes could pin hundreds of MB)."""
    renderings = PageRenderings()
    for _ in range(50):
        renderings.render(page(200))  # dropped at once, as by the service
    gc.collect()
    assert len(renderings) == 0
    alive = [page(10) for _ in range(5)]
    for value in alive:
        renderings.render(value)
    assert len(renderings) == 5


def test_renderings_are_bounded() -> None:
    renderings = PageRenderings(max_entries=3)
    alive = [page(1) for _ in range(10)]
    for value in alive:
        renderings.render(value)
    assert len(renderings) == 3


def test_a_summary_without_headers_has_every_field() -> None:
    data = summary(Summary("u", 7, None))
    assert data["from"] is None
    assert data["to"] == []
    assert data["content_type"] == "text/plain"


# -- listing entries rendered once per summary -------------------------------------------------

#: unique-ids as the POP3 layer gives them: latin-1 text
UIDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), min_size=1, max_size=8)
NAMES = st.one_of(st.none(), st.text(max_size=8))
ADDRESSES = st.builds(Address, NAMES, st.text(max_size=12))
SUMMARIES = st.one_of(
    st.none(),
    st.builds(
        HeaderSummary,
        subject=st.one_of(st.none(), st.text(max_size=20)),
        from_=st.one_of(st.none(), ADDRESSES),
        to=st.lists(ADDRESSES, max_size=3),
        date=st.one_of(st.none(), st.just("2024-05-01T10:22:33+08:00")),
        content_type=st.sampled_from(["text/plain", "multipart/mixed"]),
    ),
)


@given(
    items=st.lists(
        st.builds(Summary, UIDS, st.integers(0, 10**9), SUMMARIES),
        max_size=6,
    ),
    cursor=st.one_of(st.none(), st.text(max_size=10)),
)
def test_a_page_body_is_the_json_of_the_page(items: list[Summary], cursor: str | None) -> None:
    value = Page(items, 7, cursor, datetime(2026, 1, 1, tzinfo=UTC))
    renderings = PageRenderings()
    assert renderings.render(value)[1] == dumps(serializers.page(value))
    again = Page(list(items), 7, cursor, datetime(2026, 1, 1, tzinfo=UTC))
    assert renderings.render(again)[1] == dumps(serializers.page(value))


FULL_TEXT = st.text(max_size=12)  # any code point: controls, quotes, lone surrogates...
ANY_ADDRESSES = st.builds(Address, st.one_of(st.none(), FULL_TEXT), FULL_TEXT)


@given(
    st.builds(
        Summary,
        st.one_of(UIDS, FULL_TEXT),
        st.integers(0, 2**63),
        st.builds(
            HeaderSummary,
            subject=st.one_of(st.none(), FULL_TEXT),
            from_=st.one_of(st.none(), ANY_ADDRESSES),
            to=st.lists(ANY_ADDRESSES, max_size=3),
            cc=st.lists(ANY_ADDRESSES, max_size=2),
            reply_to=st.lists(ANY_ADDRESSES, max_size=2),
            date=st.one_of(st.none(), FULL_TEXT),
            message_id=st.one_of(st.none(), FULL_TEXT),
            in_reply_to=st.one_of(st.none(), FULL_TEXT),
            content_type=FULL_TEXT,
        ),
    )
)
def test_an_entry_is_written_as_the_serializer_writes_it(item: Summary) -> None:
    """The entry's JSON written directly is the serializer's, byte for byte; what the
    serializer refuses (text that is no valid Unicode) is refused the same way."""
    try:
        expected = dumps(summary(item))
    except Exception as exc:
        with pytest.raises(type(exc)):
            serializers.summary_json(item)
        return
    assert serializers.summary_json(item) == expected


def test_an_entry_with_odd_text_is_escaped_as_json() -> None:
    headers = HeaderSummary(subject='a "quoted" \\ back\nslash\x01\x7f\u2028 \U0001f600 ok')
    body = serializers.summary_json(Summary("u\xe9", 5, headers))
    assert body == dumps(summary(Summary("u\xe9", 5, headers)))
    assert b"\\u0001" in body
    assert b'\\"quoted\\"' in body


def counted(monkeypatch: pytest.MonkeyPatch) -> list[HeaderSummary]:
    """Every header summary rendered from now on."""
    seen: list[HeaderSummary] = []
    original = serializers.summary_json

    def summary_json(item: Summary) -> bytes:
        if item.headers is not None:
            seen.append(item.headers)
        return original(item)

    monkeypatch.setattr(serializers, "summary_json", summary_json)
    return seen


def test_an_entry_is_rendered_once_while_its_summary_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service hands over the same summary object for every page showing it (a page
    read ahead, the same page after a new login): its JSON is made once."""
    summaries = [HeaderSummary(subject=f"s{i}") for i in range(4)]
    renderings = PageRenderings()
    seen = counted(monkeypatch)
    first = Page([Summary(f"u{i}", 9, s) for i, s in enumerate(summaries)], 4, None, NOW)
    renderings.render(first)
    assert len(seen) == 4
    # a new page (a new login) with the same summaries: nothing rendered again
    again = Page([Summary(f"u{i}", 9, s) for i, s in enumerate(summaries)], 4, "c", NOW)
    _etag, body = renderings.render(again)
    assert len(seen) == 4
    assert body == dumps(serializers.page(again))
    # the same summary shown under another uid or size is rendered for it
    other = Page([Summary("x", 9, summaries[0]), Summary("u1", 10, summaries[1])], 2, None, NOW)
    assert renderings.render(other)[1] == dumps(serializers.page(other))
    assert len(renderings.items) == 4


def test_entry_renderings_go_with_their_summaries() -> None:
    renderings = PageRenderings()
    for _ in range(20):
        renderings.render(Page([Summary("u", 1, HeaderSummary(subject="s"))], 1, None, NOW))
    gc.collect()
    assert len(renderings.items) == 0
    assert renderings.items.weight == 0


def test_entry_renderings_are_bounded() -> None:
    items = ItemRenderings(max_entries=3, max_bytes=10_000)
    alive = [HeaderSummary(subject=f"s{i}") for i in range(10)]
    for i, headers in enumerate(alive):
        items.render(Summary(f"u{i}", 1, headers))
    assert len(items) == 3
    items = ItemRenderings(max_entries=100, max_bytes=10_000)
    big = [HeaderSummary(subject="x" * 2000) for _ in range(10)]
    for i, headers in enumerate(big):
        items.render(Summary(f"b{i}", 1, headers))
        assert items.weight <= 10_000
    assert len(items) == 10_000 // len(items.render(Summary("b9", 1, big[9])))
