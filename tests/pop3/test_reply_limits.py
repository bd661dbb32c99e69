"""Every multi-line reply read into memory has a byte cap: a server whose UIDL, LIST, CAPA or
TOP reply never ends gets POP3ResponseTooLargeError once the cap is passed, the session is
closed (it is mid-reply), and what the gateway holds meanwhile stays flat."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.pop3 import (
    POP3Client,
    POP3ProtocolError,
    POP3ResponseError,
    POP3ResponseTooLargeError,
    ReplyLimits,
    State,
    Timeouts,
    TLSMode,
    TruncatedBody,
)
from gateway.pop3.client import (
    DEFAULT_MAX_CAPA_BYTES,
    DEFAULT_MAX_LISTING_BYTES,
    DEFAULT_MAX_TOP_BYTES,
)
from gateway.pop3.protocol import READ_HIGH_WATER
from tests.support.fakepop3 import Endless, FakeMailbox, FakePOP3Server, Reply

FAST = Timeouts(connect=2, tls=2, command=2, idle=2)
CAP = 256 * 1024
#: What may be held besides the capped body: the read buffer (paused at its high-water
#: mark, plus one more read), the fake server's own 64 KiB writes and transport buffers.
SLACK = 4 * 1024 * 1024
#: Far more than the cap: a client without one would hold all of it.
ENDLESS = 64 * 1024 * 1024
MESSAGES = [
    ("uid-1", b"Subject: one\r\n\r\nfirst\r\n"),
    ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
]
#: a TOP reply past its cap is read on and dropped up to this, then fails
SKIP = 4 * CAP
LIMITS = ReplyLimits(listing=CAP, top=CAP, capa=CAP, top_skip=SKIP)


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as srv:
        yield srv


async def session(srv: FakePOP3Server, **kwargs: object) -> POP3Client:
    kwargs.setdefault("timeouts", FAST)
    kwargs.setdefault("reply_limits", LIMITS)
    client = await POP3Client.connect(srv.host, srv.port, tls=TLSMode.PLAIN, **kwargs)  # type: ignore[arg-type]
    await client.login("alice", "pw")
    return client


def _top_each(client: POP3Client) -> Awaitable[None]:
    return client.top_each([1, 2], lambda _index, _reply: None)


Call = Callable[[POP3Client], Awaitable[object]]
#: (what the client calls, the verb whose reply never ends, the line it repeats)
ENDLESS_CASES: dict[str, tuple[Call, str, bytes]] = {
    "uidl": (lambda c: c.uidl(), "UIDL", b"1 endless-unique-id\r\n"),
    "list": (lambda c: c.list(), "LIST", b"1 1024\r\n"),
    "capa": (lambda c: c.capa(), "CAPA", b"X-ENDLESS capability\r\n"),
    "top": (lambda c: c.top(1, 0), "TOP", b"X-Filler: " + b"a" * 60 + b"\r\n"),
    "top_each": (_top_each, "TOP", b"X-Filler: " + b"a" * 60 + b"\r\n"),
    "top_many": (lambda c: c.top_many([1, 2], 0), "TOP", b"Received: by x\r\n"),
    "uidl_and_list/uidl": (lambda c: c.uidl_and_list(), "UIDL", b"1 endless-unique-id\r\n"),
    "uidl_and_list/list": (lambda c: c.uidl_and_list(), "LIST", b"1 1024\r\n"),
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest.mark.parametrize("case", list(ENDLESS_CASES))
async def test_an_endless_reply_is_cut_at_its_cap_with_flat_memory(
    server: FakePOP3Server, case: str, pipelining: bool
) -> None:
    call, verb, line = ENDLESS_CASES[case]
    client = await session(server, pipelining=pipelining)
    await client.capa()  # the TRANSACTION CAPA, so the pipelined calls do not ask for it
    endless = Endless(line, limit=ENDLESS)
    server.script(verb, endless)
    tracemalloc.start()
    try:
        with pytest.raises(POP3ResponseTooLargeError) as caught:
            await call(client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = SKIP if verb == "TOP" else CAP  # TOP: kept to CAP, read on up to SKIP
    assert caught.value.limit == limit
    assert caught.value.command == verb
    assert caught.value.reason == "reply-too-large"
    assert isinstance(caught.value, POP3ProtocolError)  # still a protocol failure
    assert f"reply to {verb} is larger than the {limit}-byte limit" in str(caught.value)
    assert client.state is State.CLOSED  # mid-reply: the session cannot be reused
    assert peak < CAP + SLACK, f"held {peak} bytes for a {CAP}-byte cap"
    assert endless.sent < ENDLESS // 4  # the client stopped reading long before the end


async def test_replies_within_their_caps_pass(server: FakePOP3Server) -> None:
    client = await session(server, reply_limits=ReplyLimits(listing=64, top=64, capa=512))
    assert await client.uidl() == {1: "uid-1", 2: "uid-2"}
    assert await client.list() == {n: len(body) for n, (_, body) in enumerate(MESSAGES, 1)}
    assert await client.top_many([1, 2]) == [b"Subject: one\r\n\r\n", b"Subject: two\r\n\r\n"]
    assert (await client.uidl_and_list())[0] == {1: "uid-1", 2: "uid-2"}
    assert client.capabilities is not None
    assert client.capabilities.pipelining
    await client.quit()


async def test_a_finite_reply_one_byte_over_the_cap_fails(server: FakePOP3Server) -> None:
    client = await session(server, reply_limits=ReplyLimits(listing=9))
    with pytest.raises(POP3ResponseTooLargeError):
        await client.uidl()  # "1 uid-1\r\n2 uid-2\r\n": 18 bytes
    assert client.state is State.CLOSED


async def test_a_whole_oversized_reply_already_buffered_is_refused(
    server: FakePOP3Server,
) -> None:
    # Both TOP replies arrive in one write, so the second is complete in the read buffer
    # when its turn comes: the pipelined fast path must apply the cap too.
    big = b"X-Big: " + b"b" * 2000 + b"\r\n"
    both = b"+OK\r\nSubject: one\r\n\r\n.\r\n" + b"+OK\r\n" + big + b"\r\n.\r\n"
    server.script("TOP", Reply(both), arg="1 0")
    server.script("TOP", Reply(b""), arg="2 0")
    client = await session(server, reply_limits=ReplyLimits(top=1024, top_skip=1024))
    await client.capa()
    seen: list[bytes | POP3ResponseError] = []
    with pytest.raises(POP3ResponseTooLargeError) as caught:
        await client.top_each([1, 2], lambda _index, reply: seen.append(reply))
    assert caught.value.command == "TOP"
    assert seen == [b"Subject: one\r\n\r\n"]
    assert client.state is State.CLOSED


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest.mark.parametrize("size", [2000, 3 * CAP], ids=["buffered", "streamed"])
async def test_a_header_section_past_the_top_cap_is_kept_to_the_cap_and_the_session_goes_on(
    pipelining: bool, size: int
) -> None:
    """Anyone can send a message with a huge header section: its TOP reply is kept to the
    cap (the rest read and dropped, memory flat), and the next replies of the same session
    are read as usual, whether the big reply sat whole in the read buffer or streamed."""
    cap = 1024 if size == 2000 else CAP
    huge = b"Subject: huge\r\nX-Big: " + b"b" * size + b"\r\n\r\nbody\r\n"
    box = FakeMailbox([*MESSAGES, ("uid-3", huge)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        client = await session(
            srv, pipelining=pipelining, reply_limits=ReplyLimits(top=cap, top_skip=SKIP)
        )
        await client.capa()
        tracemalloc.start()
        try:
            replies = await client.top_many([3, 1, 2])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        first = replies[0]
        assert isinstance(first, TruncatedBody)
        assert len(first) == cap
        assert first.startswith(b"Subject: huge\r\nX-Big: bbb")
        assert replies[1:] == [b"Subject: one\r\n\r\n", b"Subject: two\r\n\r\n"]
        assert not isinstance(replies[1], TruncatedBody)
        assert peak < cap + SLACK
        assert isinstance(await client.top(3, 0), TruncatedBody)  # one command alone too
        assert await client.uidl() == {1: "uid-1", 2: "uid-2", 3: "uid-3"}
        await client.quit()


def test_the_defaults_fit_real_mailboxes() -> None:
    limits = ReplyLimits()
    assert (limits.listing, limits.top, limits.capa) == (
        DEFAULT_MAX_LISTING_BYTES,
        DEFAULT_MAX_TOP_BYTES,
        DEFAULT_MAX_CAPA_BYTES,
    )
    # UIDL of 100,000 messages with RFC 1939's longest unique-ids (70 octets), and LIST of
    # as many messages of up to 10 GB each.
    uidl = b"".join(b"%d %s\r\n" % (n, b"u" * 70) for n in range(1, 100_001))
    listing = b"".join(b"%d %d\r\n" % (n, 9_999_999_999) for n in range(1, 100_001))
    assert len(uidl) <= limits.listing
    assert len(listing) <= limits.listing
    assert limits.top >= 1024 * 1024
    assert limits.skip_for_verb("TOP") == limits.top_skip >= 64 * limits.top
    assert limits.skip_for_verb("UIDL") is None  # only a header section may be cut
    assert limits.for_verb("RETR") is None  # RETR is capped per call
    assert limits.top > READ_HIGH_WATER  # a whole buffered reply can still be too large


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_limits_are_positive_byte_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplyLimits(top=bad)  # type: ignore[arg-type]
