"""POP3Server beyond the demo: its options and the hook methods a subclass overrides.

The fault-injecting fake (tests/support/fakepop3.py, tested in tests/test_fakepop3.py) is
the main user of the hooks; these tests pin the interface itself.
"""

from __future__ import annotations

import ssl

import pytest

from gateway.demo import Answer, Mailbox, POP3Server, Session, Then, Wording
from gateway.demo.session import Step

from .helpers import raw


class Recording(POP3Server):
    """Answers NOOP itself, sends every line in upper case, records what arrives."""

    def __init__(self, mailbox: Mailbox) -> None:
        super().__init__(mailbox, users={"u": "p"}, wording=Wording(user="name taken"))
        self.lines: list[bytes] = []
        self.sessions: list[Session] = []

    def connected(self, session: Session) -> None:
        self.sessions.append(session)

    def line_received(self, session: Session, line: bytes) -> None:
        self.lines.append(line)

    async def on_command(self, session: Session, verb: str, arg: str, run: Step) -> Answer:
        if verb == "NOOP":
            return Answer(session.ok("hooked"))
        return await run()

    async def send(self, session: Session, data: bytes) -> None:
        await session.write(data.upper())

    def capabilities(self, session: Session) -> list[str]:
        return [*super().capabilities(session), "X-HOOKED"]


async def test_hooks_see_and_change_the_dialogue() -> None:
    box = Mailbox([("a", b"Subject: a\r\n\r\nbody\r\n")])
    async with Recording(box) as server, raw(server) as c:
        assert await c.line() == b"+OK POP3GW-DEMO POP3 SERVER READY\r\n"
        assert await c.command(b"USER u") == b"+OK NAME TAKEN\r\n"
        assert (await c.command(b"PASS p")).startswith(b"+OK U'S MAILDROP HAS 1 MESSAGE")
        assert await c.command(b"NOOP") == b"+OK HOOKED\r\n"
        assert await c.command(b"CAPA") == b"+OK CAPABILITY LIST FOLLOWS\r\n"
        assert (await c.multi()).endswith(b"IMPLEMENTATION POP3GW-DEMO\r\nX-HOOKED\r\n.\r\n")
        assert await c.command(b"QUIT") == b"+OK POP3GW-DEMO SIGNING OFF (1 MESSAGE LEFT)\r\n"
    assert server.lines == [b"USER u\r\n", b"PASS p\r\n", b"NOOP\r\n", b"CAPA\r\n", b"QUIT\r\n"]
    assert [s.record.user for s in server.sessions] == ["u"]
    assert server.sessions[0].record.updated
    assert box.items() == [("a", b"Subject: a\r\n\r\nbody\r\n")]
    assert repr(box) == "Mailbox(['a'])"


async def test_a_hook_may_close_instead_of_answering() -> None:
    class Closing(POP3Server):
        async def on_command(self, session: Session, verb: str, arg: str, run: Step) -> Answer:
            return Answer(b"", Then.ABORT) if verb == "STAT" else await run()

    async with Closing(users={"u": "p"}) as server, raw(server) as c:
        await c.line()
        assert await c.command(b"USER u") == b"+OK send PASS\r\n"
        await c.command(b"PASS p")
        await c.send(b"STAT\r\n")
        assert await c.rest() == b""
        await server.wait_idle()
    with pytest.raises(RuntimeError, match="already running"):
        async with server:
            await server.start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"implicit_tls": True}, "implicit_tls"),
        ({"commands": ["XTND"]}, "commands"),
        ({"mechanisms": ["CRAM-MD5"]}, "mechanisms"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"port": -1}, "port"),
    ],
)
def test_invalid_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        POP3Server(users={}, **options)  # type: ignore[arg-type]


def test_tls_options_are_kept() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server = POP3Server(users={}, tls_context=context, implicit_tls=True, commands=["stls"])
    assert server.commands == frozenset({"STLS"})
    assert server.implicit_tls
