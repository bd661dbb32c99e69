"""Every message of the messy corpus, through summarize / parse_message / find_attachment."""

from __future__ import annotations

import json

import pytest

from gateway.api.serializers import header_fields, parsed_message
from gateway.mail import (
    Address,
    HeaderSummary,
    ParsedMessage,
    find_attachment,
    parse_message,
    summarize,
)
from tests.support.corpus import (
    CorpusMessage,
    expected_headers,
    expected_retr,
    generate_corpus,
)

SEEDS = [1, 2, 7, 2024]
CORPUS = [message for seed in SEEDS for message in generate_corpus(seed)]


def corpus_id(message: CorpusMessage) -> str:
    return message.name


def header_section(raw: bytes) -> bytes:
    """What ``TOP n 0`` returns: the header lines and the empty line after them."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(separator)
        if at >= 0:
            return raw[: at + len(separator)]
    return raw


def as_pairs(addresses: list[Address]) -> tuple[tuple[str | None, str], ...]:
    return tuple((a.name, a.address) for a in addresses)


def assert_json_clean(data: object) -> None:
    """Serialisable as strict UTF-8 JSON (no lone surrogates, no NaN)."""
    json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")


@pytest.mark.parametrize("message", CORPUS, ids=corpus_id)
def test_summary_matches_what_the_generator_encoded(message: CorpusMessage) -> None:
    expected = expected_headers(message)
    summary = summarize(header_section(message.raw), size=len(message.raw))

    assert summary.subject == expected.subject
    assert summary.from_ is not None
    assert (summary.from_.name, summary.from_.address) == expected.sender
    assert as_pairs(summary.to) == expected.recipients
    assert summary.size == len(message.raw)
    assert_json_clean(header_fields(summary))
    assert HeaderSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary


@pytest.mark.parametrize("message", CORPUS, ids=corpus_id)
def test_summary_is_the_same_from_headers_whole_message_and_pop3_bytes(
    message: CorpusMessage,
) -> None:
    from_top = summarize(header_section(message.raw))
    assert summarize(message.raw) == from_top
    if "bare-cr" not in message.traits:  # a bare CR in a header line is part of the line
        assert summarize(expected_retr(message.raw)) == from_top


@pytest.mark.parametrize("message", CORPUS, ids=corpus_id)
def test_parse_matches_what_the_generator_encoded(message: CorpusMessage) -> None:
    expected = expected_headers(message)
    parsed = parse_message(message.raw)

    assert parsed.subject == expected.subject
    assert parsed.from_ is not None
    assert (parsed.from_.name, parsed.from_.address) == expected.sender
    assert as_pairs(parsed.to) == expected.recipients
    names = tuple(a.filename for a in parsed.attachments if a.filename is not None)
    assert names == expected.filenames
    assert parsed.summary == summarize(message.raw, size=len(message.raw))
    assert parsed.defects == sorted(set(parsed.defects))
    assert_json_clean(parsed_message(parsed))


@pytest.mark.parametrize("message", CORPUS, ids=corpus_id)
def test_every_attachment_is_found_by_its_id(message: CorpusMessage) -> None:
    parsed = parse_message(message.raw)
    for info in parsed.attachments:
        found = find_attachment(message.raw, info.id)
        assert found is not None
        assert found.id == info.id
        assert found.filename == info.filename
        assert len(found.payload) == found.size == info.size
    assert len({a.id for a in parsed.attachments}) == len(parsed.attachments)


@pytest.mark.parametrize("message", CORPUS, ids=corpus_id)
def test_parse_is_deterministic(message: CorpusMessage) -> None:
    assert parse_message(message.raw) == parse_message(message.raw)


def by_name(name: str, seed: int = 1) -> CorpusMessage:
    return next(m for m in generate_corpus(seed) if m.name == name)


def parse(name: str) -> ParsedMessage:
    return parse_message(by_name(name).raw)


def test_traits_show_up_as_defects() -> None:
    assert "missing-date" in parse("missing-date").defects
    assert parse("missing-date").date is None
    assert "missing-message-id" in parse("missing-message-id").defects
    assert parse("missing-message-id").message_id is None
    assert "StartBoundaryNotFoundDefect" in parse("boundary-never-appears").defects
    assert "CloseBoundaryNotFoundDefect" in parse("boundary-not-closed").defects
    assert {"InvalidBase64CharactersDefect", "InvalidBase64PaddingDefect"} <= set(
        parse("invalid-base64").defects
    )
    assert parse("plain-crlf").defects == []
    assert parse("alternative").defects == []


def test_bodies_of_the_corpus() -> None:
    gb = parse("gb2312-encoded-words")
    assert gb.text == "各位同事：\n\n下周一上午十点在三楼会议室开会，请准时参加。\n\n谢谢！\n"
    utf8 = parse("utf8-encoded-words")
    assert utf8.text == "Hallo Jürgen,\n\nanbei mein Lebenslauf. Grüße aus Köln — Zoë ☕\n"
    latin1 = parse("latin1-encoded-words")
    assert latin1.text == "Voilà l'ordre du jour. À bientôt, François\n"
    assert parse("raw-latin1-headers").text == (
        "¡Hola! Nos vemos mañana en el café. Saludos, José\n"
    )

    alternative = parse("alternative")
    assert alternative.text is not None
    assert alternative.html is not None
    assert alternative.html.startswith("<!DOCTYPE html>")
    assert "=\n" not in alternative.html  # quoted-printable soft breaks are gone
    assert alternative.attachments == []

    nested = parse("nested-multipart")
    assert nested.html is not None
    assert nested.html.startswith("<html><body><img src=")
    assert [a.id for a in nested.attachments] == ["1.2.2", "2"]
    logo = nested.attachments[0]
    assert logo.disposition == "inline"
    assert logo.content_id is not None
    assert f"cid:{logo.content_id}" in nested.html

    assert parse("empty-body").text == ""
    assert parse("header-only").text == ""
    long_line = parse("long-body-line")
    assert long_line.html is not None
    assert len(long_line.html.splitlines()[0]) == 10_000

    nul = parse("nul-byte")
    assert nul.text is not None
    assert "\x00" not in nul.text
    assert "\x1b" not in nul.text
    assert "\x7f" not in nul.text

    bare_cr = parse("bare-cr")
    assert bare_cr.text is not None
    assert "\r" not in bare_cr.text


def test_rfc822_attachment_is_one_attachment() -> None:
    message = by_name("rfc822-attachment")
    parsed = parse_message(message.raw)
    assert parsed.text == "Forwarding this as an attachment.\n"
    assert [(a.id, a.content_type, a.filename) for a in parsed.attachments] == [
        ("2", "message/rfc822", "original.eml")
    ]
    found = find_attachment(message.raw, "2")
    assert found is not None
    inner = parse_message(found.payload)
    assert [a.filename for a in inner.attachments] == ["original.png"]
    assert inner.text == "The original message.\n"


def test_invalid_base64_is_decoded_as_far_as_possible() -> None:
    message = by_name("invalid-base64")
    [info] = parse_message(message.raw).attachments
    found = find_attachment(message.raw, info.id)
    assert found is not None
    assert found.payload.startswith(b"\x89PNG\r\n\x1a\n")
    assert found.payload.endswith(b"ABCDEFABCD")


def test_unclosed_boundary_keeps_the_last_part() -> None:
    message = by_name("boundary-not-closed")
    [info] = parse_message(message.raw).attachments
    assert (info.id, info.filename, info.size) == ("2", "cut.bin", 120)


def test_boundary_that_never_appears_gives_the_body_as_text() -> None:
    parsed = parse("boundary-never-appears")
    assert parsed.text is not None
    assert parsed.text.startswith("--some-other-boundary\n")
    assert parsed.attachments == []
