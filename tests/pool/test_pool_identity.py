"""A key names a maildrop; an identity names who logged in to it. Identities of one key
share its cap, never a session."""

from __future__ import annotations

from gateway.pop3 import State
from tests.pool.helpers import Events, MakePool, fake_factory
from tests.pool.test_pool_fake import fake


async def test_an_idle_session_serves_only_its_own_identity(
    make_pool: MakePool, events: Events
) -> None:
    async with fake() as server:
        pool = make_pool()
        factory = fake_factory(server)
        async with pool.lease("maildrop", "fake", factory, identity="bob") as first:
            pass
        async with pool.lease("maildrop", "fake", factory, identity="bob") as again:
            assert again is first  # same identity: reused
        async with pool.lease("maildrop", "fake", factory, identity="BOB") as other:
            assert other is not first  # another identity: never handed bob's session
            assert other.identity == "BOB"
            assert first.client.state is State.CLOSED  # ended first: one per maildrop
            assert pool.stats().open == 1
        assert factory.calls == 2
        assert events.counts["open"] == 2
