"""Wire shapes and the rendered-page cache of the API layer."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

from gateway.api.serializers import PageRenderings, summary
from gateway.service import Page, Summary


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
