"""Properties of the POP3 framing: status lines and multi-line bodies from any bytes, in any
chunking (gateway/pop3/protocol.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.pop3 import POP3ProtocolError
from gateway.pop3.protocol import StatusLine, scan_body
from tests.fuzz.profiles import budget, ran

# -- status lines ----------------------------------------------------------------------------

HEADS = [b"+OK", b"-ERR", b"+", b"+ ", b"+OKAY", b"-ERRor", b"-", b"OK", b"+ok", b"-err", b""]
SEPARATORS = [b"", b" ", b"\t", b"  ", b"\x00", b"\r", b"\xa0"]
CODES = [
    b"",
    b"[IN-USE] ",
    b"[LOGIN-DELAY] ",
    b"[SYS/TEMP] ",
    b"[sys/perm] ",
    b"[AUTH]",
    b"[]",
    b"[",
    b"]",
    b"[[X]] ",
    b"[\xff] ",
]
TEXTS = st.one_of(
    st.sampled_from([b"", b"2 320", "² 5".encode(), b"\xff\xfe", b"<1.2@host>", b" x "]),
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@st.composite
def status_lines(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    return b"".join(
        (
            draw(st.sampled_from(HEADS)),
            draw(st.sampled_from(SEPARATORS)),
            draw(st.sampled_from(CODES)),
            draw(TEXTS),
        )
    )


@given(status_lines())
@budget("framing: StatusLine.parse", default=500, long=20_000)
def test_status_line_parse(line: bytes) -> None:
    ran("framing: StatusLine.parse")
    try:
        status = StatusLine.parse(line)
    except POP3ProtocolError:
        assert not line.startswith((b"+OK ", b"+OK\t", b"-ERR ", b"-ERR\t", b"+ "))
        assert line not in (b"+OK", b"-ERR", b"+")
        return
    assert isinstance(status.text, str)
    if status.continuation:
        assert status.ok
        assert line == b"+" or line.startswith(b"+ ")
        assert status.code is None
    else:
        assert status.ok is line.startswith(b"+OK")
        assert line.startswith(b"+OK" if status.ok else b"-ERR")
        assert status.code is None or (status.code and status.code == status.code.upper())
        assert status.code is None or "]" not in status.code
    status.text.encode("utf-8")  # a text that cannot be encoded would break logs and JSON


# -- multi-line bodies ---------------------------------------------------------------------


def reference(data: bytes) -> tuple[bytes, int, bool]:
    """A line-by-line model of RFC 1939 multi-line framing: (unstuffed output, bytes consumed,
    terminated) for all of ``data``. A line ends at LF; the terminator is ``.`` before CRLF or
    a bare LF; a final ``.`` or ``.\\r`` may yet become the terminator, so it waits."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline + 1
        line = data[pos:end]
        if line in (b".\n", b".\r\n"):
            return bytes(out), end, True
        if line in (b".", b".\r"):
            return bytes(out), pos, False
        out += line[1:] if line.startswith(b".") else line
        pos = end
    return bytes(out), pos, False


def feed(chunks: list[bytes]) -> tuple[bytes, int, bool, bool]:
    """``scan_body`` driven as POP3Stream drives it: the buffer grows by a chunk, the parsed
    prefix is cut off. Returns (output, consumed, terminated, at_line_start)."""
    buffer = bytearray()
    out: list[bytes | bytearray] = []
    at_line_start = True
    consumed = 0
    done = False
    for chunk in chunks:
        buffer += chunk
        pos, at_line_start, done = scan_body(buffer, 0, at_line_start, out)
        assert 0 <= pos <= len(buffer)
        del buffer[:pos]
        consumed += pos
        if done:
            break
    return b"".join(out), consumed, done, at_line_start


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = []
    start = 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


BODY_LINES = st.one_of(
    st.sampled_from(
        [
            b".",
            b"..",
            b"...",
            b".x",
            b". ",
            b".\r",
            b"\r",
            b"",
            b"Subject: hi",
            b"1 uid-1",
            b"\x00\xff",
            b"x\r.",
        ]
    ),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
)
EOLS = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=400))
    lines = draw(st.lists(st.tuples(BODY_LINES, EOLS), max_size=20))
    data = b"".join(text + eol for text, eol in lines)
    terminator = draw(st.sampled_from([b".\r\n", b".\n", b"", b".", b".\r", b"..\r\n"]))
    return data + terminator + draw(st.binary(max_size=20))


@given(bodies(), st.lists(st.integers(0, 500), max_size=12))
@budget("framing: scan_body chunking", default=400, long=20_000)
def test_scan_body_any_chunking(data: bytes, cuts: list[int]) -> None:
    ran("framing: scan_body chunking")
    expected, consumed, done = reference(data)
    one_shot = feed([data])
    chunked = feed(split(data, cuts))
    byte_by_byte = feed([data[i : i + 1] for i in range(len(data))])
    for got in (one_shot, chunked, byte_by_byte):
        assert got[:3] == (expected, consumed, done)
        if not done:
            assert got[3] is (consumed == 0 or data[consumed - 1] == 0x0A)


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=25),
    st.binary(max_size=30),
    st.lists(st.integers(0, 1200), max_size=10),
)
@budget("framing: dot-stuffing round trip", default=200, long=10_000)
def test_dot_stuffed_message_round_trips(lines: list[bytes], after: bytes, cuts: list[int]) -> None:
    """A message sent as RFC 1939 says (each line CRLF-ended, leading dots doubled, then
    ``.CRLF``) comes out byte for byte, in any chunking; what follows is left unread."""
    ran("framing: dot-stuffing round trip")
    message = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    wire += b".\r\n"
    output, consumed, done, _ = feed(split(wire + after, cuts))
    assert done
    assert output == message
    assert consumed == len(wire)
