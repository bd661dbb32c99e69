"""The multi-line parser and status lines, on every chunking hypothesis can think of."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pop3.errors import POP3ProtocolError
from gateway.pop3.protocol import StatusLine, complete_reply, scan_body


def stuff(body: bytes) -> bytes:
    """What a correct server sends for ``body`` (lines ending in CRLF): dot-stuffed + end."""
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    out = [b"." + line if line.startswith(b".") else line for line in lines[:-1]]
    return b"".join(line + b"\r\n" for line in out) + b".\r\n"


def parse_in_chunks(wire: bytes, cuts: list[int]) -> tuple[bytes, bytes]:
    """Feed ``wire`` split at ``cuts``; return (body, what is left after the terminator)."""
    buf = bytearray()
    out: list[bytes | bytearray] = []
    at_line_start = True
    points = [*sorted({c for c in cuts if 0 < c < len(wire)}), len(wire)]
    start = 0
    for point in points:
        buf += wire[start:point]
        start = point
        pos, at_line_start, done = scan_body(buf, 0, at_line_start, out)
        del buf[:pos]
        if done:
            return b"".join(out), bytes(buf) + wire[start:]
    raise AssertionError("terminator not found")


line_text = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
dotty_line = st.one_of(line_text, line_text.map(lambda b: b"." + b), st.just(b"."))
bodies = st.lists(dotty_line, max_size=30).map(lambda ls: b"".join(x + b"\r\n" for x in ls))


@settings(max_examples=400)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20))
def test_unstuffing_round_trips_on_any_chunking(body: bytes, cuts: list[int]) -> None:
    wire = stuff(body) + b"+OK next reply\r\n"
    got, rest = parse_in_chunks(wire, cuts)
    assert got == body
    assert rest == b"+OK next reply\r\n"


@settings(max_examples=200)
@given(body=bodies)
def test_one_byte_chunks(body: bytes) -> None:
    wire = stuff(body)
    got, rest = parse_in_chunks(wire, list(range(len(wire))))
    assert got == body
    assert rest == b""


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (b".\r\n", b""),
        (b".\n", b""),  # a bare-LF server
        (b"a\nb\n.\n", b"a\nb\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..x\n.\n", b".x\n"),
        (b"a\rb\r\n.\r\n", b"a\rb\r\n"),  # bare CR inside a line is data
        (b".\rx\r\n.\r\n", b"\rx\r\n"),  # ".\r" not followed by LF is a stuffed line
        (b"x.\r\n.\r\n", b"x.\r\n"),
    ],
)
def test_edge_cases(wire: bytes, body: bytes) -> None:
    for cuts in ([], list(range(len(wire)))):
        assert parse_in_chunks(wire, cuts) == (body, b"")


def _scan_reply(wire: bytes) -> tuple[bytes, bytes, int] | None:
    """The general reader's view of a ``+OK`` reply at the start of ``wire``: (status line,
    body, bytes used), or None while incomplete."""
    hit = wire.find(b"\n")
    if hit < 0:
        return None
    out: list[bytes | bytearray] = []
    pos, _at_line_start, done = scan_body(bytearray(wire[hit + 1 :]), 0, True, out)
    if not done:
        return None
    return wire[:hit].removesuffix(b"\r"), b"".join(out), hit + 1 + pos


anything = st.lists(
    st.one_of(dotty_line, st.sampled_from([b"\r", b"\n", b".", b"\r\n", b".\r", b".\n"])),
    max_size=30,
).map(b"".join)


@settings(max_examples=600)
@given(body=st.one_of(bodies.map(stuff), anything), cut=st.integers(min_value=0, max_value=3000))
def test_complete_reply_agrees_with_the_streaming_parser(body: bytes, cut: int) -> None:
    """The burst reader (whole replies already buffered) and the streaming parser give the
    same status, body and consumed length, on any bytes and any prefix of them; an
    incomplete reply consumes nothing."""
    wire = (b"+OK 12 octets\r\n" + body + b"-ERR next\r\n")[:cut]
    expected = _scan_reply(wire)
    buf = bytearray(wire)
    line, got, used = complete_reply(buf, 8192, True)
    if expected is None:
        assert used == 0
        assert got is None
    else:
        assert (line, got, used) == expected
    assert buf == wire  # it reads, the caller consumes


def test_complete_reply_single_line_and_limits() -> None:
    assert complete_reply(bytearray(b"-ERR no such message\r\n+OK"), 512, True) == (
        b"-ERR no such message",
        None,
        22,
    )
    assert complete_reply(bytearray(b"+OK 3 octets\n"), 512, False) == (b"+OK 3 octets", None, 13)
    # A status line past the cap, or one not yet ended, is left to the streaming reader.
    assert complete_reply(bytearray(b"+OK " + b"x" * 600 + b"\r\n.\r\n"), 512, True)[2] == 0
    assert complete_reply(bytearray(b"+OK partial"), 512, True)[2] == 0


def test_long_line_streams_without_a_line_end() -> None:
    big = b"x" * 1_000_000
    buf = bytearray(big)
    out: list[bytes | bytearray] = []
    pos, at_line_start, done = scan_body(buf, 0, True, out)
    assert (pos, at_line_start, done) == (len(big), False, False)
    assert b"".join(out) == big


@pytest.mark.parametrize(
    ("line", "ok", "code", "text"),
    [
        (b"+OK", True, None, ""),
        (b"+OK 2 320", True, None, "2 320"),
        (b"-ERR", False, None, ""),
        (b"-ERR [IN-USE] locked", False, "IN-USE", "locked"),
        (b"-ERR [SYS/TEMP]", False, "SYS/TEMP", ""),
        (b"-ERR [login-delay] wait", False, "LOGIN-DELAY", "wait"),
        (b"-ERR [X-UNKNOWN/Y] odd", False, "X-UNKNOWN/Y", "odd"),
        (b"-ERR [] empty brackets", False, None, "[] empty brackets"),
        (b"+OK \xff\xfe", True, None, "\ufffd\ufffd"),
    ],
)
def test_status_lines(line: bytes, ok: bool, code: str | None, text: str) -> None:
    status = StatusLine.parse(line)
    assert (status.ok, status.code, status.text, status.continuation) == (ok, code, text, False)


@pytest.mark.parametrize("line", [b"+ ", b"+", b"+ dGVzdA=="])
def test_continuations(line: bytes) -> None:
    status = StatusLine.parse(line)
    assert status.continuation
    assert status.ok


@pytest.mark.parametrize("line", [b"", b"OK", b"+OKAY", b"-ERROR x", b"* 1 EXISTS", b"\x00"])
def test_garbage_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(POP3ProtocolError):
        StatusLine.parse(line)


@given(st.binary(max_size=600))
def test_status_parser_never_crashes(line: bytes) -> None:
    try:
        status = StatusLine.parse(line)
    except POP3ProtocolError:
        return
    assert isinstance(status.text, str)
