"""The Dovecot harness and the mail corpus, checked with CPython's poplib."""

from __future__ import annotations

import contextlib
import email
import email.policy
import poplib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.corpus import (
    CorpusMessage,
    expected_list_size,
    expected_retr,
    expected_retr_wire,
    generate_corpus,
    large_message,
    simple_message,
)
from tests.support.dovecot import (
    Dovecot,
    DovecotError,
    DovecotUser,
    live_group_members,
    maildir_name,
)

pytestmark = pytest.mark.dovecot

CORPUS = generate_corpus(seed=1)
POPLIB_MAXLINE = 2048  # poplib._MAXLINE: longer lines make poplib raise


class ExactPOP3(poplib.POP3):
    """poplib with a byte-exact RETR.

    poplib's own `retr` strips every line ending (so CRLF, bare LF and trailing CRs are
    indistinguishable) and refuses lines over 2048 octets.
    """

    def retr_exact(self, which: int) -> tuple[bytes, bytes]:
        """(status line, message) with the message dot-unstuffed and otherwise untouched."""
        assert self.sock is not None
        assert self.file is not None
        self.sock.sendall(b"RETR %d\r\n" % which)
        status: bytes = self.file.readline()
        if not status.startswith(b"+OK"):
            raise poplib.error_proto(status)
        lines: list[bytes] = []
        while (line := self.file.readline()) != b".\r\n":
            if not line:
                raise poplib.error_proto("-ERR EOF")
            lines.append(line[1:] if line.startswith(b".") else line)
        return status.rstrip(b"\r\n"), b"".join(lines)


@contextlib.contextmanager
def session(dovecot: Dovecot, user: DovecotUser) -> Iterator[ExactPOP3]:
    """A logged-in poplib session on the plain port; closed (without QUIT) on exit."""
    pop = ExactPOP3(dovecot.host, dovecot.port, timeout=30)
    try:
        pop.user(user.name)
        pop.pass_(user.password)
        yield pop
    finally:
        pop.close()


def raw_exchange(dovecot: Dovecot, user: DovecotUser, commands: bytes) -> bytes:
    """Log in, send `commands` (which should end with QUIT) and return all bytes to EOF."""
    with (
        socket.create_connection((dovecot.host, dovecot.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {user.name}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"PASS {user.password}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        sock.sendall(commands)
        data: bytes = reader.read()
        return data


# -- logging in --------------------------------------------------------------------------


def test_user_pass_on_plain_port(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    pop = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        assert pop.getwelcome().startswith(b"+OK")
        caps = pop.capa()
        assert "STLS" in caps
        assert "USER" in caps
        assert set(caps["SASL"]) >= {"PLAIN", "LOGIN"}
        assert pop.user(dovecot_user.name).startswith(b"+OK")
        assert pop.pass_(dovecot_user.password).startswith(b"+OK")
        assert pop.stat() == (0, 0)
        assert pop.quit().startswith(b"+OK")
    finally:
        pop.close()


def test_stls_verified_against_cafile(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    pop = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        assert pop.stls(context=dovecot.client_ssl_context()).startswith(b"+OK")
        assert isinstance(pop.sock, ssl.SSLSocket)
        assert pop.sock.version() in {"TLSv1.2", "TLSv1.3"}
        assert "STLS" not in pop.capa()
        pop.user(dovecot_user.name)
        pop.pass_(dovecot_user.password)
        assert pop.stat() == (0, 0)
        pop.quit()
    finally:
        pop.close()


def test_pop3s_on_tls_port(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver(simple_message(1))
    pop = poplib.POP3_SSL(
        dovecot.host, dovecot.tls_port, context=dovecot.client_ssl_context(), timeout=10
    )
    try:
        assert isinstance(pop.sock, ssl.SSLSocket)
        pop.user(dovecot_user.name)
        pop.pass_(dovecot_user.password)
        assert pop.stat() == (1, expected_list_size(simple_message(1)))
        pop.quit()
    finally:
        pop.close()


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "localhost"])
def test_certificate_names(dovecot: Dovecot, server_hostname: str) -> None:
    context = dovecot.client_ssl_context()
    with (
        socket.create_connection((dovecot.host, dovecot.tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        assert tls.recv(512).startswith(b"+OK")


def test_tls_verification_is_real(dovecot: Dovecot) -> None:
    """Without the test CA, or for another name, the handshake fails."""
    cases = [
        (ssl.create_default_context(), "localhost"),
        (dovecot.client_ssl_context(), "pop.example.org"),
    ]
    for context, server_hostname in cases:
        with (
            socket.create_connection((dovecot.host, dovecot.tls_port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname=server_hostname)


def test_wrong_password_fails_fast_and_leaves_no_penalty(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    for _ in range(3):
        pop = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
        try:
            pop.user(dovecot_user.name)
            started = time.monotonic()
            with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
                pop.pass_(dovecot_user.password + "x")
            assert time.monotonic() - started < 4  # an anvil penalty would add 4.5 s or more
        finally:
            pop.close()
    started = time.monotonic()
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat() == (0, 0)
    assert time.monotonic() - started < 4, "failed logins must not slow down later ones"


def test_unknown_user_fails(dovecot: Dovecot) -> None:
    pop = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        pop.user("nobody-by-this-name")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            pop.pass_("whatever")
    finally:
        pop.close()


def test_new_users_log_in_at_once(dovecot: Dovecot) -> None:
    """No "unknown user" window after add_user, even with logins in the same second."""
    for _ in range(10):
        user = dovecot.new_user("quick")
        with session(dovecot, user) as pop:
            assert pop.stat() == (0, 0)


def test_password_change(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    with session(dovecot, dovecot_user) as pop:
        pop.stat()
    dovecot.add_user(dovecot_user.name, "a-new-password")
    changed = DovecotUser(dovecot, dovecot_user.name, "a-new-password")
    with session(dovecot, changed) as pop:
        assert pop.stat() == (0, 0)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"), session(dovecot, dovecot_user):
        pass


@pytest.mark.parametrize("name", ["", "a:b", "a/b", ".hidden", "tab\there", " padded"])
def test_add_user_rejects_unstorable_names(dovecot: Dovecot, name: str) -> None:
    with pytest.raises(ValueError, match="cannot"):
        dovecot.add_user(name, "password")


# -- mail --------------------------------------------------------------------------------


def test_stat_uidl_list_retr(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i) for i in range(5)]
    dovecot_user.deliver_many(raws)
    sizes = [expected_list_size(raw) for raw in raws]
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat() == (5, sum(sizes))
        _, listing, _ = pop.list()
        assert listing == [b"%d %d" % (i, size) for i, size in enumerate(sizes, 1)]
        _, uidl, _ = pop.uidl()
        uids = [line.split()[1] for line in uidl]
        assert [int(line.split()[0]) for line in uidl] == [1, 2, 3, 4, 5]
        assert len(set(uids)) == 5
        assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", uid) for uid in uids)
        for number, raw in enumerate(raws, 1):
            # simple_message uses CRLF, so RETR returns exactly what was stored.
            status, lines, _ = pop.retr(number)
            assert status == b"+OK %d octets" % len(raw)
            assert b"\r\n".join(lines) + b"\r\n" == raw
            assert pop.retr_exact(number) == (status, raw)
        pop.quit()
    with session(dovecot, dovecot_user) as pop:
        assert [line.split()[1] for line in pop.uidl()[1]] == uids, "UIDs must persist"
        pop.quit()
    assert dovecot_user.messages() == raws


def test_message_numbers_follow_delivery_order(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i, body_lines=2) for i in range(150)]
    dovecot_user.deliver_many(raws[:60])
    for raw in raws[60:70]:
        dovecot_user.deliver(raw)
    dovecot_user.deliver_many(raws[70:])
    assert dovecot_user.messages() == raws
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat()[0] == len(raws)
        for number, raw in enumerate(raws, 1):
            assert pop.retr_exact(number)[1] == raw
        pop.quit()
    assert dovecot_user.messages() == raws, "order must survive Dovecot's new/ -> cur/ moves"


def test_new_mail_is_invisible_to_a_running_session(
    dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(simple_message(1))
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat()[0] == 1
        dovecot_user.deliver(simple_message(2))
        assert pop.stat()[0] == 1
        pop.quit()
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat()[0] == 2
        pop.quit()


def test_dele_and_quit_removes_the_file(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i) for i in range(3)]
    dovecot_user.deliver_many(raws)
    with session(dovecot, dovecot_user) as pop:
        assert pop.dele(2).startswith(b"+OK")
        assert pop.quit().startswith(b"+OK")
    assert dovecot_user.messages() == [raws[0], raws[2]]
    assert len(dovecot.maildir_files(dovecot_user.name)) == 2
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat()[0] == 2
        pop.quit()


def test_dele_without_quit_removes_nothing(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i) for i in range(3)]
    dovecot_user.deliver_many(raws)
    marker = f"pop3({dovecot_user.name})"
    with session(dovecot, dovecot_user) as pop:
        assert pop.dele(1).startswith(b"+OK")
        assert pop.dele(3).startswith(b"+OK")
        assert pop.stat()[0] == 1
    # The socket is closed without QUIT: the session never reaches the UPDATE state.
    log = dovecot.wait_for_log(
        lambda text: any(marker in line and "Disconnected" in line for line in text.splitlines())
    )
    # Dovecot's logout line counts what it really expunged: none of the three.
    assert "del=0/3" in log
    assert dovecot_user.messages() == raws
    with session(dovecot, dovecot_user) as pop:
        assert pop.stat()[0] == 3
        pop.quit()


def test_seed_ten_thousand_messages(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i, body_lines=3) for i in range(10_000)]
    started = time.monotonic()
    dovecot_user.deliver_many(raws)
    seeded = time.monotonic() - started
    assert seeded < 10, f"seeding 10,000 messages took {seeded:.2f} s"
    with session(dovecot, dovecot_user) as pop:
        count, size = pop.stat()
        assert count == 10_000
        assert size == sum(len(raw) for raw in raws)
        assert len(set(line.split()[1] for line in pop.uidl()[1])) == 10_000
        for number in (1, 5_000, 10_000):
            assert pop.retr_exact(number)[1] == raws[number - 1]
        pop.quit()


def test_large_message_round_trip(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raw = large_message(3_000_000)
    dovecot_user.deliver(raw)
    with session(dovecot, dovecot_user) as pop:
        assert pop.retr_exact(1) == (b"+OK %d octets" % len(raw), raw)
        pop.quit()


# -- exactly what RETR returns -----------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_mailbox(dovecot: Dovecot) -> DovecotUser:
    user = dovecot.new_user("corpus")
    user.deliver_many(message.raw for message in CORPUS)
    return user


@pytest.mark.parametrize("message", CORPUS, ids=[message.name for message in CORPUS])
def test_corpus_retr(dovecot: Dovecot, corpus_mailbox: DovecotUser, message: CorpusMessage) -> None:
    number = CORPUS.index(message) + 1
    expected = expected_retr(message.raw)
    with session(dovecot, corpus_mailbox) as pop:
        status, body = pop.retr_exact(number)
        assert body == expected
        assert status == b"+OK %d octets" % expected_list_size(message.raw)
        # Stock poplib agrees, line by line, unless a line is too long for it.
        if max(len(line) for line in expected.split(b"\n")) + 1 <= POPLIB_MAXLINE:
            _, lines, _ = pop.retr(number)
            assert b"".join(line + b"\r\n" for line in lines) == expected
        else:
            with pytest.raises(poplib.error_proto, match="line too long"):
                pop.retr(number)
    # Reading never changes what is stored.
    assert corpus_mailbox.messages()[number - 1] == message.raw


EDGE_CASES = [
    b"",
    b"x",
    b"a\r",
    b"\r",
    b"x\r\r",
    b"a\rb\n",
    b"a\r\r\n",
    b"\n",
    b"\r\n",
    b"a\n\r",
    b"a\r\nb",
    b"a\n.\n",
    b"a\n..\n.x\n",
    b"Subject: x\n\n.\n..\n...\n",
    b"Subject: x\r\n\r\n.\r\n",
    b"Subject: x\n\na\x00b\xff\n",
    # Dovecot does not dot-stuff the first line of a message:
    b".\n",
    b"..\n",
    b".foo\nbar\n",
]


def test_expected_retr_edge_cases(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    """Every edge case, byte for byte on the wire, including the reply's octet count."""
    dovecot_user.deliver_many(EDGE_CASES)
    for number, raw in enumerate(EDGE_CASES, 1):
        received = raw_exchange(dovecot, dovecot_user, b"RETR %d\r\nQUIT\r\n" % number)
        status = b"+OK %d octets\r\n" % expected_list_size(raw)
        assert received == status + expected_retr_wire(raw) + b"+OK Logging out.\r\n", raw
        if raw.startswith(b"."):
            with pytest.raises(ValueError, match="leading"):
                expected_retr(raw)
        else:
            wire = expected_retr_wire(raw)
            lines = wire.split(b"\r\n")[:-2]  # the terminator and what follows it
            unstuffed = [line[1:] if line.startswith(b".") else line for line in lines]
            assert b"".join(line + b"\r\n" for line in unstuffed) == expected_retr(raw)


def test_expected_retr_rules() -> None:
    assert expected_retr(b"a\nb\r\nc") == b"a\r\nb\r\nc\r\n"
    assert expected_retr(b"") == b"\r\n"
    assert expected_retr(b"x\r") == b"x\r\r\n"
    assert expected_retr(b"x\ry\n") == b"x\ry\r\n"
    assert expected_list_size(b"a\nb") == 4
    assert expected_retr_wire(b"a\n.\n") == b"a\r\n..\r\n.\r\n"


# -- the corpus itself -------------------------------------------------------------------


def test_corpus_is_deterministic() -> None:
    assert generate_corpus(seed=1) == CORPUS
    other = generate_corpus(seed=2)
    assert [m.name for m in other] == [m.name for m in CORPUS]
    assert [m.traits for m in other] == [m.traits for m in CORPUS]
    assert all(a.raw != b.raw for a, b in zip(other, CORPUS, strict=True))
    assert len({m.name for m in CORPUS}) == len(CORPUS)


def test_corpus_covers_the_required_traits() -> None:
    traits = set().union(*(m.traits for m in CORPUS))
    required = {
        "rfc2047-b",
        "rfc2047-q",
        "charset-gb2312",
        "charset-utf-8",
        "charset-iso-8859-1",
        "encoded-filename",
        "raw-utf8",
        "raw-latin1",
        "bare-lf",
        "bare-cr",
        "missing-date",
        "missing-message-id",
        "long-header-line",
        "boundary-missing",
        "unterminated-multipart",
        "invalid-base64",
        "dot-lines",
        "multipart-alternative",
        "binary-attachment",
        "nested-multipart",
        "message-rfc822",
        "empty-body",
        "header-only",
        "long-body-line",
        "rfc2231",
        "no-final-newline",
    }
    assert required <= traits, required - traits


def _by_trait(trait: str) -> list[CorpusMessage]:
    found = [m for m in CORPUS if trait in m.traits]
    assert found, trait
    return found


def test_corpus_traits_hold() -> None:
    def head(raw: bytes) -> bytes:
        return re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]

    for m in CORPUS:
        assert not m.raw.startswith(b"."), m.name
    for m in _by_trait("bare-lf"):
        assert re.search(rb"(?<!\r)\n", m.raw), m.name
    for m in _by_trait("bare-cr"):
        assert re.search(rb"\r(?!\n)", m.raw), m.name
    for m in _by_trait("missing-date"):
        assert not re.search(rb"(?im)^date:", head(m.raw)), m.name
    for m in _by_trait("missing-message-id"):
        assert not re.search(rb"(?im)^message-id:", head(m.raw)), m.name
    for m in _by_trait("long-header-line"):
        assert max(len(line) for line in head(m.raw).split(b"\r\n")) >= 1500
    for m in _by_trait("long-body-line"):
        assert max(len(line) for line in m.raw.split(b"\r\n")) >= 10_000
    for m in _by_trait("no-final-newline"):
        assert not m.raw.endswith(b"\n"), m.name
    for m in _by_trait("header-only"):
        assert not re.search(rb"\r?\n\r?\n", m.raw), m.name
    for m in _by_trait("empty-body"):
        assert m.raw.endswith(b"\r\n\r\n"), m.name
    for m in _by_trait("dot-lines"):
        lines = m.raw.replace(b"\r\n", b"\n").split(b"\n")
        assert {b".", b"..", b"..."} <= set(lines)
        assert m.raw.endswith(b"\n.\n")
    for m in _by_trait("raw-utf8"):
        assert "請求書".encode() in head(m.raw)
    for m in _by_trait("raw-latin1"):
        assert "Café".encode("latin-1") in head(m.raw)
    for m in _by_trait("charset-gb2312"):
        assert b"=?GB2312?B?" in m.raw
        assert b"=?GB2312?Q?" in m.raw
    for m in _by_trait("rfc2231"):
        assert b"filename*=UTF-8''" in m.raw
        assert b"filename*0*=" in m.raw
    for m in _by_trait("nul-byte"):
        assert b"\x00" in m.raw


def test_corpus_decodes_like_a_mail_client_would() -> None:
    """Python's email package reads the intended names out of the encoded headers."""
    parsed = {m.name: email.message_from_bytes(m.raw, policy=email.policy.default) for m in CORPUS}

    def filenames(name: str) -> list[str | None]:
        return [part.get_filename() for part in parsed[name].walk() if part.get_filename()]

    assert str(parsed["gb2312-encoded-words"]["Subject"]) == "关于下周会议的通知"
    assert filenames("gb2312-encoded-words") == ["会议纪要.doc"]
    assert "Jürgen" in str(parsed["utf8-encoded-words"]["Subject"])
    assert filenames("utf8-encoded-words") == ["Lebenslauf – Jürgen.pdf", "Zeugnisse Übersicht.txt"]
    assert str(parsed["latin1-encoded-words"]["Subject"]).startswith("Réunion à Montréal")
    assert filenames("latin1-encoded-words") == ["Ordre du jour - réunion.txt"]
    assert filenames("rfc2231-filename") == [
        "中文报告 2024年.pdf",
        "Übersicht der Änderungen für das Geschäftsjahr - endgültige Fassung.txt",
    ]
    parts = parsed["rfc822-attachment"].walk()
    inner = next(p for p in parts if p.get_content_type() == "message/rfc822")
    assert inner.get_filename() == "original.eml"


def test_simple_message_is_realistic_and_distinct() -> None:
    seen: dict[str, set[str]] = {"Subject": set(), "Message-ID": set(), "Date": set()}
    for i in range(50):
        raw = simple_message(i)
        assert raw == simple_message(i)
        header_block = raw.split(b"\r\n\r\n", 1)[0]
        assert 1400 <= len(header_block) <= 2100, len(header_block)
        assert b"\nReceived: " in header_block
        assert len(raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) - 1 == 20
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        for header, values in seen.items():
            values.add(str(msg[header]))
    assert all(len(values) == 50 for values in seen.values())
    assert b"\r" not in simple_message(3, eol=b"\n")


@pytest.mark.parametrize("size", [2_000, 65_536, 1_000_000, 5_000_000])
def test_large_message_size(size: int) -> None:
    raw = large_message(size)
    assert abs(len(raw) - size) <= 100
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    attachment = next(part for part in msg.walk() if part.get_filename() == "archive.bin")
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert len(payload) >= (size - 1000) * 0.7  # headers take about 1000 octets
    assert raw == large_message(size)


# -- the harness itself ------------------------------------------------------------------


def test_connection_cap_is_configured() -> None:
    # Dovecot counts connections asynchronously (anvil), so probing the cap by opening
    # sessions races; the setting itself is what the harness controls.
    with Dovecot(mail_max_userip_connections=2) as server:
        config = subprocess.run(
            ["doveconf", "-c", str(server.config_path), "-h", "mail_max_userip_connections"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert config.stdout.strip() == "2"


def test_pop3_lock_session_setting() -> None:
    with Dovecot(pop3_lock_session=True) as server:
        config = subprocess.run(
            ["doveconf", "-c", str(server.config_path), "-h", "pop3_lock_session"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert config.stdout.strip() == "yes"
        user = server.new_user()
        for _ in range(2):  # the lock is released at the end of each session
            with session(server, user) as pop:
                assert pop.stat() == (0, 0)
                pop.quit()


def test_stop_cleans_up() -> None:
    server = Dovecot()
    with server:
        pid, port, workdir = server.pid, server.port, server.workdir
        assert workdir.is_dir()
    assert not server.running
    assert live_group_members(pid) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, port), timeout=5).close()
    assert not workdir.exists()
    server.stop()  # idempotent


def test_start_failure_reports_the_log() -> None:
    server = Dovecot(extra_config="no_such_setting = 1\n")
    with pytest.raises(DovecotError, match="no_such_setting"):
        server.start()
    assert not server.running


def dovecot_name_hash(name: str) -> int:
    """Dovecot's ``maildir_filename_base_hash`` (src/lib-storage/index/maildir): the hash
    its Maildir code keys file names by, up to the ``:`` of the flags."""
    h = 0
    for octet in name.partition(":")[0].encode():
        h = ((h << 4) + octet) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
            h ^= g
    return h


@pytest.mark.parametrize("first", [1, 10_003, 90_001])
def test_maildir_names_spread_over_dovecots_hash(first: int) -> None:
    """Names that hash alike make Dovecot walk a list for every lookup: a big mailbox then
    lists several times slower, and benchmarks measure the harness, not the server."""
    names = [maildir_name(1_796_609_309, seq, 11_174) for seq in range(first, first + 10_000)]
    assert len(set(names)) == len(names)
    assert len({dovecot_name_hash(name) for name in names}) >= 9_990
    assert names == sorted(names)
