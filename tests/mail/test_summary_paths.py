"""The two ways to a header summary agree: the direct reading of plain ASCII sections (the
listing's hot path) gives exactly what the general parser gives, on the seeded corpus and
on generated sections built to sit on the edges between the two."""

from __future__ import annotations

import datetime as dt
import email.utils

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.mail._headers import _COMMON_DATE, _MONTHS, parse_date, split_headers
from gateway.mail.summary import _plain_summary, summarize, summary_from_block
from tests.support.corpus import generate_corpus, simple_message


def general(raw: bytes) -> object:
    return summary_from_block(split_headers(raw), size=7)


def test_the_corpus_reads_the_same_both_ways() -> None:
    plain = 0
    for message in [*generate_corpus(), *(simple_message(i) for i in range(200))]:
        raw = message if isinstance(message, bytes) else message.raw
        assert summarize(raw, size=7) == general(raw)
        plain += _plain_summary(raw, 7) is not None
    # The common case really takes the direct way (else this test would prove nothing).
    assert plain >= 200


NAMES = [
    "Subject", "subject", "FROM", "From", "To", "to", "Cc", "Reply-To", "Date", "Message-ID",
    "In-Reply-To", "Content-Type", "Content-Disposition", "Received", "X-To", "To-Do",
    "From ", "Subject\t", "Sender", "Resent-From",
]  # fmt: skip
VALUES = [
    "", " ", "plain text", "=?utf-8?q?caf=C3=A9?= x", "Ann <a@x.test>", "a@x.test, b@y.test",
    '"Doe, J" <j@x.test>', "(comment) c@x.test", "Team: a@x.test, b@y.test;", "<id@x>",
    "<a@b> <c@d>", "multipart/mixed; boundary=x", "Text/HTML ; charset=utf-8",
    "application/pdf", "attachment; filename=a.pdf", "inline", "Mon, 01 Jan 2024 09:08:00 +0000",
    "1 Feb 2023 23:59:60 -0130", "31 Apr 2024 10:00 +0000", "Tue, 29 Feb 2023 01:02:03 +9999",
    "garbage date", " leading and trailing ", "tab\tinside", "bell\x07and del\x7f", "x" * 300,
    # past the summary's caps: display name, address, address count, content type
    '"' + "N" * 300 + '" <n@x.test>', "l" * 400 + "@x.test", "Long " + "n" * 300 + " <l@x.test>",
    ", ".join(f"r{i}@x.test" for i in range(105)), "text/" + "h" * 300,
    "multipart/" + "m" * 300, "<" + "i" * 2100 + "@x>",
]  # fmt: skip
line = st.one_of(
    st.builds(lambda n, v: f"{n}: {v}", st.sampled_from(NAMES), st.sampled_from(VALUES)),
    st.builds(lambda n, v: f"{n}:{v}", st.sampled_from(NAMES), st.sampled_from(VALUES)),
    st.sampled_from([" continued", "\tcontinued", "not a field", "From x@y Mon", ":", ""]),
    st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=20),
)
eol = st.sampled_from(["\r\n", "\n", "\r"])


@settings(max_examples=1500)
@given(lines=st.lists(st.tuples(line, eol), max_size=12), tail=st.sampled_from(["", "\r\n", "\n"]))
@example(lines=[("Subject: a", "\r\n"), (" b", "\r\n")], tail="\r\n")
@example(lines=[("To: a@x", "\n"), ("Cc: b@y", "\n"), ("To: c@z", "\n")], tail="\n")
@example(
    lines=[
        (f"{name}: {first}", "\r\n")
        for name, first in (
            ("Subject", "one"),
            ("Date", "Mon, 01 Jan 2024 09:08:00 +0000"),
            ("Message-ID", "<a@x>"),
            ("In-Reply-To", "<b@x>"),
            ("From", "a@x.test"),
            ("Content-Type", "text/html"),
            ("Content-Disposition", "attachment"),
        )
    ]
    + [
        (f"{name}: {second}", "\r\n")
        for name, second in (
            ("subject", "two"),
            ("DATE", "2 Feb 2023 10:00 -0500"),
            ("message-id", "<c@x>"),
            ("in-reply-to", "<d@x>"),
            ("from", "b@y.test"),
            ("content-type", "multipart/mixed"),
            ("content-disposition", "inline"),
        )
    ],
    tail="\r\n",
)  # every single-valued field twice: the first wins both ways
def test_generated_sections_read_the_same_both_ways(
    lines: list[tuple[str, str]], tail: str
) -> None:
    raw = ("".join(text + end for text, end in lines) + tail + "body\r\n").encode()
    assert summarize(raw, size=7) == general(raw)


def _datetime_iso(value: str) -> str | None:
    """The reference: the common form through ``datetime`` (what parse_date did first)."""
    found = _COMMON_DATE.fullmatch(value)
    assert found is not None
    day, month, year, hour, minute, second, sign, tz_hours, tz_minutes = found.groups()
    offset = (int(tz_hours) * 60 + int(tz_minutes)) * (-60 if sign == "-" else 60)
    try:
        when = dt.datetime(
            int(year),
            _MONTHS[month.lower()],
            int(day),
            int(hour),
            int(minute),
            min(int(second or 0), 59),
            tzinfo=dt.timezone(dt.timedelta(seconds=offset)),
        )
    except ValueError:
        return None
    return when.isoformat()


digits = st.integers(min_value=0, max_value=99).map(lambda n: f"{n:02d}")


@settings(max_examples=2000)
@given(
    day=st.integers(min_value=0, max_value=39),
    month=st.sampled_from(list(_MONTHS)),
    year=st.integers(min_value=0, max_value=9999),
    hour=digits,
    minute=digits,
    second=st.one_of(st.none(), digits),
    sign=st.sampled_from("+-"),
    tz=st.tuples(digits, digits),
)
@example(day=29, month="feb", year=2000, hour="00", minute="00", second=None, sign="-",
         tz=("00", "00"))  # fmt: skip
@example(day=29, month="feb", year=1900, hour="23", minute="59", second="60", sign="+",
         tz=("23", "59"))  # fmt: skip
def test_common_dates_read_as_datetime_does(
    day: int,
    month: str,
    year: int,
    hour: str,
    minute: str,
    second: str | None,
    sign: str,
    tz: tuple[str, str],
) -> None:
    seconds = "" if second is None else f":{second}"
    value = f"{day} {month.title()} {year:04d} {hour}:{minute}{seconds} {sign}{tz[0]}{tz[1]}"
    assert parse_date(value) == _datetime_iso(value)


def test_other_date_forms_still_go_through_the_standard_library() -> None:
    value = "Monday, 1-Jan-24 09:08:00 GMT"
    parsed = email.utils.parsedate_tz(value)
    assert parsed is not None
    assert parse_date(value) == "2024-01-01T09:08:00+00:00"
