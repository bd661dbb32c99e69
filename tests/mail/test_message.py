"""Whole messages: MIME structure, bodies, attachments and their ids, defects."""

from __future__ import annotations

import base64
import json
import quopri

import pytest

from gateway.api.serializers import parsed_message
from gateway.mail import (
    MAX_NESTING_DEPTH,
    MAX_PARTS,
    AttachmentInfo,
    ParsedMessage,
    find_attachment,
    parse_message,
)
from tests.support.corpus import encoded_word_b

HEAD = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: test\r\n"
    b"Date: Wed, 1 May 2024 10:22:33 +0800\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
)


def part(headers: str | bytes, body: bytes = b"") -> bytes:
    head = headers.encode() if isinstance(headers, str) else headers
    return head.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + b"\r\n\r\n" + body


def multipart(boundary: str, *parts: bytes, subtype: str = "mixed") -> bytes:
    """A multipart entity (headers included) with `parts`."""
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    out += b"preamble, to be ignored\r\n"
    for item in parts:
        out += f"--{boundary}\r\n".encode() + item + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue, to be ignored\r\n".encode()


def message(entity: bytes) -> bytes:
    return HEAD + entity


TEXT = part("Content-Type: text/plain; charset=utf-8", "Hello 世界\r\n".encode())
HTML = part("Content-Type: text/html; charset=utf-8", b"<p>Hello</p>\r\n")


def attachment(filename_params: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    return part(
        f"Content-Type: {ctype}\nContent-Transfer-Encoding: base64\n"
        f"Content-Disposition: attachment; {filename_params}",
        base64.encodebytes(data).replace(b"\n", b"\r\n"),
    )


def ids(parsed: ParsedMessage) -> list[str]:
    return [a.id for a in parsed.attachments]


# -- bodies ----------------------------------------------------------------------------------


def test_single_part_text() -> None:
    parsed = parse_message(message(TEXT))
    assert parsed.text == "Hello 世界\n"
    assert parsed.html is None
    assert parsed.attachments == []
    assert parsed.defects == []
    assert parsed.size == len(message(TEXT))


def test_alternative_picks_text_and_html() -> None:
    parsed = parse_message(message(multipart("alt", TEXT, HTML, subtype="alternative")))
    assert parsed.text == "Hello 世界\n"
    assert parsed.html == "<p>Hello</p>\n"
    assert parsed.attachments == []


def test_quoted_printable_and_charsets() -> None:
    body = quopri.encodestring("Grüße aus Köln — ☕ ".encode() + b"x" * 100 + b"\n")
    qp = part(
        "Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: quoted-printable", body
    )
    assert parse_message(message(qp)).text == "Grüße aus Köln — ☕ " + "x" * 100 + "\n"

    gbk = part(
        "Content-Type: text/plain; charset=gb2312\nContent-Transfer-Encoding: 8bit",
        "朱镕基".encode("gbk"),
    )
    assert parse_message(message(gbk)).text == "朱镕基"

    # Bytes the declared charset cannot decode: UTF-8 is the usual truth.
    for label in ("us-ascii", "iso-2022-jp", "euc-kr"):
        mislabelled = part(f"Content-Type: text/plain; charset={label}", "Grüße ☕".encode())
        assert parse_message(message(mislabelled)).text == "Grüße ☕"
    # A single-byte declared charset decodes anything: the label wins.
    latin1 = part("Content-Type: text/plain; charset=iso-8859-1", "Grüße".encode())
    assert parse_message(message(latin1)).text == "GrÃ¼ÃŸe"

    wrong_utf8 = part("Content-Type: text/plain; charset=utf-8", b"caf\xe9 ok")
    assert parse_message(message(wrong_utf8)).text == "caf\ufffd ok"

    unknown = part("Content-Type: text/plain; charset=x-klingon", "Grüße".encode("latin-1"))
    assert parse_message(message(unknown)).text == "Grüße"

    unlabelled = part("Content-Type: text/plain", "会议".encode("gb18030"))
    assert parse_message(message(unlabelled)).text == "会议"

    cp1252 = part("Content-Type: text/plain; charset=iso-8859-1", b"\x93quoted\x94 \x80")
    assert parse_message(message(cp1252)).text == "\u201cquoted\u201d \u20ac"


def test_body_line_endings_and_controls() -> None:
    raw = message(part("Content-Type: text/plain", b"a\r\nb\nc\rd\x00e\x1b[0m\x0cf\t\r\n"))
    assert parse_message(raw).text == "a\nb\nc\nde[0mf\t\n"


def test_bare_lf_message() -> None:
    raw = message(multipart("b", TEXT, attachment("filename=a.bin", b"\x00\x01")))
    lf = raw.replace(b"\r\n", b"\n")
    assert parse_message(lf).text == parse_message(raw).text
    assert parse_message(lf).attachments == parse_message(raw).attachments


def test_attachment_text_is_not_the_body() -> None:
    raw = message(
        multipart(
            "b",
            part(
                "Content-Type: text/plain\nContent-Disposition: attachment; filename=a.txt", b"file"
            ),
            part("Content-Type: text/plain; name=b.txt", b"named, no disposition"),
            part(
                "Content-Type: text/plain\nContent-Disposition: inline; filename=c.txt",
                b"inline body",
            ),
            part("Content-Type: text/plain", b"second text part"),
        )
    )
    parsed = parse_message(raw)
    assert parsed.text == "inline body"
    assert [(a.id, a.filename) for a in parsed.attachments] == [
        ("1", "a.txt"),
        ("2", "b.txt"),
        ("4", None),
    ]


def test_single_part_attachment_has_id_1() -> None:
    raw = message(
        part(
            "Content-Type: application/pdf\nContent-Transfer-Encoding: base64",
            base64.b64encode(b"%PDF-1.7"),
        )
    )
    parsed = parse_message(raw)
    assert parsed.text is None
    assert parsed.has_attachments_hint is True
    assert [(a.id, a.content_type, a.size) for a in parsed.attachments] == [
        ("1", "application/pdf", 8)
    ]
    found = find_attachment(raw, "1")
    assert found is not None
    assert found.payload == b"%PDF-1.7"


def test_message_without_body_or_separator() -> None:
    assert parse_message(HEAD).text == ""
    assert parse_message(b"").text == ""
    assert parse_message(b"") == parse_message(b"")
    parsed = parse_message(b"Subject: x\r\nno colon here\r\nmore body\r\n")
    assert parsed.subject == "x"
    assert parsed.text == "no colon here\nmore body\n"
    assert "MissingHeaderBodySeparatorDefect" in parsed.defects


# -- headers -----------------------------------------------------------------------------------


def test_headers_references_and_defects() -> None:
    raw = (
        b"Received: from a\r\n\tby b; Wed, 1 May 2024 10:22:33 +0800\r\n"
        b"Subject: =?UTF-8?Q?caf=C3=A9?=\r\n"
        b"References: <a@x>\r\n <b@x>\r\n\t<c@x>\r\n"
        b"References: <d@x>\r\n"
        b"X-Weird: a\x00b\r\n"
        b"\r\nbody\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.headers == [
        ("Received", "from a by b; Wed, 1 May 2024 10:22:33 +0800"),
        ("Subject", "café"),
        ("References", "<a@x> <b@x> <c@x>"),
        ("References", "<d@x>"),
        ("X-Weird", "ab"),
    ]
    assert parsed.references == ["<a@x>", "<b@x>", "<c@x>", "<d@x>"]
    assert parsed.defects == ["missing-date", "missing-from", "missing-message-id"]
    bad_date = parse_message(b"Date: someday\r\nFrom: a@x\r\nMessage-ID: <x@y>\r\n\r\n")
    assert bad_date.defects == ["invalid-date"]


def test_as_api_shape() -> None:
    raw = message(multipart("b", TEXT, attachment("filename=a.bin", b"abc")))
    api = parsed_message(parse_message(raw))
    assert set(api) == {
        "subject", "from", "to", "cc", "reply_to", "date", "message_id", "in_reply_to",
        "content_type", "references", "headers", "text", "html", "attachments", "defects",
    }  # fmt: skip
    assert api["attachments"] == [
        {
            "id": "2",
            "filename": "a.bin",
            "content_type": "application/octet-stream",
            "size": 3,
            "disposition": "attachment",
            "content_id": None,
        }
    ]
    assert api["headers"][0] == {"name": "From", "value": "Alice <alice@example.com>"}
    json.dumps(api, ensure_ascii=False).encode()


# -- filenames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("filename=plain.txt", "plain.txt"),
        ('filename="with space.txt"', "with space.txt"),
        ('filename="quoted \\"name\\".txt"', 'quoted "name".txt'),
        ("filename*=UTF-8''%E4%B8%AD%E6%96%87.pdf", "中文.pdf"),
        ("filename*=utf-8'en'na%C3%AFve%20file.txt", "naïve file.txt"),
        ("filename*=iso-8859-1''caf%E9.txt", "café.txt"),
        ("filename*=gb2312''%E9%95%95.doc", "镕.doc"),
        ("filename*=''no-charset%20given.txt", "no-charset given.txt"),
        ("filename*=x-unknown''caf%C3%A9.txt", "café.txt"),
        (
            "filename*0*=UTF-8''%C3%9Cber; filename*1*=sicht%20; filename*2=final.txt",
            "Übersicht final.txt",
        ),
        ('filename*1="second.txt"; filename*0="first-"', "first-second.txt"),
        ("filename*0*=UTF-8''%E4%B8; filename*1*=%AD.txt", "中.txt"),  # split inside a character
        ("filename=fallback.txt; filename*=UTF-8''preferred.txt", "preferred.txt"),
        ('filename="=?UTF-8?B?5Lit5paH?=.pdf"', "中文.pdf"),
        (f'filename="{encoded_word_b("会议纪要", "GB2312")}.doc"', "会议纪要.doc"),
        ("filename==?ISO-8859-1?Q?r=E9union.txt?=", "réunion.txt"),
        ('filename="../../etc/passwd"', "passwd"),
        ('filename="C:\\\\Users\\\\me\\\\evil.exe"', "evil.exe"),
        ('filename="C:\\Users\\me\\unescaped.exe"', "unescaped.exe"),
        ('filename="/"', None),
        ('filename=".."', None),
        ('filename=""', None),
        ('filename="a\x01b\x7f.txt"', "ab.txt"),
        ('filename="unterminated.txt', "unterminated.txt"),
        ("filename=unquoted with spaces.txt", "unquoted with spaces.txt"),
    ],
)
def test_filenames(params: str, expected: str | None) -> None:
    raw = message(multipart("b", TEXT, attachment(params, b"data")))
    [info] = parse_message(raw).attachments
    assert info.filename == expected


def test_raw_8bit_filenames_and_name_parameter() -> None:
    utf8 = part(
        'Content-Type: application/pdf; name="报告.pdf"'.encode()
        + b"\nContent-Transfer-Encoding: base64",
        b"AAAA",
    )
    gbk = part(
        b'Content-Type: application/pdf\nContent-Disposition: attachment; filename="'
        + "报告.pdf".encode("gbk")
        + b'"',
        b"x",
    )
    raw = message(multipart("b", TEXT, utf8, gbk))
    assert [a.filename for a in parse_message(raw).attachments] == ["报告.pdf", "报告.pdf"]


# -- structure, ids --------------------------------------------------------------------------


def nested_message() -> bytes:
    related = multipart(
        "rel",
        part("Content-Type: text/html", b"<img src=cid:logo@x>"),
        part(
            "Content-Type: image/png\nContent-ID: <logo@x>\nContent-Transfer-Encoding: base64",
            base64.b64encode(b"\x89PNG-logo"),
        ),
        subtype="related",
    )
    alternative = multipart(
        "alt", part("Content-Type: text/plain", b"plain"), related, subtype="alternative"
    )
    return message(
        multipart(
            "outer",
            alternative,
            attachment("filename=one.bin", b"one"),
            multipart(
                "inner",
                attachment("filename=two.bin", b"two"),
                attachment("filename=three.bin", b"three"),
            ),
        )
    )


def test_nested_multiparts_and_part_path_ids() -> None:
    raw = nested_message()
    parsed = parse_message(raw)
    assert parsed.text == "plain"
    assert parsed.html == "<img src=cid:logo@x>"
    assert [(a.id, a.filename, a.disposition, a.content_id) for a in parsed.attachments] == [
        ("1.2.2", None, "inline", "logo@x"),
        ("2", "one.bin", "attachment", None),
        ("3.1", "two.bin", "attachment", None),
        ("3.2", "three.bin", "attachment", None),
    ]
    expected = {"1.2.2": b"\x89PNG-logo", "2": b"one", "3.1": b"two", "3.2": b"three"}
    for attachment_id, payload in expected.items():
        found = find_attachment(raw, attachment_id)
        assert found is not None
        assert found.payload == payload
        assert found.size == len(payload)
        assert isinstance(found, AttachmentInfo)


def test_ids_do_not_depend_on_which_parts_are_bodies() -> None:
    # The same attachments, with and without a text part before them: ids are part paths.
    with_text = parse_message(message(multipart("b", TEXT, attachment("filename=a", b"a"))))
    without = parse_message(
        message(multipart("b", attachment("filename=a", b"a"), TEXT)),
    )
    assert ids(with_text) == ["2"]
    assert ids(without) == ["1"]
    assert with_text.text == without.text


@pytest.mark.parametrize(
    "attachment_id", ["1", "1.1", "0", "", "2.", ".2", "1..2", "a", "99", "1" * 500, "2 "]
)
def test_find_attachment_unknown_ids(attachment_id: str) -> None:
    raw = message(multipart("b", TEXT, attachment("filename=a", b"a")))
    assert find_attachment(raw, attachment_id) is None


def test_message_rfc822_is_one_attachment_and_digest_default() -> None:
    inner = HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\ninner\r\n--x--\r\n"
    raw = message(
        multipart(
            "d",
            b"\r\n" + inner,
            part("Content-Type: message/rfc822", inner),
            subtype="digest",
        )
    )
    parsed = parse_message(raw)
    assert [(a.id, a.content_type, a.size) for a in parsed.attachments] == [
        ("1", "message/rfc822", len(inner)),
        ("2", "message/rfc822", len(inner)),
    ]
    assert parsed.text is None


def test_nesting_is_cut_at_the_depth_limit() -> None:
    depth = MAX_NESTING_DEPTH + 10
    entity = TEXT
    for level in reversed(range(depth)):
        entity = multipart(f"level{level}", entity)
    raw = message(entity)
    parsed = parse_message(raw)
    assert "nesting-too-deep" in parsed.defects
    [opaque] = parsed.attachments
    assert opaque.id == ".".join(["1"] * MAX_NESTING_DEPTH)
    assert opaque.content_type == "multipart/mixed"
    found = find_attachment(raw, opaque.id)
    assert found is not None
    assert b"Hello" in found.payload
    assert parsed.text is None


def test_deep_nesting_just_under_the_limit_is_read() -> None:
    entity = TEXT
    for level in reversed(range(MAX_NESTING_DEPTH)):
        entity = multipart(f"level{level}", entity)
    parsed = parse_message(message(entity))
    assert parsed.text == "Hello 世界\n"
    assert parsed.defects == []


def test_too_many_parts() -> None:
    parts = [part("Content-Type: application/octet-stream", b"x") for _ in range(MAX_PARTS + 50)]
    parsed = parse_message(message(multipart("many", *parts)))
    assert len(parsed.attachments) == MAX_PARTS
    assert parsed.defects == ["too-many-parts"]
    assert parsed.attachments[-1].id == str(MAX_PARTS)


# -- broken boundaries ---------------------------------------------------------------------------


def test_boundary_variants() -> None:
    raw = message(
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b  \t\r\n"  # transport padding after the delimiter
        b"Content-Type: text/plain\r\n\r\nfirst --b not a delimiter\r\n"
        b"--bX\r\nstill the first part\r\n"
        b"--b\n"  # bare LF
        b"Content-Type: application/x-a\r\n\r\nsecond\r\n"
        b"--b-- trailing junk makes this no delimiter\r\n"
        b"--b--\r\n"
        b"--b\r\nafter the close: epilogue\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "first --b not a delimiter\n--bX\nstill the first part"
    [second] = parsed.attachments
    found = find_attachment(raw, second.id)
    assert found is not None
    assert found.payload == b"second\r\n--b-- trailing junk makes this no delimiter"
    assert parsed.defects == []


def test_multipart_without_boundary_parameter() -> None:
    raw = message(b"Content-Type: multipart/mixed\r\n\r\nsome text\r\n")
    parsed = parse_message(raw)
    assert parsed.text == "some text\n"
    assert "NoBoundaryInMultipartDefect" in parsed.defects


def test_only_a_close_delimiter() -> None:
    raw = message(b"Content-Type: multipart/mixed; boundary=b\r\n\r\npreamble\r\n--b--\r\n")
    parsed = parse_message(raw)
    assert parsed.text is None
    assert parsed.attachments == []
    assert "MultipartInvariantViolationDefect" in parsed.defects


def test_inner_part_reusing_the_outer_boundary() -> None:
    raw = message(
        multipart(
            "same",
            b'Content-Type: multipart/alternative; boundary="same"\r\n\r\n',
            part("Content-Type: text/plain", b"text"),
        )
    )
    # The outer split owns every "--same" line: the inner multipart is left with no parts
    # of its own and reads as an (empty) text part; the text after it is a second part.
    parsed = parse_message(raw)
    assert parsed.text == ""
    assert ids(parsed) == ["2"]
    assert "StartBoundaryNotFoundDefect" in parsed.defects


# -- transfer encodings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "decoded", "defects"),
    [
        (b"QUJD\r\nREVG\r\n", b"ABCDEF", set()),
        (b"QUJDRA", b"ABCD", {"InvalidBase64PaddingDefect"}),
        (b"QUJDRA===", b"ABCD", {"InvalidBase64PaddingDefect"}),
        (b"QUJDR", b"ABC", {"InvalidBase64LengthDefect"}),
        (b"QU!JD*RA==", b"ABCD", {"InvalidBase64CharactersDefect"}),
        (b"QQ==QQ==", b"AA", {"InvalidBase64PaddingDefect"}),
        (b"\xff\xfe", b"", {"InvalidBase64CharactersDefect"}),
        (b"", b"", set()),
    ],
)
def test_base64_decoded_as_far_as_possible(
    encoded: bytes, decoded: bytes, defects: set[str]
) -> None:
    raw = message(
        multipart(
            "b",
            TEXT,
            part("Content-Type: application/x-a\nContent-Transfer-Encoding: BASE64", encoded),
        )
    )
    parsed = parse_message(raw)
    [info] = parsed.attachments
    assert info.size == len(decoded)
    found = find_attachment(raw, info.id)
    assert found is not None
    assert found.payload == decoded
    assert set(parsed.defects) == defects


def test_invalid_base64_text_body() -> None:
    raw = message(
        part(
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64",
            b"5Lit5paH!!!",
        )
    )
    parsed = parse_message(raw)
    assert parsed.text == "中文"
    assert parsed.defects == ["InvalidBase64CharactersDefect"]


def test_unknown_transfer_encoding_is_identity() -> None:
    raw = message(part("Content-Type: text/plain\nContent-Transfer-Encoding: x-unknown", b"as is"))
    assert parse_message(raw).text == "as is"
