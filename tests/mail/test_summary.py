"""Header summaries: encoded words, raw 8-bit bytes, folding, dates, addresses, cache shape."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from gateway.api.serializers import header_fields
from gateway.mail import JSON_VERSION, Address, HeaderSummary, summarize
from tests.support.corpus import encoded_word_b, encoded_word_q


def headers(*lines: str | bytes, eol: bytes = b"\r\n") -> bytes:
    """A header section (with its empty line) from `lines`."""
    out = b""
    for line in lines:
        out += (line.encode() if isinstance(line, str) else line) + eol
    return out + eol


def strings(data: object) -> list[str]:
    """Every string (keys included) inside a JSON-like value."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for key, value in data.items() for s in [key, *strings(value)]]
    if isinstance(data, list | tuple):
        return [s for value in data for s in strings(value)]
    return []


def subject_of(value: str | bytes) -> str | None:
    raw = value.encode() if isinstance(value, str) else value
    return summarize(headers(b"Subject: " + raw)).subject


# -- RFC 2047 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "charset"),
    [
        ("关于下周会议的通知", "GB2312"),
        ("朱镕基的报告", "GBK"),
        ("请查收附件", "GB18030"),
        ("Résumé für Jürgen – Grüße ☕", "UTF-8"),
        ("Réunion à Montréal", "ISO-8859-1"),
        ("中文標題 會議", "Big5"),
        ("日本語の件名です", "Shift_JIS"),
        ("日本語の件名です", "ISO-2022-JP"),
        ("Привет, мир", "KOI8-R"),
        ("Привет, мир", "windows-1251"),
        ("Zażółć gęślą jaźń", "ISO-8859-2"),
        ("한국어 제목", "EUC-KR"),
        ("Καλημέρα", "ISO-8859-7"),
    ],
)
@pytest.mark.parametrize("encode", [encoded_word_b, encoded_word_q], ids=["B", "Q"])
def test_encoded_words_in_any_charset(text: str, charset: str, encode: object) -> None:
    assert callable(encode)
    assert subject_of(encode(text, charset)) == text


def test_gb2312_label_with_gbk_characters() -> None:
    """Real mail labelled GB2312 uses GBK characters (镕 is not in GB 2312)."""
    with pytest.raises(UnicodeEncodeError):
        "镕".encode("gb2312")
    payload = base64.b64encode("朱镕基".encode("gbk")).decode()
    assert subject_of(f"=?gb2312?B?{payload}?=") == "朱镕基"
    assert subject_of(f"=?GB2312?Q?{''.join(f'={b:02X}' for b in '镕'.encode('gbk'))}?=") == "镕"


def test_adjacent_encoded_words_are_joined() -> None:
    # Whitespace (folding included) between encoded words is not part of the text.
    assert subject_of("=?UTF-8?Q?a?= =?UTF-8?Q?b?=") == "ab"
    assert subject_of("=?UTF-8?Q?a?=\r\n =?UTF-8?Q?b?=") == "ab"
    assert subject_of("=?UTF-8?Q?a_?=  =?ISO-8859-1?Q?caf=E9?=") == "a café"
    # ...but kept next to plain text.
    assert subject_of("Re: =?UTF-8?Q?caf=C3=A9?= ok") == "Re: café ok"
    assert subject_of("=?UTF-8?Q?a?= b =?UTF-8?Q?c?=") == "a b c"


def test_multibyte_character_split_across_encoded_words() -> None:
    data = "你好世界".encode()
    first = base64.b64encode(data[:4]).decode()
    second = base64.b64encode(data[4:]).decode()
    assert subject_of(f"=?UTF-8?B?{first}?= =?UTF-8?B?{second}?=") == "你好世界"
    gbk = "你好".encode("gbk")
    words = [f"=?GBK?Q?={gbk[i]:02X}?=" for i in range(len(gbk))]
    assert subject_of(" ".join(words)) == "你好"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("=?UTF-8?B?SGVsbG8gV29ybGQ?=", "Hello World"),  # padding missing
        ("=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
        ("=?UTF-8?B?!!not*base64!!?=", "=?UTF-8?B?!!not*base64!!?="),
        ("=?UTF-8?B?QUJDR?=", "=?UTF-8?B?QUJDR?="),  # 4n+1 characters: not base64
        ("=?UTF-8?Q?bad=ZZescape?=", "bad=ZZescape"),
        ("=?x-unknown?Q?caf=E9?=", "café"),
        ("=?x-unknown?Q?caf=C3=A9?=", "café"),
        ("=?UTF-8?X?abc?=", "=?UTF-8?X?abc?="),  # no such encoding
        ("=??Q?abc?=", "=??Q?abc?="),  # no charset
        ("=?UTF-8?Q??=", ""),
        ("=?UTF-8*en?Q?hello?=", "hello"),  # RFC 2231 language tag
        ("=?utf-8?b?w6k=?=", "é"),  # lower-case encoding letter
        ("prefix=?UTF-8?Q?glued?=suffix", "prefixgluedsuffix"),
        ("=?unicode_escape?Q?=5Cud800?=", "\\ud800"),  # not a charset: unlabelled rules
        ("=?utf-8?Q?=ED=A0=80x?=", "\ufffd\ufffd\ufffdx"),  # a UTF-8 surrogate is invalid
        ("=?us-ascii?Q?caf=E9?=", "café"),
    ],
)
def test_malformed_encoded_words(raw: str, expected: str) -> None:
    assert subject_of(raw) == expected


# -- raw 8-bit headers -----------------------------------------------------------------------


def test_raw_utf8_header() -> None:
    raw = headers(
        "Subject: 請求書のご案内 🧾".encode(), "From: 山田 太郎 <taro@example.jp>".encode()
    )
    summary = summarize(raw)
    assert summary.subject == "請求書のご案内 🧾"
    assert summary.from_ == Address("山田 太郎", "taro@example.jp")


def test_raw_gbk_header() -> None:
    raw = headers(
        "Subject: 会议通知（镕）".encode("gbk"), "From: 张伟 <z@example.cn>".encode("gbk")
    )
    summary = summarize(raw)
    assert summary.subject == "会议通知（镕）"
    assert summary.from_ == Address("张伟", "z@example.cn")


def test_raw_latin1_header() -> None:
    raw = headers("Subject: Café y año nuevo".encode("latin-1"))
    assert summarize(raw).subject == "Café y año nuevo"


def test_raw_8bit_uses_one_charset_per_header_block() -> None:
    # "Peña" alone happens to be valid GB18030; the other Latin-1 header in the block is not,
    # so the whole block is read as Latin-1.
    assert "Señora Peña".encode("latin-1").decode("gb18030")
    raw = headers(
        "To: Señora Peña <pena@example.es>".encode("latin-1"),
        "Subject: José".encode("latin-1"),
    )
    summary = summarize(raw)
    assert summary.to == [Address("Señora Peña", "pena@example.es")]
    assert summary.subject == "José"


def test_raw_8bit_follows_the_declared_body_charset() -> None:
    raw = headers(
        "To: Peña <pena@example.es>".encode("latin-1"),
        "Content-Type: text/plain; charset=iso-8859-1",
    )
    assert summarize(raw).to == [Address("Peña", "pena@example.es")]
    raw = headers("Subject: Привет".encode("koi8-r"), 'Content-Type: text/plain; charset="koi8-r"')
    assert summarize(raw).subject == "Привет"


def test_raw_bytes_that_fit_no_charset_fall_back_to_latin1() -> None:
    assert subject_of(b"\x80\xff\xfe ok") == "ÿþ ok"  # 0x80 is a C1 control: removed


def test_utf8_header_next_to_legacy_one() -> None:
    raw = headers("Subject: Grüße".encode(), "From: José <j@example.es>".encode("latin-1"))
    summary = summarize(raw)
    assert summary.subject == "Grüße"
    assert summary.from_ == Address("José", "j@example.es")


# -- structure of the header section -----------------------------------------------------------


def test_bare_lf_and_mixed_line_endings() -> None:
    lf = headers("Subject: hello", "From: a@example.com", eol=b"\n")
    crlf = headers("Subject: hello", "From: a@example.com")
    mixed = b"Subject: hello\nFrom: a@example.com\r\n\n"
    assert summarize(lf) == summarize(crlf) == summarize(mixed)
    assert summarize(lf).subject == "hello"


def test_folded_lines_are_unfolded() -> None:
    raw = b"Subject: a long\r\n subject\r\n\tfolded\nTo: x@example.com,\r\n  y@example.com\r\n\r\n"
    summary = summarize(raw)
    assert summary.subject == "a long subject folded"
    assert [a.address for a in summary.to] == ["x@example.com", "y@example.com"]


def test_long_header_lines() -> None:
    long_subject = "word " * 300  # 1.5 KB, unfolded
    raw = headers(f"X-Long: {'k' * 100_000}", f"Subject: {long_subject}")
    assert summarize(raw).subject == long_subject.strip()


def test_header_section_without_empty_line_or_final_newline() -> None:
    assert summarize(b"Subject: cut").subject == "cut"
    assert summarize(b"Subject: cut\r\n").subject == "cut"
    assert summarize(b"") == HeaderSummary()
    assert summarize(b"\r\n\r\nSubject: in the body") == HeaderSummary()


def test_a_line_that_is_not_a_header_ends_the_section() -> None:
    raw = b"Subject: one\r\nthis is body text\r\nFrom: not-a-header@example.com\r\n"
    summary = summarize(raw)
    assert summary.subject == "one"
    assert summary.from_ is None


def test_mbox_envelope_line_is_skipped() -> None:
    raw = b"From alice@example.com Mon Jan  1 10:00:00 2024\nSubject: mbox\n\n"
    assert summarize(raw).subject == "mbox"


def test_first_occurrence_wins_and_names_are_case_insensitive() -> None:
    raw = headers("SUBJECT: first", "subject: second", "to: a@x.org", "TO: b@x.org")
    summary = summarize(raw)
    assert summary.subject == "first"
    assert [a.address for a in summary.to] == ["a@x.org", "b@x.org"]


def test_control_characters_are_stripped() -> None:
    raw = headers(
        b"Subject: a\x00b\x07c\x1b[0m\x7fd\rsplit",
        b"From: =?UTF-8?Q?Eve=0D=0ABcc=3A_x=00?= <eve@example.com>",
        "To: Bob\u2028Line <bob@example.com>".encode(),
        b"Message-ID: <id\x01@example.com>",
        b"Date: Wed, 1 May 2024 10:22:33 +0800\x00",
    )
    summary = summarize(raw)
    assert summary.subject == "abc[0mdsplit"
    assert summary.from_ == Address("EveBcc: x", "eve@example.com")
    assert summary.to == [Address("Bob Line", "bob@example.com")]  # U+2028 is whitespace
    assert summary.message_id == "<id@example.com>"
    assert summary.date == "2024-05-01T10:22:33+08:00"
    assert all(text.isprintable() for text in strings(header_fields(summary)))


def test_subject_missing_empty_and_blank() -> None:
    assert summarize(headers("From: a@example.com")).subject is None
    assert subject_of("") == ""
    assert subject_of("   ") == ""


# -- dates and ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 1 May 2024 10:22:33 +0800", "2024-05-01T10:22:33+08:00"),
        ("1 May 2024 10:22:33 -0700", "2024-05-01T10:22:33-07:00"),
        ("Wed, 01 May 2024 10:22:33 GMT", "2024-05-01T10:22:33+00:00"),
        ("Wed, 01 May 2024 10:22:33 -0000", "2024-05-01T10:22:33+00:00"),
        ("Wed, 01 May 2024 10:22 +0530", "2024-05-01T10:22:00+05:30"),
        ("Wed, 01 May 24 10:22:33 +0200", "2024-05-01T10:22:33+02:00"),
        ("Wed, 01 May 2024 10:22:33 +0800 (CST)", "2024-05-01T10:22:33+08:00"),
        ("Wed,\r\n 01 May 2024 10:22:33 +0800", "2024-05-01T10:22:33+08:00"),
        ("Sat, 31 Dec 2016 23:59:60 +0000", "2016-12-31T23:59:59+00:00"),  # leap second
        ("not a date", None),
        ("Wed, 31 Feb 2024 10:22:33 +0800", None),
        ("Wed, 01 May 2024 10:22:33 +9999", None),
        ("Wed, 01 May 99999 10:22:33 +0000", None),
        ("", None),
    ],
)
def test_dates(value: str, expected: str | None) -> None:
    assert summarize(headers(f"Date: {value}")).date == expected


def test_missing_date_and_message_id() -> None:
    summary = summarize(headers("Subject: nothing else"))
    assert summary.date is None
    assert summary.message_id is None
    assert summary.in_reply_to is None


def test_message_id_and_in_reply_to() -> None:
    raw = headers(
        "Message-ID:\r\n <abc.123@example.com>",
        "In-Reply-To: <parent@example.com> (message from Alice)",
    )
    summary = summarize(raw)
    assert summary.message_id == "<abc.123@example.com>"
    assert summary.in_reply_to == "<parent@example.com>"
    assert summarize(headers("Message-ID: no-brackets@example")).message_id == (
        "no-brackets@example"
    )
    assert summarize(headers("Message-ID:")).message_id is None


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Alice Martin <alice@example.com>", [("Alice Martin", "alice@example.com")]),
        ("alice@example.com", [(None, "alice@example.com")]),
        ("<alice@example.com>", [(None, "alice@example.com")]),
        ('"Doe, John" <john@example.com>', [("Doe, John", "john@example.com")]),
        ('"Eve \\"E\\" Doe" <eve@example.com>', [('Eve "E" Doe', "eve@example.com")]),
        ("alice@example.com (Alice Martin)", [("Alice Martin", "alice@example.com")]),
        (
            "a@x.org, B <b@x.org>,, c@x.org",
            [(None, "a@x.org"), ("B", "b@x.org"), (None, "c@x.org")],
        ),
        (
            "Team: a@x.org, b@x.org;, c@x.org",
            [(None, "a@x.org"), (None, "b@x.org"), (None, "c@x.org")],
        ),
        ("undisclosed-recipients:;", []),
        ("Mailer Daemon", [("Mailer Daemon", "")]),
        ("MAILER-DAEMON", [(None, "MAILER-DAEMON")]),
        ("<@relay.example:user@example.com>", [(None, "user@example.com")]),
        ("=?UTF-8?B?WmHDqw==?= <z@example.com>", [("Zaë", "z@example.com")]),
        ('"=?UTF-8?Q?Doe=2C_J=C3=BCrgen?=" <j@example.de>', [("Doe, Jürgen", "j@example.de")]),
        ("=?UTF-8?Q?Doe=2C_J=C3=BCrgen?= <j@example.de>", [("Doe, Jürgen", "j@example.de")]),
        ("Broken <unclosed@example.com", [("Broken", "unclosed@example.com")]),
        ('"unterminated <x@example.com>', [("unterminated", "x@example.com")]),
        ("", []),
    ],
)
def test_address_lists(value: str, expected: list[tuple[str | None, str]]) -> None:
    summary = summarize(headers(f"To: {value}"))
    assert [(a.name, a.address) for a in summary.to] == expected


def test_from_reply_to_and_cc() -> None:
    raw = headers(
        "From: A <a@x.org>, B <b@x.org>",
        "Reply-To: list@x.org",
        "Cc: C <c@x.org>",
    )
    summary = summarize(raw)
    assert summary.from_ == Address("A", "a@x.org")
    assert summary.reply_to == [Address(None, "list@x.org")]
    assert summary.cc == [Address("C", "c@x.org")]


# -- content type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "content_type", "hint"),
    [
        (None, "text/plain", False),
        ("TEXT/HTML; charset=utf-8", "text/html", False),
        ('multipart/mixed; boundary="x"', "multipart/mixed", True),
        ("multipart/alternative; boundary=x", "multipart/alternative", False),
        ("multipart/related; boundary=x", "multipart/related", True),
        ("application/pdf", "application/pdf", True),
        ("garbage", "text/plain", False),
        ("text/", "text/plain", False),
        ("", "text/plain", False),
    ],
)
def test_content_type_and_attachment_hint(value: str | None, content_type: str, hint: bool) -> None:
    lines = ["Subject: x"] + ([f"Content-Type: {value}"] if value is not None else [])
    summary = summarize(headers(*lines))
    assert summary.content_type == content_type
    assert summary.has_attachments_hint is hint


def test_top_level_attachment_disposition_is_a_hint() -> None:
    raw = headers("Content-Type: text/plain", "Content-Disposition: attachment; filename=a.txt")
    assert summarize(raw).has_attachments_hint is True


# -- the cached and the API shapes -------------------------------------------------------------

FULL = HeaderSummary(
    subject="Grüße",
    from_=Address("Zoë", "zoe@example.de"),
    to=[Address(None, "a@example.org"), Address("", "b@example.org")],
    cc=[Address("C", "c@example.org")],
    reply_to=[Address(None, "r@example.org")],
    date="2024-05-01T10:22:33+08:00",
    message_id="<m@example.org>",
    in_reply_to="<p@example.org>",
    content_type="multipart/mixed",
    has_attachments_hint=True,
    size=12345,
)


@pytest.mark.parametrize("summary", [FULL, HeaderSummary(), HeaderSummary(subject="")])
def test_json_round_trip(summary: HeaderSummary) -> None:
    data = summary.to_json()
    assert data["v"] == JSON_VERSION
    assert HeaderSummary.from_json(json.loads(json.dumps(data))) == summary


def test_json_is_compact() -> None:
    assert HeaderSummary().to_json() == {"v": JSON_VERSION}
    data = FULL.to_json()
    assert set(data) == {"v", "s", "f", "t", "c", "r", "d", "m", "i", "ct", "a", "z"}
    assert data["f"] == ["zoe@example.de", "Zoë"]
    assert data["t"] == [["a@example.org"], ["b@example.org", ""]]
    assert len(json.dumps(data, ensure_ascii=False, separators=(",", ":"))) < 300


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"v": 2},
        {"v": 1, "s": 5},
        {"v": 1, "f": "a@b"},
        {"v": 1, "f": []},
        {"v": 1, "t": [["a", "b", "c"]]},
        {"v": 1, "t": {"a": 1}},
        {"v": 1, "c": [[1]]},
        {"v": 1, "z": "12"},
        {"v": 1, "z": True},
        {"v": 1, "ct": 3},
    ],
)
def test_from_json_rejects_other_shapes(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="header summary"):
        HeaderSummary.from_json(data)


def test_from_json_rejects_non_dicts() -> None:
    with pytest.raises(ValueError, match="header summary"):
        HeaderSummary.from_json([])  # type: ignore[arg-type]


def test_as_api_shape() -> None:
    assert header_fields(FULL) == {
        "subject": "Grüße",
        "from": {"name": "Zoë", "address": "zoe@example.de"},
        "to": [
            {"name": None, "address": "a@example.org"},
            {"name": "", "address": "b@example.org"},
        ],
        "cc": [{"name": "C", "address": "c@example.org"}],
        "reply_to": [{"name": None, "address": "r@example.org"}],
        "date": "2024-05-01T10:22:33+08:00",
        "message_id": "<m@example.org>",
        "in_reply_to": "<p@example.org>",
        "content_type": "multipart/mixed",
    }
    assert header_fields(HeaderSummary())["from"] is None


def test_package_imports_nothing_outside_the_standard_library() -> None:
    code = (
        "import sys, gateway.mail\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'redis', 'pydantic', 'pydantic_settings', 'prometheus_client')"
        " or (m.startswith('gateway.') and not m.startswith('gateway.mail'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_listing_summaries_are_bounded() -> None:
    from gateway.mail.summary import MAX_SUMMARY_ADDRESSES, MAX_SUMMARY_TEXT

    many = ", ".join(f"r{i}@example.com" for i in range(500))
    raw = (
        b"Subject: " + b"s" * 100_000 + b"\r\nTo: " + many.encode() + b"\r\n"
        b"Message-ID: <" + b"m" * 10_000 + b"@x>\r\n\r\n"
    )
    summary = summarize(raw)
    assert summary.subject == "s" * MAX_SUMMARY_TEXT
    assert len(summary.to) == MAX_SUMMARY_ADDRESSES
    assert summary.to[0].address == "r0@example.com"
    assert summary.message_id is not None
    assert len(summary.message_id) == MAX_SUMMARY_TEXT


def test_every_kept_field_is_capped() -> None:
    # Display names of 1 MB, a 1 MB address and 10,000 addresses: the summary keeps only the
    # capped sizes, the same on the direct (ASCII) path and the general one (one 8-bit byte
    # sends it there). Each field is read no further than MAX_FIELD_BYTES: past that cut,
    # a hostile field is not read at all (its first mailbox may come out as garbage, capped).
    from gateway.mail._headers import MAX_FIELD_BYTES, split_headers
    from gateway.mail.summary import (
        MAX_SUMMARY_ADDRESS,
        MAX_SUMMARY_ADDRESSES,
        MAX_SUMMARY_CONTENT_TYPE,
        MAX_SUMMARY_NAME,
        _plain_summary,
        summary_from_block,
    )

    long_name = b"N" * (MAX_FIELD_BYTES // 2)  # long, yet within the field cut
    huge_name = b"N" * 1_000_000
    many = b", ".join(b"Person %d <p%d@example.com>" % (i, i) for i in range(10_000))
    raw = (
        b'From: "' + long_name + b'" <' + b"a" * (MAX_FIELD_BYTES // 4) + b"@example.com>\r\n"
        b'To: "' + long_name + b'" <first@example.com>, ' + many + b"\r\n"
        b"Cc: " + many + b"\r\n"
        b'Reply-To: "' + huge_name + b'" <r@example.com>\r\n'
        b"Content-Type: multipart/" + b"m" * (MAX_SUMMARY_CONTENT_TYPE) + b"\r\n"
        b"Subject: s\r\n\r\nbody\r\n"
    )
    for variant in (raw, raw.replace(b"Subject: s", b"Subject: s\xe9")):
        summary = summarize(variant)
        assert summary == summary_from_block(split_headers(variant))
        assert (_plain_summary(variant, None) is not None) is (variant == raw)
        assert summary.from_ is not None
        assert summary.from_.name == "N" * MAX_SUMMARY_NAME
        assert summary.from_.address == "a" * MAX_SUMMARY_ADDRESS
        assert len(summary.to) == MAX_SUMMARY_ADDRESSES
        assert summary.to[0] == Address("N" * MAX_SUMMARY_NAME, "first@example.com")
        assert summary.to[1] == Address("Person 0", "p0@example.com")
        assert len(summary.cc) == MAX_SUMMARY_ADDRESSES
        # The 1 MB name is cut with its field: whatever is read of it is capped.
        assert len(summary.reply_to) <= 1
        for address in summary.reply_to:
            assert len(address.name or "") <= MAX_SUMMARY_NAME
            assert len(address.address) <= MAX_SUMMARY_ADDRESS
        assert summary.content_type == "text/plain"  # longer than RFC 6838 allows
        # What a listing item and a cache entry hold stays small.
        assert len(json.dumps(summary.to_json())) < 50_000
        assert HeaderSummary.from_json(summary.to_json()) == summary


def test_cached_summaries_from_before_the_caps_are_capped_when_read() -> None:
    from gateway.mail.summary import MAX_SUMMARY_ADDRESS, MAX_SUMMARY_NAME, MAX_SUMMARY_TEXT

    old = {
        "v": JSON_VERSION,
        "s": "s" * 10_000,
        "f": ["f" * 10_000, "F" * 10_000],
        "t": [[f"t{i}@x", "T" * 1000] for i in range(500)],
        "ct": "text/" + "x" * 1000,
    }
    summary = HeaderSummary.from_json(old)
    assert summary.subject == "s" * MAX_SUMMARY_TEXT
    assert summary.from_ == Address("F" * MAX_SUMMARY_NAME, "f" * MAX_SUMMARY_ADDRESS)
    assert len(summary.to) == 100
    assert summary.to[0] == Address("T" * MAX_SUMMARY_NAME, "t0@x")
    assert summary.content_type == "text/plain"


def test_the_work_on_one_field_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stranger's 12 MB To: header: the address parser and the decoders see at most
    MAX_FIELD_BYTES of it (they used to take all of it, seconds of CPU on the event loop)."""
    import gateway.mail._headers as headers
    import gateway.mail.message as message
    import gateway.mail.summary as summary_module

    seen: list[int] = []
    real_parse = headers.parse_addresses
    real_decode = summary_module.decode_encoded_words

    def parse(value: str) -> list[tuple[str | None, str]]:
        seen.append(len(value))
        return real_parse(value)

    def decode(value: str) -> str:
        seen.append(len(value))
        return real_decode(value)

    monkeypatch.setattr(summary_module, "parse_addresses", parse)
    monkeypatch.setattr(summary_module, "decode_encoded_words", decode)
    summary_module._remembered_addresses.cache_clear()
    many = b", ".join(b'"Name %d" <a%d@example.com>' % (i, i) for i in range(400_000))
    huge_subject = b"=?UTF-8?B?w6k=?= " * 700_000
    for top in (b"", b"X-8bit: \xe9\r\n"):  # the direct path, and the general one
        raw = top + b"Subject: " + huge_subject + b"\r\nTo: " + many + b"\r\n\r\nbody\r\n"
        seen.clear()
        found = summarize(raw)
        assert len(found.to) == 100
        assert seen
        assert max(seen) <= headers.MAX_FIELD_BYTES
        parsed = message.parse_message(raw)
        assert all(len(value) <= headers.MAX_FIELD_BYTES for _name, value in parsed.headers)
