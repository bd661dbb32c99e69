"""Message parsing on random bytes and on mutated corpus messages: ``summarize``,
``parse_message`` and ``find_attachment`` never raise, and what they return is JSON the API
can send (``json.dumps(..., ensure_ascii=False).encode()`` is what the handlers do)."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.api.serializers import attachment_info, header_fields, parsed_message
from gateway.mail import (
    MAX_NESTING_DEPTH,
    HeaderSummary,
    find_attachment,
    parse_message,
    summarize,
)
from tests.fuzz.profiles import budget, ran
from tests.support.corpus import generate_corpus, large_message, simple_message

CORPUS = [m.raw for m in generate_corpus(1)] + [
    simple_message(3),
    simple_message(4, eol=b"\n"),
    large_message(20_000, seed=3),
]
_BOUNDARY = re.compile(rb'boundary\s*=\s*"?([^";\r\n]+)"?', re.IGNORECASE)


def api_json(data: object) -> None:
    """Serialisable as the handlers serialise it (no NaN, no lone surrogate)."""
    json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")


def check(raw: bytes) -> None:
    summary = summarize(raw, size=len(raw))
    api_json(header_fields(summary))
    cached = json.loads(json.dumps(summary.to_json()))
    assert HeaderSummary.from_json(cached) == summary

    parsed = parse_message(raw)
    api_json(parsed_message(parsed))
    assert parsed.summary == summarize(raw, size=len(raw))
    ids = [info.id for info in parsed.attachments]
    assert len(ids) == len(set(ids)), ids
    # Each lookup parses the message again: a few are enough.
    for info in parsed.attachments[:3] + parsed.attachments[-2:]:
        found = find_attachment(raw, info.id)
        assert found is not None, info.id
        assert (found.id, found.size, found.filename) == (info.id, info.size, info.filename)
        assert len(found.payload) == info.size
        assert found.id.count(".") <= MAX_NESTING_DEPTH
        api_json(attachment_info(found))


# -- random bytes -----------------------------------------------------------------------------

FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b"Subject: ",
    b"From: ",
    b"To: ",
    b"Date: ",
    b"Content-Type: multipart/mixed; boundary=",
    b"Content-Type: text/html; charset=",
    b"Content-Type: message/rfc822",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Disposition: attachment; filename*=",
    b"--",
    b"=?",
    b"?=",
    b"?B?",
    b"?Q?",
    b"utf-8",
    b"gb2312",
    b"x-unknown",
    b"''",
    b"%E4%B8",
    b'"',
    b"\\",
    b"<",
    b">",
    b"(",
    b")",
    b"\x00",
    b"\x80",
    b"\xff",
    b"\xe4\xb8",
    b"=\r\n",
    b"====",
    b"5Lit",
]


@st.composite
def random_messages(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    parts = draw(
        st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)), max_size=120)
    )
    return b"".join(parts)


@given(random_messages())
@budget("mail: random bytes", default=300, long=20_000)
def test_random_bytes(raw: bytes) -> None:
    ran("mail: random bytes")
    check(raw)


# -- mutated corpus messages ------------------------------------------------------------------


def _lines(data: bytearray) -> list[bytes]:
    return bytes(data).split(b"\n")


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(
            st.sampled_from(
                [
                    "flip",
                    "truncate",
                    "duplicate-line",
                    "delete-line",
                    "swap-lines",
                    "insert",
                    "boundary",
                    "boundary",
                    "boundary",
                    "fold",
                    "splice",
                ]
            )
        )
        size = len(data)
        if op == "flip" and size:
            for _ in range(draw(st.integers(1, 8))):
                at = draw(st.integers(0, size - 1))
                data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, size)) :]
        elif op in ("duplicate-line", "delete-line", "swap-lines"):
            lines = _lines(data)
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if op == "duplicate-line":
                lines.insert(j, lines[i])
            elif op == "delete-line":
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif op == "insert":
            at = draw(st.integers(0, size))
            piece = draw(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=32)))
            data[at:at] = piece
        elif op == "boundary":
            data = bytearray(mangle_boundary(draw, bytes(data)))
        elif op == "fold":
            # Break or add header folding: a CRLF+space inserted, or a fold removed.
            if draw(st.booleans()):
                at = draw(st.integers(0, size))
                data[at:at] = draw(st.sampled_from([b"\r\n ", b"\n\t", b"\r\n", b"\n\n"]))
            else:
                data = bytearray(re.sub(rb"\r?\n[ \t]", b" ", bytes(data), count=1))
        elif op == "splice":
            other = draw(st.sampled_from(CORPUS))
            at = draw(st.integers(0, size))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start : start + draw(st.integers(0, 2000))]
    return bytes(data)


def mangle_boundary(draw: st.DrawFn, data: bytes) -> bytes:
    """Break the multipart structure the way real mailers and attackers do."""
    found = list(dict.fromkeys(_BOUNDARY.findall(data)))
    if not found:
        return data
    boundary: bytes = draw(st.sampled_from(found))
    delimiter = b"--" + boundary
    how = draw(
        st.sampled_from(
            [
                "drop-close",
                "drop-first",
                "shorten",
                "lengthen",
                "case",
                "trailing-junk",
                "extra-delimiter",
                "header-only",
                "empty",
                "nest",
                "no-newline-before",
            ]
        )
    )
    if how == "drop-close":
        return data.replace(delimiter + b"--", delimiter)
    if how == "drop-first":
        return data.replace(delimiter, b"", 1)
    if how == "shorten":
        return data.replace(delimiter, delimiter[:-1])
    if how == "lengthen":
        return data.replace(delimiter, delimiter + b"x")
    if how == "case":
        return data.replace(delimiter, delimiter.swapcase())
    if how == "trailing-junk":
        return data.replace(delimiter, delimiter + draw(st.sampled_from([b"  ", b" x", b"\t--"])))
    if how == "extra-delimiter":
        at = draw(st.integers(0, len(data)))
        return data[:at] + b"\r\n" + delimiter + b"\r\n" + data[at:]
    if how == "header-only":
        return data.replace(b"boundary=" + boundary, b"boundary=" + boundary + b"-other", 1)
    if how == "empty":
        return data.replace(b"boundary=" + boundary, b"boundary=", 1)
    if how == "nest":
        # A part holding the whole message again: deeper nesting, repeated paths.
        at = data.find(delimiter + b"\r\n")
        if at < 0:
            at = data.find(delimiter + b"\n")
        if at < 0:
            return data
        return data[:at] + delimiter + b"\r\n" + data + b"\r\n" + data[at:]
    # no-newline-before: a delimiter glued to the end of the line before it
    return data.replace(b"\n" + delimiter, b" " + delimiter, 1)


@given(mutated_messages())
@budget("mail: mutated corpus", default=400, long=25_000)
def test_mutated_corpus(raw: bytes) -> None:
    ran("mail: mutated corpus")
    check(raw)


# -- deep and wide structures ---------------------------------------------------------------


@st.composite
def nested_messages(draw: st.DrawFn) -> bytes:
    """Multiparts nested to a random depth (around MAX_NESTING_DEPTH), some left open."""
    depth = draw(st.integers(1, MAX_NESTING_DEPTH + 5))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    leaf = draw(
        st.sampled_from(
            [
                b"Content-Type: text/plain\r\n\r\nhello",
                b"Content-Type: application/pdf; name=a.pdf\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=",
                b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody",
            ]
        )
    ).replace(b"\r\n", eol)
    body = leaf
    for level in range(depth):
        b = b"b%d" % level
        close = eol + b"--" + b + b"--" if draw(st.integers(0, 4)) else b""
        # One sibling holds the deeper levels, the others are leaves: the size stays linear.
        parts = eol + b"--" + b + eol + body
        parts += (eol + b"--" + b + eol + leaf) * draw(st.integers(0, 2))
        body = b"Content-Type: multipart/mixed; boundary=" + b + eol + eol + parts + close
    return b"From: a@example.com" + eol + b"Subject: deep" + eol + body + eol


@given(nested_messages())
@budget("mail: nested structures", default=60, long=3_000)
def test_nested_structures(raw: bytes) -> None:
    ran("mail: nested structures")
    check(raw)


# -- attachment ids ---------------------------------------------------------------------------

IDS = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,4}", fullmatch=True),
    st.sampled_from(["1", "2", "1.1", "2.1", "0", "01", "1.", ".1", "1..2", "²", "1\n", " 1"]),
)


@given(st.sampled_from(CORPUS), IDS)
@budget("mail: attachment ids", default=150, long=5_000)
def test_find_attachment_any_id(raw: bytes, attachment_id: str) -> None:
    ran("mail: attachment ids")
    found = find_attachment(raw, attachment_id)
    if found is not None:
        assert found.id == attachment_id
        assert found.size == len(found.payload)
        api_json(attachment_info(found))
        assert attachment_id in [a.id for a in parse_message(raw).attachments]
