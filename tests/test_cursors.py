"""Listing cursors (gateway/service/ids.py): sealed, bound to a mailbox, compact."""

from __future__ import annotations

import pytest

from gateway.service import InvalidInputError
from gateway.service.ids import MAX_CURSOR_UID, Cursors

KEY = b"k" * 32


@pytest.mark.parametrize("uid", ["a", "~" * 70, "\\" * MAX_CURSOR_UID])
def test_round_trip_within_200_characters(uid: str) -> None:
    cursors = Cursors(KEY)
    cursor = cursors.encode(b"box", "asc", uid, 123_456)
    assert len(cursor) <= 200
    assert cursors.decode(b"box", cursor, "asc") == (uid, 123_456)


def test_a_long_unique_id_resumes_by_number() -> None:
    cursors = Cursors(KEY)
    cursor = cursors.encode(b"box", "desc", "x" * (MAX_CURSOR_UID + 1), 7)
    assert len(cursor) <= 200
    assert cursors.decode(b"box", cursor, "desc") == (None, 7)


@pytest.mark.parametrize(
    ("mailbox", "key", "order", "message"),
    [
        (b"other", KEY, "desc", "not one this service issued for this mailbox"),
        (b"box", b"j" * 32, "desc", "not one this service issued for this mailbox"),
        (b"box", KEY, "asc", "other order"),
    ],
)
def test_refused(mailbox: bytes, key: bytes, order: str, message: str) -> None:
    cursor = Cursors(KEY).encode(b"box", "desc", "uid-1", 1)
    with pytest.raises(InvalidInputError, match=message):
        Cursors(key).decode(mailbox, cursor, order)  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", ["", "!!", "A", "AAAA", "x" * 201])
def test_malformed(cursor: str) -> None:
    with pytest.raises(InvalidInputError):
        Cursors(KEY).decode(b"box", cursor, "desc")
