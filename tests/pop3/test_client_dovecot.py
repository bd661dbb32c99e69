"""The POP3 client against a real Dovecot: every command, every transport, every login."""

from __future__ import annotations

import asyncio
import hashlib
import poplib
import ssl

import pytest

from gateway.pop3 import (
    POP3ArgumentError,
    POP3AuthError,
    POP3Client,
    POP3ResponseError,
    POP3ResponseTooLargeError,
    POP3StateError,
    POP3TLSError,
    State,
    TLSConfig,
    TLSMode,
)
from gateway.pop3.protocol import CHUNK_SIZE
from tests.support.corpus import expected_retr, generate_corpus, large_message, simple_message
from tests.support.dovecot import Dovecot, DovecotUser

pytestmark = pytest.mark.dovecot


async def plain(dovecot: Dovecot, **kwargs: object) -> POP3Client:
    return await POP3Client.connect(dovecot.host, dovecot.port, tls=TLSMode.PLAIN, **kwargs)  # type: ignore[arg-type]


async def logged_in(dovecot: Dovecot, user: DovecotUser, **kwargs: object) -> POP3Client:
    client = await plain(dovecot, **kwargs)
    await client.login(user.name, user.password)
    return client


def poplib_session(dovecot: Dovecot, user: DovecotUser) -> poplib.POP3:
    pop = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    pop.user(user.name)
    pop.pass_(user.password)
    return pop


async def test_every_transaction_command(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i) for i in range(3)]
    dovecot_user.deliver_many(raws)
    client = await logged_in(dovecot, dovecot_user)
    assert client.state is State.TRANSACTION
    count, octets = await client.stat()
    sizes = await client.list()
    assert count == 3
    assert sizes == {1: len(raws[0]), 2: len(raws[1]), 3: len(raws[2])}
    assert octets == sum(sizes.values())
    assert await client.list_one(2) == sizes[2]
    uids = await client.uidl()
    assert sorted(uids) == [1, 2, 3]
    assert len(set(uids.values())) == 3
    assert await client.uidl_one(3) == uids[3]
    for n, raw in enumerate(raws, 1):
        assert await client.retr(n) == raw
        header = await client.top(n, 0)
        assert raw.startswith(header)
        assert header.endswith(b"\r\n\r\n")
        assert await client.top(n, 2) == raw[: len(header)] + b"".join(
            line + b"\r\n" for line in raw[len(header) :].split(b"\r\n")[:2]
        )
    await client.noop()
    result = await client.quit()
    assert result.updated
    assert result.deleted_marks == 0
    assert client.state is State.CLOSED


async def test_results_match_poplib(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(5)])
    client = await logged_in(dovecot, dovecot_user)
    ours_uidl = await client.uidl()
    ours_top = await client.top_many(sorted(ours_uidl), 0)
    await client.quit()
    pop = poplib_session(dovecot, dovecot_user)
    try:
        theirs_uidl = {int(n): u.decode() for n, u in (x.split() for x in pop.uidl()[1])}
        theirs_top = [b"\r\n".join(pop.top(n, 0)[1]) + b"\r\n" for n in sorted(theirs_uidl)]
    finally:
        pop.quit()
    assert ours_uidl == theirs_uidl
    assert ours_top == theirs_top


async def test_retr_returns_what_the_server_holds_for_messy_mail(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    corpus = generate_corpus(seed=7)
    dovecot_user.deliver_many([m.raw for m in corpus])
    client = await logged_in(dovecot, dovecot_user)
    bodies = await client.retr_many(range(1, len(corpus) + 1))
    for message, body in zip(corpus, bodies, strict=True):
        assert body == expected_retr(message.raw), message.name
    await client.quit()


async def test_pipelined_top_of_1000_equals_lockstep(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(1000)])
    pipelined = await logged_in(dovecot, dovecot_user)
    numbers = list(range(1, 1001))
    fast = await pipelined.top_many(numbers, 0)
    assert pipelined.pipelining_active
    await pipelined.quit()
    lockstep = await logged_in(dovecot, dovecot_user, pipelining=False)
    slow = await lockstep.top_many(numbers, 0)
    assert not lockstep.pipelining_active
    await lockstep.quit()
    assert fast == slow
    assert all(isinstance(h, bytes) and h.startswith(b"Return-Path") for h in fast)
    assert len({hashlib.sha256(h).digest() for h in fast if isinstance(h, bytes)}) == 1000


async def test_top_each_hands_over_replies_while_the_pipeline_runs(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    """Replies reach the handler in order, -ERR ones as errors, the same as top_many."""
    dovecot_user.deliver_many([simple_message(i) for i in range(600)])
    client = await logged_in(dovecot, dovecot_user)
    numbers = [*range(1, 601), 9999]
    expected = await client.top_many(numbers, 0)
    seen: list[tuple[int, bytes | POP3ResponseError]] = []

    def handle(index: int, reply: bytes | POP3ResponseError) -> None:
        seen.append((index, reply))

    await client.top_each(numbers, handle)
    assert [i for i, _ in seen] == list(range(601))
    assert [r for _, r in seen[:600]] == expected[:600]
    assert isinstance(seen[600][1], POP3ResponseError)
    await client.quit()


async def test_a_failing_reply_handler_ends_the_session(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(300)])
    client = await logged_in(dovecot, dovecot_user)

    def handle(index: int, reply: bytes | POP3ResponseError) -> None:
        if index == 5:
            raise ValueError("handler failed")

    with pytest.raises(ValueError, match="handler failed"):
        await client.top_each(range(1, 301), handle)
    # Replies were still due: the session was dropped rather than left half-read.
    assert client.state is State.CLOSED
    assert len(dovecot_user.messages()) == 300


async def test_a_refused_command_in_a_pipeline_keeps_the_session(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    client = await logged_in(dovecot, dovecot_user)
    assert await client.dele_many([2]) == [None]
    got = await client.top_many([1, 2, 3, 4], 0)
    assert isinstance(got[0], bytes)
    assert isinstance(got[1], POP3ResponseError)
    assert isinstance(got[2], bytes)
    assert isinstance(got[3], POP3ResponseError)
    assert got[1].command == "TOP"
    await client.rset()
    assert client.deleted_marks == 0
    assert isinstance((await client.top_many([2], 0))[0], bytes)
    await client.quit()
    assert len(dovecot_user.messages()) == 3


async def test_dele_then_quit_removes(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i) for i in range(4)]
    dovecot_user.deliver_many(raws)
    client = await logged_in(dovecot, dovecot_user)
    await client.dele(1)
    assert await client.dele_many([3]) == [None]
    assert client.deleted_marks == 2
    result = await client.quit()
    assert result.updated
    assert result.deleted_marks == 2
    assert sorted(dovecot_user.messages()) == sorted([raws[1], raws[3]])


async def test_dele_then_dropped_connection_removes_nothing(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    raws = [simple_message(i) for i in range(3)]
    dovecot_user.deliver_many(raws)
    client = await logged_in(dovecot, dovecot_user)
    await client.dele_many([1, 2, 3])
    client.abort()
    assert client.state is State.CLOSED
    # The server notices the drop asynchronously; a new session sees every message.
    again = await logged_in(dovecot, dovecot_user)
    assert (await again.stat())[0] == 3
    await again.quit()
    assert sorted(dovecot_user.messages()) == sorted(raws)


async def test_exception_inside_context_manager_rolls_back(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(simple_message(1))
    client = await logged_in(dovecot, dovecot_user)

    async def delete_then_fail() -> None:
        async with client:
            await client.dele(1)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await delete_then_fail()
    assert client.state is State.CLOSED
    assert len(dovecot_user.messages()) == 1


async def test_retr_stream_large_message(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raw = large_message(5_000_000)
    dovecot_user.deliver(raw)
    client = await logged_in(dovecot, dovecot_user)
    received = bytearray()
    biggest = 0
    async with client.retr_stream(1) as chunks:
        async for chunk in chunks:
            biggest = max(biggest, len(chunk))
            received += chunk
    assert bytes(received) == expected_retr(raw)
    assert biggest <= CHUNK_SIZE  # bounded however the bytes arrived
    # The session is still in step after the stream.
    assert (await client.stat())[0] == 1
    await client.quit()


async def test_retr_stream_left_early_closes_the_session(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(large_message(2_000_000))
    client = await logged_in(dovecot, dovecot_user)
    async with client.retr_stream(1) as chunks:
        async for _ in chunks:
            break
    assert client.state is State.CLOSED
    with pytest.raises(POP3StateError):
        await client.stat()


async def test_retr_stream_of_unknown_message(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    client = await logged_in(dovecot, dovecot_user)
    with pytest.raises(POP3ResponseError) as caught:
        async with client.retr_stream(1):
            pytest.fail("no stream for an unknown message")
    assert caught.value.command == "RETR"
    assert client.state is State.TRANSACTION
    await client.quit()


async def test_retr_size_cap_closes_the_session(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(large_message(1_000_000))
    client = await logged_in(dovecot, dovecot_user)
    with pytest.raises(POP3ResponseTooLargeError):
        await client.retr(1, max_bytes=100_000)
    assert client.state is State.CLOSED
    assert len(dovecot_user.messages()) == 1


@pytest.mark.parametrize("method", ["login", "auth_plain", "auth_login"])
async def test_logins(dovecot: Dovecot, dovecot_user: DovecotUser, method: str) -> None:
    client = await plain(dovecot)
    await getattr(client, method)(dovecot_user.name, dovecot_user.password)
    assert client.state is State.TRANSACTION
    assert (await client.stat())[0] == 0
    await client.quit()


@pytest.mark.parametrize("method", ["login", "auth_plain", "auth_login"])
async def test_wrong_password(dovecot: Dovecot, dovecot_user: DovecotUser, method: str) -> None:
    client = await plain(dovecot)
    with pytest.raises(POP3AuthError) as caught:
        await getattr(client, method)(dovecot_user.name, "not-" + dovecot_user.password)
    assert "not-" + dovecot_user.password not in str(caught.value)
    assert client.state is State.AUTHORIZATION
    await client.quit()


async def test_capabilities_before_and_after_login(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    client = await plain(dovecot)
    before = await client.capa()
    assert "STLS" in before
    assert "USER" in before
    assert "PLAIN" in before.sasl
    await client.login(dovecot_user.name, dovecot_user.password)
    assert client.capabilities is None
    after = await client.capa()
    assert after.pipelining
    assert "UIDL" in after
    assert "TOP" in after
    assert "STLS" not in after
    await client.quit()


async def test_stls(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    client = await POP3Client.connect(
        dovecot.host,
        dovecot.port,
        tls=TLSMode.STARTTLS,
        tls_config=TLSConfig(cafile=str(dovecot.cafile), server_hostname="localhost"),
    )
    assert client.is_tls
    with pytest.raises(POP3StateError):
        await client.stls()
    await client.login(dovecot_user.name, dovecot_user.password)
    assert (await client.stat())[0] == 0
    await client.quit()


async def test_implicit_tls(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver(simple_message(1))
    client = await POP3Client.connect(
        dovecot.host,
        dovecot.tls_port,
        tls=TLSMode.IMPLICIT,
        tls_config=TLSConfig(cafile=str(dovecot.cafile), server_hostname="localhost"),
    )
    assert client.is_tls
    await client.auth_plain(dovecot_user.name, dovecot_user.password)
    assert await client.retr(1) == simple_message(1)
    await client.quit()


def test_tls_verified_by_default() -> None:
    assert TLSConfig().context().verify_mode is ssl.CERT_REQUIRED
    assert TLSConfig().context().check_hostname


@pytest.mark.parametrize("mode", [TLSMode.IMPLICIT, TLSMode.STARTTLS])
async def test_untrusted_certificate_is_refused(dovecot: Dovecot, mode: TLSMode) -> None:
    port = dovecot.tls_port if mode is TLSMode.IMPLICIT else dovecot.port
    with pytest.raises(POP3TLSError, match="certificate verification failed"):
        await POP3Client.connect(dovecot.host, port, tls=mode)


@pytest.mark.parametrize("mode", [TLSMode.IMPLICIT, TLSMode.STARTTLS])
async def test_wrong_host_name_is_refused(dovecot: Dovecot, mode: TLSMode) -> None:
    port = dovecot.tls_port if mode is TLSMode.IMPLICIT else dovecot.port
    config = TLSConfig(cafile=str(dovecot.cafile), server_hostname="mail.example.org")
    with pytest.raises(POP3TLSError):
        await POP3Client.connect(dovecot.host, port, tls=mode, tls_config=config)


def _server_fingerprint(dovecot: Dovecot) -> str:
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((dovecot.host, dovecot.tls_port)))
    return hashlib.sha256(der).hexdigest()


async def test_fingerprint_pinning(dovecot: Dovecot) -> None:
    good = _server_fingerprint(dovecot)
    pinned = TLSConfig(
        verify=False, fingerprint_sha256=":".join(good[i : i + 2] for i in range(0, 64, 2))
    )
    client = await POP3Client.connect(
        dovecot.host, dovecot.tls_port, tls=TLSMode.IMPLICIT, tls_config=pinned
    )
    await client.quit()
    wrong = TLSConfig(verify=False, fingerprint_sha256="0" * 64)
    with pytest.raises(POP3TLSError, match="pinned fingerprint"):
        await POP3Client.connect(
            dovecot.host, dovecot.tls_port, tls=TLSMode.IMPLICIT, tls_config=wrong
        )
    both = TLSConfig(
        cafile=str(dovecot.cafile), server_hostname="localhost", fingerprint_sha256=good
    )
    client = await POP3Client.connect(
        dovecot.host, dovecot.port, tls=TLSMode.STARTTLS, tls_config=both
    )
    await client.quit()


def test_tls_config_refuses_checking_nothing() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        TLSConfig(verify=False)
    with pytest.raises(ValueError, match="64 hex"):
        TLSConfig(fingerprint_sha256="abc")


async def test_state_table(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    client = await plain(dovecot)
    for call in (client.stat(), client.uidl(), client.retr(1), client.dele(1), client.noop()):
        with pytest.raises(POP3StateError):
            await call
    with pytest.raises(POP3StateError, match="PASS must follow"):
        await client.pass_("x")
    await client.login(dovecot_user.name, dovecot_user.password)
    for call in (client.user("x"), client.stls(), client.utf8(), client.auth_plain("a", "b")):
        with pytest.raises(POP3StateError):
            await call
    await client.quit()
    with pytest.raises(POP3StateError, match="closed"):
        await client.stat()


@pytest.mark.parametrize("bad", ["a\r\nDELE 1", "a\nb", "a\rb", "a\x00b"])
async def test_arguments_with_line_breaks_never_reach_the_wire(
    dovecot: Dovecot, dovecot_user: DovecotUser, bad: str
) -> None:
    client = await plain(dovecot)
    for call in (
        client.login(bad, "pw"),
        client.login(dovecot_user.name, bad),
        client.auth_plain(bad, "pw"),
        client.auth_xoauth2(dovecot_user.name, bad),
    ):
        with pytest.raises(POP3ArgumentError):
            await call
    # The session is untouched: a real login still works.
    await client.login(dovecot_user.name, dovecot_user.password)
    await client.quit()


async def test_overlong_arguments_are_refused(dovecot: Dovecot) -> None:
    client = await plain(dovecot)
    with pytest.raises(POP3ArgumentError, match="255"):
        await client.user("u" * 300)
    await client.quit()


async def test_cancelled_command_closes_the_session(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(large_message(3_000_000))
    client = await logged_in(dovecot, dovecot_user)
    task = asyncio.create_task(client.retr(1))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.state is State.CLOSED


async def test_apop_is_off_unless_asked(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    from gateway.pop3 import POP3CapabilityError

    client = await plain(dovecot)
    with pytest.raises(POP3CapabilityError, match="MD5"):
        await client.apop(dovecot_user.name, dovecot_user.password)
    await client.quit()
