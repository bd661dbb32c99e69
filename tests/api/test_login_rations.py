"""Logins are rationed (issue 12, item 5): a spray of user names from one client stops
after its budget, the upstream has a budget of its own, X-Forwarded-For counts only from
trusted proxies, and with Redis the failed-login throttle survives restarts, is shared by
replicas and still lets the owner's known-good password in. Counted in logins that reach
the (fake) POP3 server, never in time."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from typing import Any

import pytest
import redis
from aiohttp.test_utils import make_mocked_request

from gateway.accounts import Account, Credential, Upstream
from gateway.api.auth import client_address, resolve_account
from gateway.app import create_app
from gateway.config import ConfigError, Settings
from gateway.keys import DIRECTORY
from gateway.pop3 import TLSMode
from gateway.redis import SharedRedis
from gateway.service import (
    ClientLoginRateError,
    KnownGood,
    LoginRations,
    LoginThrottle,
    LoginThrottledError,
    SessionOpener,
    TokenBuckets,
    UpstreamLoginRateError,
)
from gateway.service.limits import client_key
from tests.support.api import ClientFactory, basic, checked, settings_for
from tests.support.dovecot import free_port
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

REDIS_URL = "redis://127.0.0.1:6379/0"


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def logins(server: FakePOP3Server) -> int:
    """Login attempts that reached the server (each one is a connection of its own)."""
    return len(server.connections)


async def spray(api: Any, count: int, **headers: str) -> list[Any]:
    """``count`` different user names with wrong passwords, all at once."""

    async def one(i: int) -> Any:
        extra = {k.replace("_", "-"): v.format(i=i) for k, v in headers.items()}
        resp = await api.get("/v1/mailboxes/me", headers=basic(f"victim{i}", "wrong") | extra)
        status = resp.status
        body = await checked(resp, status)
        return status, body, resp.headers.get("Retry-After")

    return await asyncio.gather(*(one(i) for i in range(count)))


# -- the spray ---------------------------------------------------------------------------------
async def test_a_spray_from_one_client_stops_after_its_budget(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = settings_for(
        fake_server.port,
        pool={"client_failed_login_burst": 5, "client_failed_logins_per_minute": 1},
    )
    api = await aiohttp_client(create_app(settings))
    await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "pw")), 200)
    before = logins(fake_server)
    # X-Forwarded-For from an untrusted peer is ignored: 60 "different" clients are one.
    answers = await spray(api, 60, X_Forwarded_For="198.51.100.{i}")
    assert logins(fake_server) - before == 5
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [401] * 5 + [429] * 55
    refused = [(body, retry) for status, body, retry in answers if status == 429]
    assert {body["type"] for body, _ in refused} == {"/problems/client-login-rate"}
    assert all(int(retry) >= 1 for _, retry in refused)
    # The owner's known-good password still gets in from the same address.
    await checked(await api.get("/v1/mailboxes/me?fresh=true", headers=basic("alice", "pw")), 200)
    scrape = await (await api.get("/metrics")).text()
    assert metric(scrape, 'pop3gw_limits_total{reason="client-login-rate"}') == 55
    assert "victim" not in scrape


async def test_the_issue_spray_with_the_defaults(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """The issue's figure: 300 user names with wrong passwords from one address reached the
    server 300 times; with the defaults, 10 (the client's burst)."""
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    answers = await spray(api, 300)
    assert logins(fake_server) == 10
    assert sum(status == 429 for status, _, _ in answers) == 290


async def test_check_is_no_way_around_the_client_budget(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = settings_for(
        fake_server.port,
        pool={"client_failed_login_burst": 2, "client_failed_logins_per_minute": 1},
    )
    api = await aiohttp_client(create_app(settings))
    for i in range(2):
        resp = await api.post("/v1/mailboxes/me/check", headers=basic(f"u{i}", "wrong"))
        assert (await checked(resp, 401))["check"]["steps"][-1]["name"] == "auth"
    resp = await api.post("/v1/mailboxes/me/check", headers=basic("u9", "wrong"))
    body = await checked(resp, 429)
    assert body["type"] == "/problems/client-login-rate"
    assert logins(fake_server) == 2


async def test_successful_logins_do_not_drain_the_client_budget(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    for i in range(6):
        fake_server.users[f"user{i}"] = "pw"
    settings = settings_for(
        fake_server.port,
        pool={"client_failed_login_burst": 2, "client_failed_logins_per_minute": 1},
    )
    api = await aiohttp_client(create_app(settings))
    for i in range(6):
        await checked(await api.get("/v1/mailboxes/me", headers=basic(f"user{i}", "pw")), 200)
    await checked(await api.get("/v1/mailboxes/me", headers=basic("nobody", "x")), 401)


async def test_a_spray_through_trusted_proxies_meets_the_upstream_budget(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = settings_for(
        fake_server.port,
        http={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]},
        pool={
            "client_failed_login_burst": 2,
            "client_failed_logins_per_minute": 1,
            "upstream_failed_login_burst": 8,
            "upstream_failed_logins_per_minute": 1,
        },
    )
    api = await aiohttp_client(create_app(settings))
    # Each request names another client (behind a trusted 10.x proxy): no client budget
    # bites, the upstream's does.
    answers = await spray(api, 30, X_Forwarded_For="198.51.100.{i}, 10.0.0.1")
    assert logins(fake_server) == 8
    refused = [body["type"] for status, body, _ in answers if status == 429]
    assert refused == ["/problems/upstream-login-rate"] * 22
    scrape = await (await api.get("/metrics")).text()
    assert metric(scrape, 'pop3gw_limits_total{reason="upstream-login-rate"}') == 22


async def test_one_client_behind_a_trusted_proxy_is_still_one_client(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = settings_for(
        fake_server.port,
        http={"trusted_proxies": ["127.0.0.1/32"]},
        pool={"client_failed_login_burst": 3, "client_failed_logins_per_minute": 1},
    )
    api = await aiohttp_client(create_app(settings))
    answers = await spray(api, 10, X_Forwarded_For="203.0.113.7")
    assert logins(fake_server) == 3
    assert sorted(status for status, _, _ in answers) == [401] * 3 + [429] * 7
    # Another client behind the same proxy has a budget of its own.
    other = await api.get(
        "/v1/mailboxes/me", headers=basic("x", "y") | {"X-Forwarded-For": "203.0.113.8"}
    )
    await checked(other, 401)


def test_the_client_address() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))

    def address(peer: str | None, forwarded: str | None, nets: Any = trusted) -> str | None:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        request = make_mocked_request("GET", "/", headers=headers)
        request = request.clone(remote=peer) if peer is not None else request
        return client_address(request, nets)

    assert address("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # untrusted peer
    assert address("192.0.2.1", "203.0.113.9", ()) == "192.0.2.1"
    assert address("10.1.1.1", "203.0.113.9, 10.2.2.2") == "203.0.113.9"
    assert address("10.1.1.1", "1.2.3.4, 203.0.113.9") == "203.0.113.9"  # the nearest
    assert address("10.1.1.1", "10.3.3.3, 10.2.2.2") == "10.3.3.3"  # all trusted
    assert address("10.1.1.1", "garbage, 10.2.2.2") == "10.2.2.2"
    assert address("10.1.1.1", None) == "10.1.1.1"
    assert address("not-an-ip", "203.0.113.9") == "not-an-ip"


def test_client_keys() -> None:
    assert client_key(None) is None
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert (
        client_key("2001:db8:1:2:3:4:5:6")
        == client_key("2001:db8:1:2::ffff")
        == ("2001:db8:1:2::/64")
    )
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("unix-socket") == "unix-socket"


def test_token_buckets_refill_and_forget() -> None:
    now = [0.0]
    buckets = TokenBuckets(2, 0.5, max_keys=2, clock=lambda: now[0])
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(2.0)  # one token in 2 s at 0.5/s
    buckets.give_back("a")
    assert buckets.take("a") == 0.0
    now[0] = 2.0
    assert buckets.take("a") == 0.0  # refilled
    buckets.give_back("never-taken")
    buckets.take("b")
    buckets.take("c")  # "a" is forgotten (bounded)
    assert buckets.take("a") == 0.0
    with pytest.raises(ValueError, match="token bucket"):
        TokenBuckets(0, 1.0)


def test_known_good_credentials_are_salted() -> None:
    sealer = KnownGood(b"k" * 32)
    first, second = sealer.seal("digest"), sealer.seal("digest")
    assert first != second  # a random salt per entry
    assert "digest" not in first
    assert sealer.matches(first, "digest")
    assert sealer.matches(second.encode(), "digest")
    assert not sealer.matches(first, "other")
    assert not KnownGood(b"j" * 32).matches(first, "digest")  # keyed
    for broken in (None, "", "zz:zz", "00", b"nothing"):
        assert not sealer.matches(broken, "digest")


# -- Redis ----------------------------------------------------------------------------------
def redis_settings(port: int, secret: str, **pool: Any) -> Settings:
    return settings_for(port, redis_url=REDIS_URL, cache_secret=secret, pool=pool)


@pytest.mark.redis
async def test_a_restart_keeps_the_throttle_and_the_owner_gets_in(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = redis_settings(fake_server.port, uuid.uuid4().hex, max_failed_logins=3)
    first = await aiohttp_client(create_app(settings))
    await checked(await first.get("/v1/mailboxes/me", headers=basic("alice", "pw")), 200)
    for i in range(3):
        await checked(await first.get("/v1/mailboxes/me", headers=basic("alice", f"b{i}")), 401)
    await first.close()

    second = await aiohttp_client(create_app(settings))  # a new process on the same Redis
    tried = logins(fake_server)
    resp = await second.get("/v1/mailboxes/me", headers=basic("alice", "again"))
    body = await checked(resp, 429)
    assert body["type"] == "/problems/login-throttled"
    assert 1 <= int(resp.headers["Retry-After"]) <= 300
    assert logins(fake_server) == tried  # refused without asking the server
    # Someone else's guesses do not lock the owner out, after a restart either.
    await checked(await second.get("/v1/mailboxes/me", headers=basic("alice", "pw")), 200)

    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        keys = [k.decode() for k in client.scan_iter(match="pop3gw:v1:logins:*", count=1000)]
        assert keys
        for key in keys:
            assert "alice" not in key.lower()
            assert client.pttl(key) != -1  # every key expires (-2: expired meanwhile)
        good = [k for k in keys if ":good:" in k]
        assert good
        values = [client.get(k) or b"" for k in good]
        assert all(b"pw" not in v and b":" in v for v in values)
    finally:
        client.close()


@pytest.mark.redis
async def test_replicas_share_the_count(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = redis_settings(fake_server.port, uuid.uuid4().hex, max_failed_logins=4)
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    for api in (one, two, one, two):
        await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "wrong")), 401)
    tried = logins(fake_server)
    for api in (one, two):
        body = await checked(await api.get("/v1/mailboxes/me", headers=basic("ALICE", "x")), 429)
        assert body["type"] == "/problems/login-throttled"
    assert logins(fake_server) == tried
    scrape = await (await two.get("/metrics")).text()
    assert metric(scrape, 'pop3gw_limits_total{reason="login-throttled"}') == 1


@pytest.mark.redis
async def test_concurrent_wrong_passwords_on_two_replicas_are_counted_in_flight(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    settings = redis_settings(fake_server.port, uuid.uuid4().hex, max_failed_logins=3)
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    answers = await asyncio.gather(
        *(
            api.get("/v1/mailboxes/me", headers=basic("alice", f"w{i}"))
            for i, api in enumerate([one, two] * 5)
        )
    )
    assert sorted(r.status for r in answers) == [401] * 3 + [429] * 7
    assert logins(fake_server) == 3


@pytest.mark.redis
async def test_replicas_share_the_client_and_upstream_budgets(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """Three replicas behind one address: a spray of user names spends one budget between
    them, not one each (which would let three times as many failed logins reach the
    provider)."""
    settings = redis_settings(
        fake_server.port,
        uuid.uuid4().hex,
        client_failed_login_burst=4,
        client_failed_logins_per_minute=1,
    )
    replicas = [await aiohttp_client(create_app(settings)) for _ in range(3)]
    statuses = []
    for i in range(12):
        api = replicas[i % 3]
        resp = await api.get("/v1/mailboxes/me", headers=basic(f"sprayed{i}", "wrong"))
        statuses.append(resp.status)
        await resp.read()
    assert statuses == [401] * 4 + [429] * 8
    assert logins(fake_server) == 4


@pytest.mark.redis
async def test_shared_buckets_wait_refill_and_give_back() -> None:
    shared = SharedRedis.connect(REDIS_URL)
    now = [1_000_000.0]
    key = uuid.uuid4().bytes

    def rations() -> LoginRations:
        return LoginRations(
            LoginThrottle(100, 60),
            clients=TokenBuckets(1, 1 / 60),
            upstreams=TokenBuckets(2, 1 / 60),
            redis=shared,
            key=key,
            wall=lambda: now[0],
            held_wait=30,
        )

    one, two = rations(), rations()  # two replicas
    try:
        first = await one.begin("p1", "c", client="192.0.2.1", upstream="u")
        assert first.shared
        # held by a login in flight on the other replica: waited for, not refused
        waiting = asyncio.ensure_future(two.begin("p2", "c", client="192.0.2.1", upstream="u"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await one.end(first, "ok")
        second = await waiting
        await two.end(second, "auth")  # a refused credential spends the tokens
        with pytest.raises(ClientLoginRateError) as caught:
            await two.begin("p3", "c", client="192.0.2.1", upstream="u")
        assert 59 <= caught.value.retry_after <= 60
        third = await one.begin("p4", "c", client="192.0.2.2", upstream="u")
        await one.end(third, "auth")  # the upstream's 2 tokens are spent now
        with pytest.raises(UpstreamLoginRateError):
            await two.begin("p5", "c", client="192.0.2.4", upstream="u")
        now[0] += 61  # one token back per minute
        refilled = await one.begin("p6", "c", client="192.0.2.4", upstream="u")
        await one.end(refilled, "other")
    finally:
        await shared.close()


async def test_a_burst_of_good_first_logins_from_one_address_is_not_refused(
    aiohttp_client: ClientFactory,
) -> None:
    """A service logs in to 40 mailboxes at once from one address, each for the first
    time: more than the client's budget of failed logins is in flight, but none fails,
    so none may be refused (each waits for a token a good login gives back)."""
    users = {f"svc{i}": f"pw{i}" for i in range(40)}
    async with FakePOP3Server(
        FakeMailbox([("u1", b"Subject: a\r\n\r\nx\r\n")]), users=users
    ) as srv:
        # sessions enough for all of them at once (more than the client's budget of 10)
        pool = {"max_per_upstream": 64, "max_total": 64}
        api = await aiohttp_client(create_app(settings_for(srv.port, pool=pool)))
        answers = await asyncio.gather(
            *(api.get("/v1/mailboxes/me", headers=basic(u, p)) for u, p in users.items())
        )
        assert [r.status for r in answers] == [200] * 40
        # and a spray is still stopped: nothing is held once the wrong ones come back
        sprayed = await asyncio.gather(
            *(api.get("/v1/mailboxes/me", headers=basic(f"x{i}", "bad")) for i in range(40))
        )
        statuses = sorted(r.status for r in sprayed)
        assert statuses.count(401) == 10  # the client's burst (default 10)
        assert statuses.count(429) == 30


async def test_redis_down_falls_back_to_the_process_throttle(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings_for(
        fake_server.port, redis_url=dead, cache_secret="s" * 32, pool={"max_failed_logins": 2}
    )
    api = await aiohttp_client(create_app(settings))
    await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "pw")), 200)
    for i in range(2):
        await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", f"b{i}")), 401)
    tried = logins(fake_server)
    body = await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "b")), 429)
    assert body["type"] == "/problems/login-throttled"
    assert logins(fake_server) == tried
    await checked(await api.get("/v1/mailboxes/me?fresh=true", headers=basic("alice", "pw")), 200)


async def test_a_reply_that_makes_no_sense_counts_as_no_redis() -> None:
    shared = SharedRedis.connect(f"redis://127.0.0.1:{free_port()}/0")
    rations = LoginRations(LoginThrottle(1, 60), redis=shared)

    async def nonsense(*_args: Any, **_kwargs: Any) -> Any:
        return [b"x"]  # no second element

    rations._eval = nonsense  # type: ignore[method-assign]
    try:
        attempt = await rations.begin("k", "cred", client=None, upstream="u")
        assert attempt.counted
        assert attempt.member is None
        await rations.end(attempt, "auth")
        with pytest.raises(LoginThrottledError):
            await rations.begin("k", "other", client=None, upstream="u")
    finally:
        await shared.close()


async def test_the_rations_wait_for_held_tokens_refuse_when_spent_and_give_back() -> None:
    now = [0.0]
    rations = LoginRations(
        LoginThrottle(10, 60, clock=lambda: now[0]),
        clients=TokenBuckets(1, 1.0, clock=lambda: now[0]),
        upstreams=TokenBuckets(2, 1.0, clock=lambda: now[0]),
        held_wait=30,
    )
    first = await rations.begin("p1", "c", client="192.0.2.1", upstream="u")
    # the client's only token is held by a login in flight: the next one waits for it
    waiting = asyncio.ensure_future(rations.begin("p2", "c", client="192.0.2.1", upstream="u"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await rations.end(first, "ok")  # a good login gives its tokens back...
    second = await waiting  # ...to the login that waited for them
    await rations.end(second, "auth")  # a refused credential spends them
    with pytest.raises(ClientLoginRateError):  # nothing held: refused at once
        await rations.begin("p3", "c", client="192.0.2.1", upstream="u")
    # the upstream had 2 tokens, one spent: another client takes the last one
    third = await rations.begin("p4", "c", client="192.0.2.2", upstream="u")
    fourth = asyncio.ensure_future(rations.begin("p5", "c", client="192.0.2.3", upstream="u"))
    await asyncio.sleep(0.05)
    assert not fourth.done()
    await rations.end(third, "auth")
    with pytest.raises(UpstreamLoginRateError) as caught:
        await fourth
    assert caught.value.retry_after >= 1
    # "p1"'s credential succeeded: it passes every budget.
    known = await rations.begin("p1", "c", client="192.0.2.1", upstream="u")
    assert known.known_good
    await rations.end(known, "ok")


async def test_a_held_token_is_waited_for_at_most_held_wait() -> None:
    rations = LoginRations(LoginThrottle(10, 60), clients=TokenBuckets(1, 1 / 60), held_wait=0.2)
    first = await rations.begin("p1", "c", client="192.0.2.1", upstream="u")
    with pytest.raises(ClientLoginRateError):
        await rations.begin("p2", "c", client="192.0.2.1", upstream="u")
    await rations.end(first, "other")


async def test_a_caller_gone_while_the_success_is_recorded_loses_the_session() -> None:
    class SlowRations(LoginRations):
        async def end(self, attempt: Any, outcome: str) -> None:
            await asyncio.sleep(0.05)  # a slow Redis
            await super().end(attempt, outcome)

    aborted: list[bool] = []

    class Client:
        def abort(self) -> None:
            aborted.append(True)

    async def how() -> Any:
        return Client()

    rations = SlowRations(LoginThrottle(3, 60))
    opener = SessionOpener(key=b"k" * 32, throttle=rations)
    account = Account(
        mailbox_id="me",
        upstream=Upstream("u", "127.0.0.1", 1, TLSMode.PLAIN),
        user="a",
        credential=Credential("pass", value="p"),
        passthrough=True,
    )
    task = asyncio.create_task(opener.open(account, how))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert aborted == [True]  # never handed to anyone, never leaked
    await asyncio.sleep(0.08)  # the outcome was recorded all the same
    key = f"{account.person(b'k' * 32)}\0passthrough"
    assert rations.throttle.known_good(key, account.digest(b"k" * 32))


def test_trusted_proxies_must_be_networks() -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        settings_for(1, http={"trusted_proxies": ["10.0.0.0/8", "proxy.example"]})
    settings = settings_for(1, http={"trusted_proxies": [" 10.1.2.3/8", "::1"]})
    assert [str(n) for n in settings.http.trusted_networks] == ["10.0.0.0/8", "::1/128"]


def test_a_client_sending_the_same_credentials_finds_its_account_as_it_was() -> None:
    """Passthrough accounts are kept with the client they were made for: the next request
    of that client with the same header gets the same object (no copy per request);
    another client gets its own copy, with its own address."""
    directory = create_app(settings_for(free_port()))[DIRECTORY]

    def resolve(peer: str) -> Account:
        request = make_mocked_request(
            "GET", "/v1/mailboxes/me", headers=basic("alice", "pw"), match_info={"mailbox": "me"}
        ).clone(remote=peer)
        return resolve_account(request, directory, "read")

    first = resolve("192.0.2.1")
    assert first.client == "192.0.2.1"
    assert resolve("192.0.2.1") is first
    other = resolve("192.0.2.2")
    assert other.client == "192.0.2.2"
    assert other == first  # the same mailbox and credential
    assert resolve("192.0.2.1") is first
