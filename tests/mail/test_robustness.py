"""Hostile and random input: never an exception, always clean JSON, never super-linear."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.serializers import header_fields, parsed_message
from gateway.mail import (
    MAX_NESTING_DEPTH,
    MAX_PARTS,
    HeaderSummary,
    find_attachment,
    parse_message,
    summarize,
)
from tests.support.corpus import generate_corpus, simple_message

CORPUS = [message.raw for message in generate_corpus(5)] + [simple_message(1)]
# What no output string may contain: C0/C1 controls, DEL, lone surrogates, line separators.
HEADER_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
BODY_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

FUZZ = settings(max_examples=150)


def strict_json(data: object) -> None:
    json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")


def header_strings(api: dict[str, object]) -> list[str]:
    out: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in ("text", "html"):
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(api)
    return out


def check_summary(data: bytes) -> None:
    summary = summarize(data, size=len(data))
    api = header_fields(summary)
    strict_json(api)
    for text in header_strings(api):
        assert not HEADER_FORBIDDEN.search(text), text
    assert HeaderSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary


def check_message(data: bytes) -> None:
    parsed = parse_message(data)
    api = parsed_message(parsed)
    strict_json(api)
    for text in header_strings(api):
        assert not HEADER_FORBIDDEN.search(text), text
    for body in (parsed.text, parsed.html):
        assert body is None or not BODY_FORBIDDEN.search(body)
    assert parsed.defects == sorted(set(parsed.defects))
    assert len(parsed.attachments) <= MAX_PARTS
    for info in parsed.attachments:
        assert info.id.count(".") < MAX_NESTING_DEPTH
    # Each lookup parses the message again: check a few, not all of a thousand.
    for info in parsed.attachments[:5] + parsed.attachments[-5:]:
        found = find_attachment(data, info.id)
        assert found is not None
        assert found.size == info.size == len(found.payload)
    assert parsed.summary == summarize(data, size=len(data))


# -- random and mutated bytes ------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    check_summary(data)
    check_message(data)


@st.composite
def mutated_corpus(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(b'\x00\r\n\t -=?:;"<>()\\\x80\xff'))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=64))
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 512))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@FUZZ
@given(mutated_corpus())
def test_mutated_corpus_messages(data: bytes) -> None:
    check_summary(data)
    check_message(data)


MIME_TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c"\n',
    b"Content-Type: text/plain; charset=gb2312\r\n",
    b"Content-Type: text/html; charset=x-unknown\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''%E4%B8; filename*1*=%AD\r\n",
    b'Content-Disposition: inline; filename="=?utf-8?B?5Lit?="\r\n',
    b"Content-ID: <x@y>\r\n",
    b"Subject: =?utf-8?B?5Lit5paH?= =?gb2312?Q?=D6=D0?=\r\n",
    b'From: "a, b" <a@b>, (c (d)) e@f, g: h@i;\r\n',
    b"Date: Wed, 1 May 2024 10:22:33 +0800\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"--c\n",
    b"--c--\n",
    b"5Lit5paH",
    b"====",
    b"=E4=B8=AD=\r\n",
    b"\xff\xfe\x00",
    "中文".encode("gbk"),
    b"From mbox Mon Jan 1 00:00:00 2024\n",
]


@FUZZ
@given(st.lists(st.sampled_from(MIME_TOKENS), max_size=60))
def test_random_mime_structures(tokens: list[bytes]) -> None:
    data = b"".join(tokens)
    check_summary(data)
    check_message(data)


@FUZZ
@given(st.sampled_from(CORPUS), st.text(max_size=30))
def test_find_attachment_with_any_id(data: bytes, attachment_id: str) -> None:
    found = find_attachment(data, attachment_id)
    assert found is None or found.id == attachment_id


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=3), st.none() | st.integers() | st.text() | st.lists(st.text()), max_size=6
    )
)
def test_from_json_raises_only_value_error(data: dict[str, object]) -> None:
    for candidate in (data, {**data, "v": 1}):
        with contextlib.suppress(ValueError):
            HeaderSummary.from_json(candidate)


# -- hostile shapes: each would take minutes if anything were quadratic ----------------------------


def timed(parse: Callable[[bytes], object], data: bytes) -> float:
    start = time.perf_counter()
    parse(data)
    return time.perf_counter() - start


def mime(entity: bytes) -> bytes:
    return b"From: a@b\r\nSubject: hostile\r\n" + entity


HOSTILE = {
    "semicolons-in-quotes": mime(
        b'Content-Type: text/plain; a="' + b";" * 400_000 + b'"; charset=utf-8\r\n\r\nx'
    ),
    "many-parameters": mime(b"Content-Type: text/plain" + b"; a=b" * 200_000 + b"\r\n\r\nx"),
    "rfc2231-sections": mime(
        b"Content-Type: application/x-a\r\nContent-Disposition: attachment"
        + b"".join(b"; filename*%d*=%%41" % i for i in range(50_000))
        + b"\r\n\r\nx"
    ),
    "nested-comments": b"From: " + b"(" * 300_000 + b"a@b\r\n\r\n",
    "group-colons": b"To: " + b":" * 300_000 + b"a@b\r\n\r\n",
    "quotes-and-angles": b"To: " + b'"<\\' * 200_000 + b"\r\n\r\n",
    "many-addresses": b"To: " + b"a@b, " * 200_000 + b"\r\n\r\n",
    "encoded-words": b"Subject: " + b"=?utf-8?q?a?= " * 200_000 + b"\r\n\r\n",
    "broken-encoded-words": b"Subject: " + b"=?utf-8?q?" * 300_000 + b"\r\n\r\n",
    "long-header-line": b"Subject: " + b"x" * 5_000_000 + b"\r\n\r\n",
    "many-folded-lines": b"Subject: x" + b"\r\n y" * 1_000_000 + b"\r\n\r\n",
    "many-header-lines": b"X-A: b\r\n" * 500_000 + b"\r\n",
    "junk-header-lines": b"From x\r\n" * 500_000 + b"Subject: s\r\n\r\n",
    "long-body-line": mime(b"Content-Type: text/plain\r\n\r\n" + b"y" * 5_000_000),
    "many-parts": mime(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\n" * 500_000
    ),
    "boundary-not-at-line-start": mime(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"x--b" * 1_000_000
    ),
    "boundary-with-junk": mime(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--bx\r\n" * 500_000
    ),
    "deep-nesting": mime(
        b"".join(
            b"Content-Type: multipart/mixed; boundary=%d\r\n\r\n--%d\r\n" % (i, i)
            for i in range(50_000)
        )
    ),
    "junk-base64": mime(
        b"Content-Type: application/x-a\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"!A=" * 1_500_000
    ),
    "junk-quoted-printable": mime(
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"=Z=\r\n" * 800_000
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_linear(name: str) -> None:
    data = HOSTILE[name]
    # Generous bounds for a loaded machine: linear work on these sizes takes well under a
    # second; anything quadratic would take minutes.
    assert timed(summarize, data) < 5
    assert timed(parse_message, data) < 10
    check_message(data[:200_000])


def test_hostile_nesting_is_cut() -> None:
    parsed = parse_message(HOSTILE["deep-nesting"])
    assert "nesting-too-deep" in parsed.defects
    assert len(parsed.attachments) == 1


def test_hostile_many_parts_are_capped() -> None:
    parsed = parse_message(HOSTILE["many-parts"])
    assert parsed.text == ""  # the first (empty) part is the text body
    assert len(parsed.attachments) == MAX_PARTS - 1
    assert "too-many-parts" in parsed.defects
