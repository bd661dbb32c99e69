"""Failed logins are refused before they get the gateway's address blocked, without
locking the mailbox's owner out."""

from __future__ import annotations

import base64

import pytest

from gateway.app import create_app
from gateway.service import LoginThrottle, LoginThrottledError
from tests.support.api import ClientFactory, checked, settings_for
from tests.support.fakepop3 import FakePOP3Server


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_repeated_failures_are_refused_locally(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, pool={"max_failed_logins": 3}))
    )
    await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", "pw")), 200)
    for i in range(3):
        await checked(await api.get("/v1/mailboxes/me", headers=basic("alice", f"bad{i}")), 401)
    tried = len(fake_server.connections)
    resp = await api.get("/v1/mailboxes/me", headers=basic("alice", "bad-again"))
    body = await checked(resp, 429)
    assert body["type"] == "/problems/login-throttled"
    assert int(resp.headers["Retry-After"]) > 0
    assert len(fake_server.connections) == tried  # the server was not asked again
    # The owner's known-good password still works while the mailbox is throttled.
    ok = await api.get("/v1/mailboxes/me?fresh=true", headers=basic("alice", "pw"))
    await checked(ok, 200)
    # Another mailbox is not affected.
    fake_server.users["bob"] = "pw2"
    await checked(await api.get("/v1/mailboxes/me", headers=basic("bob", "pw2")), 200)


def test_the_window_slides() -> None:
    now = [0.0]
    throttle = LoginThrottle(2, 60, clock=lambda: now[0])

    def attempt(key: str, credential: str) -> None:
        """A login that gets past the throttle and then fails for another reason."""
        counted = throttle.begin(key, credential)
        throttle.end(key, counted, "other", credential)

    throttle.failed("k")
    now[0] = 30
    throttle.failed("k")
    with pytest.raises(LoginThrottledError) as caught:
        attempt("k", "digest")
    assert caught.value.retry_after == pytest.approx(30)
    attempt("other", "digest")
    now[0] = 61  # the first failure left the window
    attempt("k", "digest")
    throttle.succeeded("k", "good")
    throttle.failed("k")
    throttle.failed("k")
    attempt("k", "good")  # the known-good credential is never held back
    with pytest.raises(LoginThrottledError):
        attempt("k", "unknown")


def test_logins_in_flight_count_as_failures_to_come() -> None:
    throttle = LoginThrottle(2, 60, clock=lambda: 0.0)
    first = throttle.begin("k", "a")
    second = throttle.begin("k", "b")
    with pytest.raises(LoginThrottledError):
        throttle.begin("k", "c")  # two wrong passwords may already be on their way
    throttle.end("k", first, "auth", "a")
    throttle.end("k", second, "ok", "b")
    assert throttle.begin("k", "c")  # a success cleared the failures


def test_the_throttle_is_bounded() -> None:
    throttle = LoginThrottle(1, 60, max_keys=10)
    for i in range(100):
        throttle.failed(f"k{i}")
        throttle.succeeded(f"g{i}", "d")
    assert len(throttle._failures) <= 10
    assert len(throttle._good) <= 10
