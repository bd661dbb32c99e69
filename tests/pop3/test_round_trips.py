"""Round trips and pipelining, counted on the fake server.

A round trip is a time the server waited for input with every command answered
(``FakePOP3Server.turns``); ``most_pipelined`` is the most commands it held at once. Where
the mail server is 10-200 ms away, these counts, not our CPU, decide how long a listing
takes.
"""

from __future__ import annotations

import base64

import pytest

from gateway.pop3 import (
    Capabilities,
    POP3AuthError,
    POP3Client,
    POP3ResponseError,
    Timeouts,
    TLSMode,
)
from tests.support.fakepop3 import Err, FakeMailbox, FakePOP3Server

FAST = Timeouts(connect=2, tls=2, command=2, idle=2)
MESSAGES = [(f"uid-{i}", b"Subject: %d\r\nFrom: a@b.example\r\n\r\nbody\r\n" % i) for i in range(3)]
CAPA_PLAIN = ["USER", "SASL PLAIN", "PIPELINING", "UIDL", "TOP", "."]


async def connect(server: FakePOP3Server, **kwargs: object) -> POP3Client:
    return await POP3Client.connect(
        server.host, server.port, tls=TLSMode.PLAIN, timeouts=FAST, **kwargs
    )


def sent(server: FakePOP3Server) -> list[bytes]:
    return [line.split(b" ")[0].rstrip(b"\r\n").upper() for line in server.received[0]]


async def test_capa_goes_out_as_soon_as_the_greeting_is_read() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        client = await connect(server, capa=True)
        assert client.capabilities is not None
        assert "PLAIN" in client.capabilities.sasl
        assert server.received[0] == [b"CAPA\r\n"]
        assert server.turns() == 1
        await client.quit()


async def test_a_password_login_is_one_auth_plain_with_initial_response() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        client = await connect(server, capa=True)
        await client.login("alice", "pw")
        expected = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n"
        assert server.received[0] == [b"CAPA\r\n", expected]
        assert server.turns() == 2  # CAPA, AUTH: USER and PASS would have been two more
        await client.quit()


async def test_a_refused_auth_plain_is_the_same_error_as_a_refused_pass() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        client = await connect(server, capa=True)
        with pytest.raises(POP3AuthError):
            await client.login("alice", "wrong")
        assert sent(server) == [b"CAPA", b"AUTH"]  # no second attempt with USER/PASS
        await client.quit()


async def test_without_sasl_plain_the_login_is_user_then_pass() -> None:
    capa = ["USER", "SASL LOGIN", "PIPELINING", "UIDL", "."]
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=capa
    ) as server:
        client = await connect(server, capa=True)
        await client.login("alice", "pw")
        assert sent(server) == [b"CAPA", b"USER", b"PASS"]
        assert server.turns() == 3
        await client.quit()


async def test_the_transaction_capa_rides_with_uidl_and_list() -> None:
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=CAPA_PLAIN
    ) as server:
        client = await connect(server, capa=True)
        await client.login("alice", "pw")
        uids, sizes = await client.uidl_and_list()
        assert list(uids.values()) == ["uid-0", "uid-1", "uid-2"]
        assert sorted(sizes) == [1, 2, 3]
        assert client.capabilities is not None
        assert client.capabilities.pipelining
        assert sent(server) == [b"CAPA", b"AUTH", b"CAPA", b"UIDL", b"LIST"]
        # greeting -> CAPA, AUTH, then CAPA + UIDL + LIST in one write: three round trips
        assert server.turns() == 3
        assert server.most_pipelined() == 3
        headers = await client.top_many([1, 2, 3], 0)
        assert all(isinstance(h, bytes) and h.startswith(b"Subject: ") for h in headers)
        assert server.turns() == 4
        await client.quit()


async def test_without_pipelining_before_login_the_next_capa_is_asked_alone() -> None:
    capa = ["USER", "SASL PLAIN", "UIDL", "."]
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=capa
    ) as server:
        client = await connect(server, capa=True)
        await client.login("alice", "pw")
        await client.uidl_and_list()
        assert sent(server) == [b"CAPA", b"AUTH", b"CAPA", b"UIDL", b"LIST"]
        assert server.turns() == 4  # the TRANSACTION CAPA said PIPELINING: UIDL+LIST as one
        await client.quit()


async def test_pipelining_withdrawn_after_login_goes_on_in_lockstep() -> None:
    after = ["UIDL", "TOP", "."]
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=CAPA_PLAIN, capa_after=after
    ) as server:
        client = await connect(server, capa=True)
        await client.login("alice", "pw")
        uids, _sizes = await client.uidl_and_list()  # sent with the CAPA, answered in order
        assert len(uids) == 3
        assert client.capabilities is not None
        assert not client.pipelining_active
        before = server.turns()
        headers = await client.top_many([1, 2, 3], 0)
        assert all(isinstance(h, bytes) for h in headers)
        assert server.turns() - before == 3  # one TOP at a time from here on
        assert server.most_pipelined() == 3  # only CAPA + UIDL + LIST ever went together
        await client.quit()


async def test_a_server_without_capa_after_login_still_answers_the_batch() -> None:
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=CAPA_PLAIN
    ) as server:
        refused = server.script("CAPA", Err(text="Unknown command"), skip=1)
        client = await connect(server, capa=True)
        await client.login("alice", "pw")
        uids, _sizes = await client.uidl_and_list()
        assert len(uids) == 3
        assert refused.fired == 1
        assert client.capabilities is not None
        assert not client.capabilities.supported
        assert not client.pipelining_active
        await client.quit()


async def test_a_page_of_600_top_goes_out_in_one_write() -> None:
    box = FakeMailbox([(f"u{i}", b"Subject: %d\r\n\r\n" % i) for i in range(600)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        client = await connect(server)
        await client.login("alice", "pw")
        await client.capa()
        before = server.turns()
        got = await client.top_many(range(1, 601), 0)
        assert got == [b"Subject: %d\r\n\r\n" % i for i in range(600)]
        # The window is bytes in flight (600 TOP are 7 KB), not a count of commands.
        assert server.most_pipelined() == 600
        assert server.turns() - before == 1
        await client.quit()


async def test_the_window_is_bounded_in_bytes_and_refilled_without_waiting() -> None:
    count = 4000  # about 52 KB of TOP commands: more than the 32 KiB window
    box = FakeMailbox([(f"u{i}", b"Subject: %d\r\n\r\n" % i) for i in range(count)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        client = await connect(server)
        await client.login("alice", "pw")
        await client.capa()
        got = await client.top_many(range(1, count + 1), 0)
        assert got == [b"Subject: %d\r\n\r\n" % i for i in range(count)]
        assert 1000 < server.most_pipelined() < count
        await client.quit()


async def test_a_count_window_still_caps_commands_in_flight() -> None:
    box = FakeMailbox([(f"u{i}", b"Subject: %d\r\n\r\n" % i) for i in range(50)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        client = await connect(server, pipeline_window=8)
        await client.login("alice", "pw")
        await client.capa()
        got = await client.top_many(range(1, 51), 0)
        assert len(got) == 50
        assert server.most_pipelined() <= 8
        await client.quit()


# -- a login that assumes what the server listed in an earlier session ----------------------

ASSUMED = Capabilities.parse(["SASL PLAIN", "PIPELINING"])


async def test_an_assumed_sasl_plain_logs_in_without_capa() -> None:
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=CAPA_PLAIN
    ) as server:
        client = await connect(server)
        await client.login("alice", "pw", assume=ASSUMED)
        uids, _sizes = await client.uidl_and_list()
        assert len(uids) == 3
        # greeting -> AUTH, then CAPA + UIDL + LIST in one write (PIPELINING was assumed):
        # one round trip fewer than asking CAPA first
        assert sent(server) == [b"AUTH", b"CAPA", b"UIDL", b"LIST"]
        assert server.turns() == 2
        assert server.most_pipelined() == 3
        assert client.authorization_capabilities is None  # nothing new was learnt
        await client.quit()


async def test_a_server_that_stopped_offering_plain_gets_user_and_pass() -> None:
    capa = ["USER", "SASL LOGIN", "PIPELINING", "UIDL", "."]
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=capa, mechanisms=("LOGIN",)
    ) as server:
        client = await connect(server)
        await client.login("alice", "pw", assume=ASSUMED)
        assert sent(server) == [b"AUTH", b"CAPA", b"USER", b"PASS"]
        listed = client.authorization_capabilities
        assert listed is not None
        assert "PLAIN" not in listed.sasl  # what the caller remembers from now on
        assert len(await client.uidl_and_list()) == 2
        await client.quit()


async def test_an_assumed_login_refused_with_plain_still_offered_is_one_failed_login() -> None:
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=CAPA_PLAIN
    ) as server:
        client = await connect(server)
        with pytest.raises(POP3AuthError):
            await client.login("alice", "wrong", assume=ASSUMED)
        assert sent(server) == [b"AUTH"]  # [AUTH]: the password, raised at once
        client.abort()
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=CAPA_PLAIN
    ) as server:
        server.script("AUTH", Err(text="Login failed."))  # no response code (Courier)
        client = await connect(server)
        with pytest.raises(POP3ResponseError):
            await client.login("alice", "wrong", assume=ASSUMED)
        # CAPA shows the mechanism is offered: the password was refused, and it is not
        # tried again another way
        assert sent(server) == [b"AUTH", b"CAPA"]
        client.abort()


async def test_a_refusal_that_ends_the_session_is_raised_as_it_is() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        server.script("AUTH", Err(text="Go away", close=True))
        client = await connect(server)
        with pytest.raises(POP3ResponseError) as refused:
            await client.login("alice", "pw", assume=ASSUMED)
        assert "Go away" in str(refused.value)  # not the closed connection of the CAPA
        client.abort()


async def test_a_refusal_with_a_response_code_is_raised_at_once() -> None:
    """[AUTH], [IN-USE], [SYS/TEMP]: about the password or the maildrop, never the
    mechanism: no CAPA, and above all no second try of the password with USER and PASS,
    even where PLAIN is no longer listed."""
    capa = ["USER", "SASL LOGIN", "UIDL", "."]
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, capa_before=capa
    ) as server:
        server.script("AUTH", Err(code="AUTH", text="Authentication failed"))
        client = await connect(server)
        with pytest.raises(POP3AuthError):
            await client.login("alice", "wrong", assume=ASSUMED)
        assert sent(server) == [b"AUTH"]
        client.abort()


async def test_a_bare_refusal_from_a_server_that_refuses_capa_is_raised() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        server.script("AUTH", Err(text="Login failed."))  # no response code (Courier)
        server.script("CAPA", Err(text="Unknown command"))
        client = await connect(server)
        with pytest.raises(POP3ResponseError):
            await client.login("alice", "wrong", assume=ASSUMED)
        assert sent(server) == [b"AUTH", b"CAPA"]  # no USER/PASS with the same password
        client.abort()
