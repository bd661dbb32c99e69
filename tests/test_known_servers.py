"""What the gateway remembers of servers between sessions (``KnownServers``): a password
login to a server that offered SASL PLAIN skips the CAPA before it next time, one round
trip fewer; a server that changed costs one round trip and no failed login."""

from __future__ import annotations

import pytest

from gateway.accounts import Account, Credential, KnownServers, Upstream
from gateway.pop3 import Capabilities, POP3ResponseError, Timeouts, TLSConfig, TLSMode
from gateway.service.sessions import SessionOpener
from tests.support.clock import FakeClock
from tests.support.fakepop3 import Err, FakeMailbox, FakePOP3Server

FAST = Timeouts(connect=2, tls=2, command=2, idle=2)
MESSAGES = [("uid-1", b"Subject: one\r\n\r\nbody\r\n")]
PLAIN = Capabilities.parse(["USER", "SASL PLAIN LOGIN", "PIPELINING"])


def upstream(
    host: str = "pop.example", port: int = 995, tls: TLSMode = TLSMode.IMPLICIT
) -> Upstream:
    return Upstream("u", host, port, tls, timeouts=FAST)


def account(server: FakePOP3Server, method: str = "pass") -> Account:
    return Account(
        mailbox_id="me",
        upstream=upstream(server.host, server.port, TLSMode.PLAIN),
        user="alice",
        credential=Credential(method, value="pw"),  # type: ignore[arg-type]
        passthrough=True,
    )


async def log_in_and_out(opener: SessionOpener, server: FakePOP3Server) -> None:
    client = await opener.open(account(server))
    await client.quit()


def commands(server: FakePOP3Server, connection: int) -> list[bytes]:
    return [line.split(b" ")[0].rstrip(b"\r\n") for line in server.received[connection]]


def test_a_server_that_offered_plain_is_assumed_to_offer_it_again() -> None:
    known = KnownServers()
    box = upstream()
    assert known.assumed(box) is None
    known.learn(box, PLAIN)
    assumed = known.assumed(box)
    assert assumed is not None
    assert "PLAIN" in assumed.sasl
    assert assumed.pipelining
    known.learn(box, Capabilities.parse(["SASL PLAIN"]))
    again = known.assumed(box)
    assert again is not None
    assert not again.pipelining
    # another port or TLS mode is another server
    assert known.assumed(upstream(port=110, tls=TLSMode.PLAIN)) is None


def test_a_server_without_plain_is_forgotten_and_none_learnt_keeps_what_was() -> None:
    known = KnownServers()
    box = upstream()
    known.learn(box, PLAIN)
    known.learn(box, None)  # a session that asked no CAPA: what was assumed held
    assert known.assumed(box) is not None
    known.learn(box, Capabilities.parse(["USER", "SASL LOGIN"]))
    assert known.assumed(box) is None
    assert len(known) == 0


def test_only_implicit_tls_and_loopback_servers_are_assumed() -> None:
    """STARTTLS asks CAPA after STLS anyway; a plaintext server elsewhere that stopped
    taking passwords in clear must never be sent one in an assumed AUTH PLAIN (asked
    first, it lists only STLS and refuses USER before any password)."""
    known = KnownServers()
    for box in (
        upstream(tls=TLSMode.STARTTLS),
        upstream("pop.example", 110, TLSMode.PLAIN),
        upstream("192.0.2.7", 110, TLSMode.PLAIN),
    ):
        known.learn(box, PLAIN)
        assert known.assumed(box) is None
    assert len(known) == 0
    for host in ("127.0.0.1", "::1", "localhost"):
        box = upstream(host, 110, TLSMode.PLAIN)
        known.learn(box, PLAIN)
        assert known.assumed(box) is not None


def test_one_address_with_two_tls_names_is_two_servers() -> None:
    known = KnownServers()
    first = Upstream(
        "a", "203.0.113.5", 995, TLSMode.IMPLICIT, TLSConfig(server_hostname="a.example")
    )
    second = Upstream(
        "b", "203.0.113.5", 995, TLSMode.IMPLICIT, TLSConfig(server_hostname="b.example")
    )
    known.learn(first, PLAIN)
    assert known.assumed(first) is not None
    assert known.assumed(second) is None


def test_what_was_learnt_expires_and_the_count_of_servers_is_bounded() -> None:
    clock = FakeClock()
    known = KnownServers(max_entries=3, max_age=60, clock=clock)
    first = upstream("a.example")
    known.learn(first, PLAIN)
    clock.advance(59)
    assert known.assumed(first) is not None
    clock.advance(1)
    assert known.assumed(first) is None
    assert len(known) == 0
    for name in ("a", "b", "c", "d", "e"):
        known.learn(upstream(f"{name}.example"), PLAIN)
    assert len(known) == 3
    assert known.assumed(upstream("b.example")) is None  # the oldest went first
    assert known.assumed(upstream("e.example")) is not None


async def test_the_second_login_to_a_server_sends_auth_first() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        opener = SessionOpener(key=b"k" * 32, servers=KnownServers())
        for _ in range(2):
            client = await opener.open(account(server))
            await client.uidl_and_list()
            await client.quit()
        assert commands(server, 0)[:2] == [b"CAPA", b"AUTH"]
        assert commands(server, 1)[:4] == [b"AUTH", b"CAPA", b"UIDL", b"LIST"]
        assert server.turns(0) - server.turns(1) == 1  # the round trip saved


async def test_a_server_that_dropped_plain_costs_one_round_trip_and_still_logs_in() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        known = KnownServers()
        opener = SessionOpener(key=b"k" * 32, servers=known)
        await log_in_and_out(opener, server)
        server.mechanisms = ("LOGIN",)  # reconfigured meanwhile
        await log_in_and_out(opener, server)
        assert commands(server, 1)[:4] == [b"AUTH", b"CAPA", b"USER", b"PASS"]
        await log_in_and_out(opener, server)
        assert commands(server, 2)[:3] == [b"CAPA", b"USER", b"PASS"]  # forgotten


async def test_a_refused_fallback_still_forgets_the_server() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        known = KnownServers()
        opener = SessionOpener(key=b"k" * 32, servers=known)
        await log_in_and_out(opener, server)
        server.mechanisms = ("LOGIN",)
        server.script("PASS", Err(code="SYS/TEMP", text="try later"))
        with pytest.raises(POP3ResponseError):
            await opener.open(account(server))
        assert commands(server, 1)[:4] == [b"AUTH", b"CAPA", b"USER", b"PASS"]
        assert len(known) == 0  # the next login asks CAPA first
        await log_in_and_out(opener, server)
        assert commands(server, 2)[:3] == [b"CAPA", b"USER", b"PASS"]


async def test_other_login_methods_ask_capa_as_before() -> None:
    async with FakePOP3Server(FakeMailbox(MESSAGES), users={"alice": "pw"}) as server:
        known = KnownServers()
        opener = SessionOpener(key=b"k" * 32, servers=known)
        for _ in range(2):
            client = await opener.open(account(server, method="plain"))
            await client.quit()
        assert commands(server, 1)[:2] == [b"CAPA", b"AUTH"]
        assert len(known) == 0  # only password logins are remembered for
