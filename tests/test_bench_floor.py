"""The benchmarks' floor exchange (``tests/bench/floor.py``) against a real Dovecot.

``make bench`` compares the gateway with it and prints its summarizing variant as the bound
of the loopback goal, so both must do the work they claim: every message's TOP answered,
and, with ``on_header``, each header section handed over exactly as the server holds it.
"""

from __future__ import annotations

import asyncio
import poplib

import pytest

from tests.bench import floor
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser

pytestmark = pytest.mark.dovecot

#: A field name may start with a dot: on the wire that line is dot-stuffed.
DOTTED = b"From: Ann <ann@example.test>\r\n.Dotted-Field: kept\r\nSubject: dots\r\n\r\nbody\r\n"


def top_headers(dovecot: Dovecot, user: DovecotUser) -> list[bytes]:
    """Each message's ``TOP n 0`` as poplib reads it (dot-unstuffed), CRLF line ends."""
    pop = poplib.POP3("127.0.0.1", dovecot.port, timeout=30)
    try:
        pop.user(user.name)
        pop.pass_(user.password)
        count, _ = pop.stat()
        return [b"".join(line + b"\r\n" for line in pop.top(n, 0)[1]) for n in range(1, count + 1)]
    finally:
        pop.quit()


def test_floor_answers_every_top(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(n) for n in range(40)])
    seconds, count = asyncio.run(
        floor.exchange("127.0.0.1", dovecot.port, dovecot_user.name, dovecot_user.password)
    )
    assert count == 40
    assert seconds > 0


def test_floor_hands_over_each_header_section(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(n) for n in range(30)] + [DOTTED])
    seen: list[bytes] = []
    _, count = asyncio.run(
        floor.exchange(
            "127.0.0.1",
            dovecot.port,
            dovecot_user.name,
            dovecot_user.password,
            on_header=seen.append,
        )
    )
    expected = top_headers(dovecot, dovecot_user)
    assert count == 31
    assert seen == expected
    assert b"\r\n.Dotted-Field: kept\r\n" in seen[-1]
