"""Header blocks from bytes: fields, parameters (RFC 2045/2231), addresses, dates.

Linear-time on any input, with no recursion: the standard library's parameter splitter is
quadratic in the number of ``;`` inside quotes, and its address parser recurses on nested
comments and groups (``RecursionError`` on a few thousand ``(``), so both are done here.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import email.utils
import functools
import re
import urllib.parse
from dataclasses import dataclass

from ._text import (
    clean_header,
    decode_declared,
    decode_encoded_words,
    header_fallback,
)

__all__ = [
    "MAX_FIELD_BYTES",
    "HeaderBlock",
    "parse_addresses",
    "parse_date",
    "parse_params",
    "split_headers",
    "unfold",
]

# One field: a name of printable ASCII except ":", optional blanks, ":", the value up to the
# line end, and any continuation lines (starting with a space or tab).
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")
# The same, or any other line (captured as two empty groups); used to check a whole section.
_FIELD_OR_LINE = re.compile(
    rb"(?:([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)|[^\n]*\n|[^\n]+)"
)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_MISSING_SEPARATOR = email.errors.MissingHeaderBodySeparatorDefect.__name__
_FIRST_CONTINUATION = email.errors.FirstHeaderLineIsContinuationDefect.__name__
_MISPLACED_ENVELOPE = email.errors.MisplacedEnvelopeHeaderDefect.__name__


@dataclass(slots=True)
class HeaderBlock:
    """The header fields of a message or MIME part, still as bytes (folded)."""

    fields: list[tuple[bytes, bytes]]
    body_start: int
    defects: list[str]
    _names: list[bytes] | None = None
    _fallback: str | None = None
    hint: str | None = None

    def _lower_names(self) -> list[bytes]:
        if self._names is None:
            self._names = [name.lower() for name, _value in self.fields]
        return self._names

    def raw(self, name: bytes) -> bytes | None:
        """The first value of field `name` (lower-case), unfolded, or None."""
        names = self._lower_names()
        if name not in names:
            return None
        return unfold(self.fields[names.index(name)][1])

    def raw_all(self, name: bytes) -> list[bytes]:
        """Every value of field `name` (lower-case), unfolded, in order."""
        names = self._lower_names()
        if name not in names:
            return []
        return [unfold(f[1]) for n, f in zip(names, self.fields, strict=True) if n == name]

    def text(self, value: bytes) -> str:
        """Header bytes as text: raw 8-bit decoded with the block's charset choice."""
        if value.isascii():
            return value.decode("ascii")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if self._fallback is None:
            self._fallback = header_fallback((v for _n, v in self.fields), self.hint)
        return value.decode(self._fallback, errors="replace")

    def decoded(self, value: bytes) -> str:
        """Header bytes as display text: 8-bit and RFC 2047 decoded, controls removed."""
        return clean_header(decode_encoded_words(self.text(value)))


#: The most of one field's (unfolded) value anything reads: what a summary or a parsed
#: message shows of a field needs far less (100 addresses are a few KB), and a stranger
#: can send a header of megabytes, whose decoding and address parsing would otherwise cost
#: seconds of CPU per message. RFC 5322 (section 2.1.1) limits a line to 998 octets; real
#: folded fields stay well under this.
MAX_FIELD_BYTES = 64 * 1024


def unfold(value: bytes) -> bytes:
    """A field value without its line breaks (RFC 5322 unfolding) and outer blanks, cut at
    :data:`MAX_FIELD_BYTES` (so that the work done with it is bounded: what is past the cut
    of a hostile field, a display name of megabytes say, is not read at all)."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    value = value.strip(b" \t\r")
    return value if len(value) <= MAX_FIELD_BYTES else value[:MAX_FIELD_BYTES]


def split_headers(raw: bytes, start: int = 0, end: int | None = None) -> HeaderBlock:
    """Split the header fields of ``raw[start:end]`` from its body.

    The header section ends at the first empty line (LF or CRLF line endings, mixed or not).
    A line that is neither a field nor a continuation also ends it (the body starts there,
    as the standard library's parser does, with the same defect name).
    """
    if end is None:
        end = len(raw)
    fields: list[tuple[bytes, bytes]] = []
    defects: list[str] = []
    if raw.startswith(b"\n", start, end):
        return HeaderBlock(fields, start + 1, defects)
    if raw.startswith(b"\r\n", start, end):
        return HeaderBlock(fields, start + 2, defects)
    blank = _BLANK_LINE.search(raw, start, end)
    # The fields end where the empty line starts; the body after it.
    section_end, body_start = (end, end) if blank is None else (blank.start() + 1, blank.end())
    # Fast path: every line of the section is a field or a continuation.
    found_all = _FIELD_OR_LINE.findall(raw, start, section_end)
    if (b"", b"") not in found_all:
        return HeaderBlock(found_all, body_start, defects)
    pos = start
    while True:
        found = _FIELD.match(raw, pos, section_end)
        while found is not None:
            fields.append((found.group(1), found.group(2)))
            pos = found.end()
            found = _FIELD.match(raw, pos, section_end)
        if pos >= section_end:
            return HeaderBlock(fields, body_start, defects)
        line_end = raw.find(b"\n", pos, section_end)
        next_line = section_end if line_end < 0 else line_end + 1
        if raw.startswith(b"From ", pos, section_end):
            # An mbox envelope line: expected first, tolerated anywhere else.
            if pos != start:
                defects.append(_MISPLACED_ENVELOPE)
        elif not fields and raw[pos] in b" \t":
            defects.append(_FIRST_CONTINUATION)
        else:
            defects.append(_MISSING_SEPARATOR)
            return HeaderBlock(fields, pos, defects)
        pos = next_line


# -- parameters ------------------------------------------------------------------------------

_PARAM = re.compile(r';[ \t]*([^\s;="]+)[ \t]*(?:=[ \t]*("(?:[^"\\]|\\.)*(?:"|\Z)|[^;]*))?', re.S)
# Only \\ and \" are unescaped, as the standard library does: Windows paths in quoted
# filenames ("C:\Users\me\a.pdf") are common and keep their backslashes.
_QUOTED_PAIR = re.compile(r'\\([\\"])')
_SECTION = re.compile(r"([^*]+)\*([0-9]{1,4})?(\*)?")
_MAX_PARAMS = 64


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``main; a=1; b="two"`` into the lower-cased main value and parameters.

    Parameter names are lower-cased; the first occurrence wins; RFC 2231 forms
    (``name*``, ``name*0*``, ``name*1``...) are joined and decoded and take precedence over
    a plain ``name=``.
    """
    main, _sep, rest = value.partition(";")
    params: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[bool, str]]] = {}
    if rest:
        for count, found in enumerate(_PARAM.finditer(";" + rest)):
            if count >= _MAX_PARAMS:
                break
            key, raw_value = found.group(1).lower(), found.group(2)
            if raw_value is None:
                continue
            if raw_value.startswith('"'):
                inner = (
                    raw_value[1:-1]
                    if raw_value.endswith('"') and len(raw_value) > 1
                    else raw_value[1:]
                )
                text = _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
            else:
                text = raw_value.strip()
            if "*" in key:
                section = _SECTION.fullmatch(key)
                if section is not None:
                    name, number, star = section.groups()
                    extended = number is None or star is not None
                    sections.setdefault(name, {}).setdefault(int(number or 0), (extended, text))
                    continue
            params.setdefault(key, text)
    for name, parts in sections.items():
        params[name] = _join_rfc2231(parts)
    return main.strip().lower(), params


def _join_rfc2231(parts: dict[int, tuple[bool, str]]) -> str:
    charset: str | None = None
    out: list[str] = []
    pending = bytearray()
    numbers = sorted(parts)
    for number in numbers:
        extended, text = parts[number]
        if not extended:
            if pending:
                out.append(decode_declared(bytes(pending), charset))
                pending.clear()
            out.append(text)
            continue
        if number == numbers[0] and text.count("'") >= 2:
            charset, _language, text = text.split("'", 2)
        pending += urllib.parse.unquote_to_bytes(text.encode("utf-8", "surrogatepass"))
    if pending:
        out.append(decode_declared(bytes(pending), charset))
    return "".join(out)


# -- addresses -------------------------------------------------------------------------------

# Tokens outside comments: a quoted string, a comment opener, an angle address, a special,
# a run of other characters, or whitespace.
_ADDRESS_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|<[^>]*(?:>|\Z)|[,;:]|[^"(<,;:\s]+|\s+|.', re.S)
_COMMENT_TOKEN = re.compile(r"[^()\\]+|\\.|\(|\)|\\", re.S)


# One mailbox without quotes, comments, groups or lists: "Name <a@b>", "<a@b>" or "a@b".
_ATOM = r"[^\x00-\x20\x7f\"(),;:<>\\@\[\]]+"
_ADDR_CHARS = r"[^\x00-\x20\x7f\"(),;:<>\\]"
_NEEDS_FULL_PARSE = re.compile(r'["()\\:;]')
_SIMPLE_MAILBOX = re.compile(
    rf"[ \t]*(?:({_ATOM}(?:[ \t]+{_ATOM})*)?[ \t]*<({_ADDR_CHARS}*)>"
    rf"|({_ADDR_CHARS}+@{_ADDR_CHARS}+))[ \t]*"
)


def _split_mailboxes(value: str) -> list[tuple[list[str], list[str]]]:
    """Top-level mailboxes as (tokens, comments); groups are flattened."""
    mailboxes: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    comments: list[str] = []
    pos, end = 0, len(value)
    while pos < end:
        token = _ADDRESS_TOKEN.match(value, pos)
        if token is None:  # not reached: the last alternative matches any character
            break
        text = token.group()
        pos = token.end()
        if text == "(":
            depth, start = 1, pos
            while pos < end and depth:
                inner = _COMMENT_TOKEN.match(value, pos)
                if inner is None:  # not reached: the pattern matches any character
                    break
                depth += {"(": 1, ")": -1}.get(inner.group(), 0)
                pos = inner.end()
            comments.append(value[start : pos - 1 if depth == 0 else pos])
            tokens.append(" ")
        elif text in (",", ";"):
            if tokens or comments:
                mailboxes.append((tokens, comments))
            tokens, comments = [], []
        elif text == ":":
            # A group's display name ("Team: a@x, b@y;"): drop it, keep its members.
            tokens, comments = [], []
        else:
            tokens.append(text)
    if tokens or comments:
        mailboxes.append((tokens, comments))
    return mailboxes


def _unquote(token: str) -> str:
    if token.startswith('"'):
        token = token[1:-1] if token.endswith('"') and len(token) > 1 else token[1:]
        return _QUOTED_PAIR.sub(r"\1", token) if "\\" in token else token
    return token


def _comment_name(comments: list[str]) -> str:
    return " ".join(_QUOTED_PAIR.sub(r"\1", c).strip() for c in comments if c.strip())


def parse_addresses(value: str) -> list[tuple[str | None, str]]:
    """``(display name, address)`` pairs of an address-list header; names RFC 2047 decoded.

    Lenient like a mail client: obsolete forms, missing brackets and unbalanced quotes give
    a best-effort reading, never an exception. Entries with neither a name nor an address
    are dropped; a bare phrase with no ``@`` ("Mailer Daemon") is a name with an empty
    address.
    """
    if not _NEEDS_FULL_PARSE.search(value):
        # Fast path: a list of simple mailboxes (no quotes, comments, groups or routes).
        simple: list[tuple[str | None, str]] = []
        for piece in value.split(","):
            found = _SIMPLE_MAILBOX.fullmatch(piece)
            if found is None:
                if piece.strip(" \t"):
                    break
                continue
            phrase, angle, bare = found.groups()
            address = clean_header(bare if bare is not None else angle)
            name = clean_header(decode_encoded_words(" ".join(phrase.split()))) if phrase else ""
            if name or address:
                simple.append((name or None, address))
        else:
            return simple
    result: list[tuple[str | None, str]] = []
    for tokens, comments in _split_mailboxes(value):
        angle = next((i for i, t in enumerate(tokens) if t.startswith("<")), None)
        if angle is not None:
            address = tokens[angle][1:].removesuffix(">")
            if ":" in address:  # obsolete source route: <@a,@b:user@host>
                address = address.rsplit(":", 1)[1]
            phrase = "".join(_unquote(t) for t in tokens[:angle])
            name = " ".join(phrase.strip('"').split()) or _comment_name(comments)
        else:
            words = "".join(tokens).split()
            joined = "".join(tokens)
            if len(words) > 1 and "@" not in joined:
                name, address = " ".join(_unquote(w) for w in words), ""
            else:
                address, name = "".join(words), _comment_name(comments)
        address = clean_header(address).replace(" ", "")
        display = clean_header(decode_encoded_words(name)) if name else ""
        if address or display:
            result.append((display or None, address))
    return result


# -- dates -----------------------------------------------------------------------------------


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
# The form nearly every mailer writes: [Day, ]DD Mon YYYY HH:MM[:SS] +HHMM [(comment)]
_COMMON_DATE = re.compile(
    r"(?:[A-Za-z]{3},\s*)?([0-9]{1,2})\s+([A-Za-z]{3})\s+([0-9]{4})\s+"
    r"([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?\s+([+-])([0-9]{2})([0-9]{2})(?:\s*\(.*\))?\s*",
    re.S,
)


_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_date(value: str) -> str | None:
    """An RFC 5322 date as ISO 8601 with its offset, or None when it cannot be read."""
    common = _COMMON_DATE.fullmatch(value)
    if common is not None:
        month = _MONTHS.get(common.group(2).lower())
        if month is not None:
            return _common_date(common, month)
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        when = dt.datetime(
            *parsed[:5],
            min(parsed[5], 59),
            tzinfo=dt.timezone(dt.timedelta(seconds=parsed[9] or 0)),
        )
    except Exception:  # the standard library's date parser raises odd errors on junk
        return None
    return when.isoformat()


def _common_date(found: re.Match[str], month: int) -> str | None:
    """``datetime(...).isoformat()`` of the common form, written directly (a listing reads
    one date per message): the same text, and None where ``datetime`` would refuse it.
    Hours, minutes and seconds are two ASCII digits each, so they are compared as text."""
    day, _, year, hour, minute, second, sign, tz_hours, tz_minutes = found.groups()
    date = _calendar_day(int(year), month, int(day))
    zone = _zone(sign, tz_hours, tz_minutes)
    if date is None or zone is None or hour > "23" or minute > "59":
        return None
    if second is None:
        second = "00"
    elif second > "59":
        second = "59"
    return f"{date}T{hour}:{minute}:{second}{zone}"


@functools.lru_cache(maxsize=4096)
def _calendar_day(y: int, month: int, d: int) -> str | None:
    """``YYYY-MM-DD``, or None for a day that does not exist (mail of a mailbox comes from
    a few years: the same days over and over)."""
    last = _DAYS_IN_MONTH[month]
    if month == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0):
        last = 29
    if not (y >= 1 and 1 <= d <= last):
        return None
    return f"{y:04d}-{month:02d}-{d:02d}"


@functools.lru_cache(maxsize=1024)
def _zone(sign: str, tz_hours: str, tz_minutes: str) -> str | None:
    """``+HH:MM`` of a ``+HHMM`` offset (``-0000`` is ``+00:00``), or None past a day."""
    offset = int(tz_hours) * 60 + int(tz_minutes)
    if offset >= 24 * 60:
        return None
    east = "-" if sign == "-" and offset else "+"
    return f"{east}{offset // 60:02d}:{offset % 60:02d}"
