"""A throwaway Dovecot POP3 server for tests.

`Dovecot` writes a self-contained configuration into a fresh temporary directory, starts
``dovecot -F -c <conf>`` listening on 127.0.0.1 only (one plain POP3 port that also offers
STLS, and one implicit-TLS POP3S port, both on free ports), and gives tests direct access to
the users' Maildirs so that they can seed mail and check what is left after a session.

What it takes to run this as root (as CI does), found by running Dovecot 2.3.19:

- Dovecot refuses mail access as uid 0 ("Mail access not allowed for root") and gid 0
  ("Mail access for users with GID 0 not permitted"). Mail processes run as the system user
  ``mail`` (uid/gid 8 on Debian, from base-passwd): ``mail_uid``/``mail_gid`` name it and
  ``first_valid_uid``/``first_valid_gid`` (default 500) are lowered to it. Maildirs and every
  delivered file are created owned by that user.
- Login processes run as ``dovenull`` and the auth process as ``dovecot``
  (``default_login_user``/``default_internal_user``; the Debian package creates both).
  Passwd-files are owned by ``dovecot`` with mode 0600; the temporary directory is 0711 so
  that these users can reach their files; ``base_dir`` must be world-readable (0755), or
  Dovecot changes it and warns.

Other choices, each measured:

- One passwd-file per user (``args = .../passwd.d/%u``) instead of one shared file. Dovecot
  does re-read a changed passwd-file, but not within the second of its previous look at it:
  with one shared file, half of the logins made right after adding a user failed as
  "unknown user". A new user's own file has never been read, so the login works at once.
- Anvil's authentication penalty is switched off (its socket is disabled with ``mode = 0``):
  after one failed login every later login from 127.0.0.1 (shared by all tests) was
  delayed 4.5 s, even with the right password. ``login_trusted_networks`` does not lift it.
- ``auth_failure_delay = 0``: a failed login then answers in about 0.5 s; Dovecot checks
  its queue of delayed failures every 500 ms, so that is as fast as it gets.

When not running as root, the current user and group take all these roles and the login
and anvil processes are not chrooted.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import trustme

from tests.support.corpus import expected_list_size, expected_retr, expected_retr_wire

__all__ = [
    "DOVECOT_BINARY",
    "HOST",
    "SELF_SIGNED_NAME",
    "Dovecot",
    "DovecotError",
    "DovecotUser",
    "dovecot_available",
    "expected_list_size",
    "expected_retr",
    "expected_retr_wire",
    "free_port",
    "live_group_members",
    "require_dovecot",
]

DOVECOT_BINARY = "/usr/sbin/dovecot"
HOST = "127.0.0.1"

# System accounts used when running as root. The Debian dovecot-core package creates
# "dovecot" and "dovenull"; "mail" comes with base-passwd on every Debian system.
ROOT_MAIL_USER = "mail"
ROOT_LOGIN_USER = "dovenull"
ROOT_INTERNAL_USER = "dovecot"

# UNIX socket paths must fit in sun_path (108 bytes); Dovecot's deepest one is about
# 30 bytes below base_dir.
_MAX_BASE_DIR_LEN = 70

_PR_SET_PDEATHSIG = 1


class DovecotError(RuntimeError):
    """Dovecot could not be configured, started or stopped."""


# -- helpers -----------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def dovecot_available() -> bool:
    """True when the Dovecot binary and its POP3 service are installed."""
    return os.access(DOVECOT_BINARY, os.X_OK) and os.access("/usr/lib/dovecot/pop3", os.X_OK)


def require_dovecot() -> None:
    """Skip the calling test when Dovecot is missing; fail instead under CI (CI=true)."""
    if dovecot_available():
        return
    import pytest

    message = f"{DOVECOT_BINARY} is not installed (scripts/bootstrap.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class _Accounts:
    """Which system users the Dovecot processes run as."""

    mail_user: str
    mail_group: str
    mail_uid: int
    mail_gid: int
    login_user: str
    internal_user: str
    internal_uid: int
    internal_gid: int
    as_root: bool

    @classmethod
    def detect(cls) -> _Accounts:
        if os.geteuid() == 0:
            try:
                mail = pwd.getpwnam(ROOT_MAIL_USER)
                internal = pwd.getpwnam(ROOT_INTERNAL_USER)
                pwd.getpwnam(ROOT_LOGIN_USER)
            except KeyError as exc:
                raise DovecotError(
                    f"system user missing ({exc}); install dovecot-core from Debian's packages"
                ) from exc
            return cls(
                mail_user=mail.pw_name,
                mail_group=grp.getgrgid(mail.pw_gid).gr_name,
                mail_uid=mail.pw_uid,
                mail_gid=mail.pw_gid,
                login_user=ROOT_LOGIN_USER,
                internal_user=internal.pw_name,
                internal_uid=internal.pw_uid,
                internal_gid=internal.pw_gid,
                as_root=True,
            )
        me = pwd.getpwuid(os.geteuid())
        gid = os.getegid()
        return cls(
            mail_user=me.pw_name,
            mail_group=grp.getgrgid(gid).gr_name,
            mail_uid=me.pw_uid,
            mail_gid=gid,
            login_user=me.pw_name,
            internal_user=me.pw_name,
            internal_uid=me.pw_uid,
            internal_gid=gid,
            as_root=False,
        )


@dataclass(frozen=True)
class DovecotUser:
    """A mailbox on a running `Dovecot`, with shortcuts to its Maildir."""

    dovecot: Dovecot
    name: str
    password: str

    @property
    def maildir(self) -> Path:
        return self.dovecot.maildir(self.name)

    def deliver(self, raw: bytes) -> Path:
        return self.dovecot.deliver(self.name, raw)

    def deliver_many(self, raws: Iterable[bytes]) -> list[Path]:
        return self.dovecot.deliver_many(self.name, raws)

    def messages(self) -> list[bytes]:
        return self.dovecot.maildir_messages(self.name)


def maildir_name(seconds: int, seq: int, pid: int) -> str:
    """A delivered message's Maildir file name: ``<secs>.M<usecs>P<pid>.<host>``, with a
    zero-padded counter in the usecs field, so names sort in delivery order numerically and
    as text.

    No ``Q<n>`` field repeating that counter: Dovecot keys a Maildir's files by a hash of
    their names (``maildir_filename_base_hash``), and with the same digits twice, 10,000
    consecutive names could hash to as few as 5 values, so every lookup walked a list (a
    10,000-message mailbox took 0.9 s to list instead of 0.15 s, and only the first one made
    in a Dovecot instance was fast)."""
    return f"{seconds}.M{seq:09d}P{pid}.pop3gw-test"


def _maildir_sort_key(name: str) -> tuple[int, int, str]:
    """Order Maildir names as Dovecot numbers new files: by the seconds field, then the
    ``M<usecs>`` field, then the whole base name."""
    base = name.split(":", 1)[0]
    secs_text, _, rest = base.partition(".")
    secs = int(secs_text) if secs_text.isdigit() else 0
    match = re.match(r"M(\d+)", rest)
    usecs = int(match.group(1)) if match else 0
    return (secs, usecs, base)


_LIVE: weakref.WeakSet[Dovecot] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


class Dovecot:
    """One Dovecot instance serving POP3 on 127.0.0.1, configured from scratch.

    Use it as a context manager, or call `start()` and `stop()`. Settings:

    - `mail_max_userip_connections`: the per-user-and-IP cap on sessions (Dovecot's default
      is 10; high here so that parallel tests do not trip over it);
    - `pop3_lock_session`: when true, a second session on a mailbox waits and then fails
      with ``[IN-USE]``;
    - `auth_failure_delay`: how long a failed login waits before its ``-ERR`` (Dovecot's
      default is 2 s; failures are released every 0.5 s at best);
    - `process_limit`: Dovecot's ``default_process_limit`` (one process per connection);
    - `extra_config`: appended verbatim to the generated configuration;
    - `oauth2_introspection_url`: when set, XOAUTH2 and OAUTHBEARER logins are checked by
      Dovecot's ``oauth2`` passdb, which POSTs ``token=...`` to this URL (RFC 7662
      introspection) and wants ``{"active": true, "username": <user>}`` back; users still
      need `add_user` (their Maildir and userdb entry);
    - `certificate`: ``"ca"`` (default) serves a certificate for "localhost" and 127.0.0.1
      issued by a test CA (`cafile`); ``"self-signed"`` serves what a lab server often has:
      a self-signed certificate for another name (`SELF_SIGNED_NAME`), made on the spot,
      that nothing trusts unless pinned (`certificate_sha256`);
    - `start_timeout`/`stop_timeout`: bounds in seconds.
    """

    def __init__(
        self,
        *,
        mail_max_userip_connections: int = 1000,
        pop3_lock_session: bool = False,
        auth_failure_delay: str = "0",
        process_limit: int = 500,
        extra_config: str = "",
        oauth2_introspection_url: str | None = None,
        certificate: Literal["ca", "self-signed"] = "ca",
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._certificate = certificate
        self._mail_max_userip_connections = mail_max_userip_connections
        self._pop3_lock_session = pop3_lock_session
        self._auth_failure_delay = auth_failure_delay
        self._process_limit = process_limit
        self._extra_config = extra_config
        self._oauth2_url = oauth2_introspection_url
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout

        self._accounts = _Accounts.detect()
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._tls_port = 0
        self._lock = threading.Lock()
        self._seq = 0
        self._users: dict[str, str] = {}

    # -- properties ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The plain POP3 port (STLS is offered on it)."""
        self._require_started()
        return self._port

    @property
    def tls_port(self) -> int:
        """The implicit-TLS POP3S port."""
        self._require_started()
        return self._tls_port

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise DovecotError("Dovecot has not been started")
        return self._workdir

    @property
    def cafile(self) -> Path:
        """PEM file of the test CA that signed the server certificate (for "localhost"
        and 127.0.0.1)."""
        return self.workdir / "tls" / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def passwd_dir(self) -> Path:
        """One passwd-file per user lives here (see `add_user`)."""
        return self.workdir / "passwd.d"

    @property
    def pid(self) -> int:
        """Process id of the Dovecot master (also its process group id)."""
        self._require_started()
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def passwd_file(self, user: str) -> Path:
        return self.passwd_dir / user

    def maildir(self, user: str) -> Path:
        return self.workdir / "home" / user / "Maildir"

    @property
    def certificate_sha256(self) -> str:
        """Hex SHA-256 of the server certificate (DER), as a pin names it."""
        pem = (self.workdir / "tls" / "cert.pem").read_text()
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA (hostname checking on); with a
        self-signed certificate, one that checks nothing (to see the server greet)."""
        if self._certificate == "self-signed":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.cafile))

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Configure and start Dovecot; return once both ports have sent a greeting.

        Raises `DovecotError`, with the tail of Dovecot's log, when it does not come up
        within `start_timeout` seconds. A port taken by someone else between choosing it
        and Dovecot binding it is retried with new ports.
        """
        if self._proc is not None:
            raise DovecotError("Dovecot is already started")
        if not dovecot_available():
            raise DovecotError(f"{DOVECOT_BINARY} (with the pop3 service) is not installed")
        self._prepare_workdir()
        _LIVE.add(self)
        last_error: DovecotError | None = None
        for _attempt in range(3):
            self._port, self._tls_port = _two_free_ports()
            self._write_config()
            try:
                self._launch_and_wait()
                return
            except DovecotError as exc:
                last_error = exc
                self._kill()
                if "Address already in use" not in str(exc):
                    break
        self._cleanup_workdir()
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop Dovecot and remove its files; idempotent, bounded by `stop_timeout`.

        SIGTERM to the master, then SIGKILL to whatever is left in its process group.
        Set POP3GW_KEEP_DOVECOT=1 to keep the directory (config, log, Maildirs).
        """
        self._kill()
        self._cleanup_workdir()
        _LIVE.discard(self)

    # -- users --------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> Path:
        """Add a user, or change an existing user's password; return their Maildir.

        Each user has a passwd-file of their own (see the module docstring for why); a new
        user can log in at once. After a password change this waits, bounded, until
        Dovecot has noticed it.
        """
        _check_passwd_field("user name", name)
        _check_passwd_field("password", password)
        if "/" in name or name.startswith("."):
            raise ValueError(f"user name {name!r} cannot be a file name")
        with self._lock:
            existed = name in self._users
            self._users[name] = password
            self._create_maildir(name)
            self._write_passwd(name)
        if existed:
            self.wait_for_login(name, password)
        return self.maildir(name)

    def new_user(self, prefix: str = "user") -> DovecotUser:
        """A fresh user with a unique name and a random password."""
        with self._lock:
            self._seq += 1
            name = f"{prefix}{self._seq}-{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        self.add_user(name, password)
        return DovecotUser(self, name, password)

    def wait_for_login(self, name: str, password: str, timeout: float = 5.0) -> None:
        """Block until USER/PASS as `name` succeeds on the plain port (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._try_login(name, password)
            if reply.startswith(b"+OK"):
                return
            if time.monotonic() >= deadline:
                raise DovecotError(
                    f"{name!r} cannot log in after {timeout} s (last reply {reply!r})\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    # -- mail ---------------------------------------------------------------------------

    def deliver(self, user: str, raw: bytes) -> Path:
        """Store `raw` (exact bytes) as a new message of `user`; return its path in new/."""
        return self.deliver_many(user, [raw])[0]

    def deliver_many(self, user: str, raws: Iterable[bytes]) -> list[Path]:
        """Store messages in order; POP3 message numbers follow this order.

        Each file is written to tmp/ and renamed into new/ (the Maildir protocol), so a
        session running at the same time never sees a partial file; new mail shows up in
        the next session. Names sort in delivery order the way Dovecot sorts them.
        """
        maildir = self.maildir(user)
        tmp_dir, new_dir = maildir / "tmp", maildir / "new"
        if not new_dir.is_dir():
            raise DovecotError(f"no Maildir for user {user!r}: add_user() first")
        uid, gid = self._accounts.mail_uid, self._accounts.mail_gid
        chown = self._accounts.as_root
        pid = os.getpid()
        paths: list[Path] = []
        for raw in raws:
            with self._lock:
                self._seq += 1
                seq = self._seq
            name = maildir_name(int(time.time()), seq, pid)
            tmp_path = tmp_dir / name
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                if chown:
                    os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
            final = new_dir / name
            os.rename(tmp_path, final)
            paths.append(final)
        return paths

    def maildir_files(self, user: str) -> list[Path]:
        """The message files of `user` (new/ and cur/), in POP3 message-number order."""
        maildir = self.maildir(user)
        entries: list[tuple[tuple[int, int, str], Path]] = []
        for sub in ("new", "cur"):
            with os.scandir(maildir / sub) as it:
                entries.extend(
                    (_maildir_sort_key(entry.name), Path(entry.path))
                    for entry in it
                    if not entry.name.startswith(".")
                )
        entries.sort(key=lambda item: item[0])
        return [path for _, path in entries]

    def maildir_messages(self, user: str) -> list[bytes]:
        """The bytes of every message `user` has stored now, in message-number order.

        Dovecot renames files from new/ to cur/ (adding flags) as sessions see them; a
        read that races with such a rename is retried (bounded).
        """
        for _attempt in range(100):
            try:
                return [path.read_bytes() for path in self.maildir_files(user)]
            except FileNotFoundError:
                time.sleep(0.01)
        raise DovecotError(f"the Maildir of {user!r} kept changing while being read")

    # -- logs ---------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of Dovecot's log and of its stderr, for error messages."""
        if self._workdir is None:
            return "(no Dovecot directory)"
        parts: list[str] = []
        for label, path in (("dovecot.log", self.log_path), ("stderr", self._stderr_path)):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- {label} (tail) ---\n{tail}")
        return "\n".join(parts) if parts else "(Dovecot wrote no log)"

    def wait_for_log(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        """Block until `predicate(log text)` is true (bounded); return the log text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if predicate(text):
                return text
            if time.monotonic() >= deadline:
                raise DovecotError(f"log condition not met in {timeout} s\n{self.log_tail()}")
            time.sleep(0.02)

    # -- internals ----------------------------------------------------------------------

    @property
    def _stderr_path(self) -> Path:
        return self.workdir / "dovecot.stderr"

    def _require_started(self) -> None:
        if self._proc is None:
            raise DovecotError("Dovecot is not running")

    def _prepare_workdir(self) -> None:
        parent = "/tmp" if os.path.isdir("/tmp") else None  # noqa: S108 - short socket paths
        workdir = Path(tempfile.mkdtemp(prefix="pop3gw-dovecot-", dir=parent))
        self._workdir = workdir
        self._users = {}
        if len(str(workdir / "base")) > _MAX_BASE_DIR_LEN:
            self._cleanup_workdir()
            raise DovecotError(f"directory path too long for UNIX sockets: {workdir}")
        # Dovecot's unprivileged users must traverse these directories, not list them.
        workdir.chmod(0o711)
        for sub in ("state", "home", "passwd.d", "tls"):
            (workdir / sub).mkdir()
            (workdir / sub).chmod(0o711)
        (workdir / "base").mkdir()
        (workdir / "base").chmod(0o755)
        self._write_certificates()

    def _write_certificates(self) -> None:
        tls_dir = self.workdir / "tls"
        if self._certificate == "self-signed":
            _write_self_signed(tls_dir)
            return
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", HOST)
        ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
        cert.private_key_pem.write_to_path(str(tls_dir / "key.pem"))
        (tls_dir / "key.pem").chmod(0o600)
        for i, pem in enumerate(cert.cert_chain_pems):
            pem.write_to_path(str(tls_dir / "cert.pem"), append=i > 0)
        (tls_dir / "ca.pem").chmod(0o644)
        (tls_dir / "cert.pem").chmod(0o644)

    def _write_passwd(self, name: str) -> None:
        home = self.workdir / "home" / name
        line = f"{name}:{{PLAIN}}{self._users[name]}::::{home}::\n"
        target = self.passwd_file(name)
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(line)
        tmp.chmod(0o600)
        if self._accounts.as_root:
            os.chown(tmp, self._accounts.internal_uid, self._accounts.internal_gid)
        os.replace(tmp, target)

    def _create_maildir(self, name: str) -> None:
        home = self.workdir / "home" / name
        maildir = home / "Maildir"
        for path in (home, maildir, maildir / "new", maildir / "cur", maildir / "tmp"):
            path.mkdir(exist_ok=True)
            path.chmod(0o700)
            if self._accounts.as_root:
                os.chown(path, self._accounts.mail_uid, self._accounts.mail_gid)

    def _write_config(self) -> None:
        acc = self._accounts
        work = self.workdir
        tls = work / "tls"
        dh = Path("/usr/share/dovecot/dh.pem")
        ssl_dh = f"ssl_dh = <{dh}" if dh.is_file() else ""
        # Only root can chroot the login and anvil processes.
        login_chroot = "" if acc.as_root else "  chroot =\n"
        # Without root, sockets cannot be given to the "dovecot" group either.
        internal_group = "" if acc.as_root else f"default_internal_group = {acc.mail_group}"
        mechanisms = "plain login"
        oauth2_passdb = ""
        if self._oauth2_url:
            # Tokens are checked by asking the test's introspection endpoint at every
            # login (auth_cache_size = 0), before the passwd-file passdb sees the login.
            conf = work / "oauth2.conf.ext"
            conf.write_text(
                f"introspection_mode = post\n"
                f"introspection_url = {self._oauth2_url}\n"
                "force_introspection = yes\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
                "timeout_msecs = 10000\n"
            )
            conf.chmod(0o644)
            mechanisms = "plain login xoauth2 oauthbearer"
            oauth2_passdb = (
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {conf}\n}}\n"
            )
        config = f"""\
# A self-contained POP3-only Dovecot for tests (tests/support/dovecot.py).
base_dir = {work / "base"}
state_dir = {work / "state"}
instance_name = {work.name}
log_path = {self.log_path}
info_log_path = {self.log_path}

protocols = pop3
listen = {HOST}
shutdown_clients = yes

default_login_user = {acc.login_user}
default_internal_user = {acc.internal_user}
{internal_group}
mail_uid = {acc.mail_user}
mail_gid = {acc.mail_group}
first_valid_uid = {acc.mail_uid}
last_valid_uid = {acc.mail_uid}
first_valid_gid = {acc.mail_gid}
last_valid_gid = {acc.mail_gid}

mail_location = maildir:~/Maildir
mail_max_userip_connections = {self._mail_max_userip_connections}
pop3_lock_session = {"yes" if self._pop3_lock_session else "no"}
default_process_limit = {self._process_limit}

ssl = yes
ssl_cert = <{tls / "cert.pem"}
ssl_key = <{tls / "key.pem"}
ssl_min_protocol = TLSv1.2
{ssl_dh}

disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = {self._auth_failure_delay}
auth_cache_size = 0
auth_verbose = yes

{oauth2_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.passwd_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = {self.passwd_dir}/%u
}}

# Anvil's brute-force penalty would delay every login from 127.0.0.1 after any failed
# one; without its socket the auth process runs without penalties.
service anvil {{
{login_chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

service pop3-login {{
{login_chroot}  inet_listener pop3 {{
    address = {HOST}
    port = {self._port}
  }}
  inet_listener pop3s {{
    address = {HOST}
    port = {self._tls_port}
    ssl = yes
  }}
}}
{self._extra_config}
"""
        self.config_path.write_text(config)

    def _launch_and_wait(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                [DOVECOT_BINARY, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                # Dovecot gets SIGTERM if this process dies without stopping it. The
                # signal follows the forking thread, so only when started from the main one.
                preexec_fn=_die_with_parent if main_thread and _PRCTL else None,
            )
        deadline = time.monotonic() + self._start_timeout
        pending = {self._port: False, self._tls_port: True}
        while pending:
            code = self._proc.poll()
            if code is not None:
                raise DovecotError(f"dovecot exited with status {code}\n{self.log_tail()}")
            for port, tls in list(pending.items()):
                if _greets(port, self.client_ssl_context() if tls else None):
                    del pending[port]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise DovecotError(
                    f"dovecot did not greet on port(s) {sorted(pending)} within "
                    f"{self._start_timeout} s\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _try_login(self, name: str, password: str) -> bytes:
        """USER/PASS/QUIT on the plain port; returns the reply to PASS."""
        with (
            socket.create_connection((HOST, self.port), timeout=10) as sock,
            sock.makefile("rb") as reader,
        ):
            reader.readline()
            sock.sendall(f"USER {name}\r\n".encode())
            reader.readline()
            sock.sendall(f"PASS {password}\r\n".encode())
            reply: bytes = reader.readline()
            sock.sendall(b"QUIT\r\n")
            reader.readline()
            return reply

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            # Wait for the master without reaping it: while it is a zombie its pid still
            # names the process group, so the SIGKILL below cannot reach anyone else.
            deadline = time.monotonic() + self._stop_timeout
            while time.monotonic() < deadline and not _exited(proc.pid):
                time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired as exc:
            raise DovecotError(f"dovecot (pid {proc.pid}) did not exit") from exc
        # The children left are reaped by init, maybe seconds later (zombies are harmless);
        # wait, bounded, until none of them is still running.
        deadline = time.monotonic() + self._stop_timeout
        while live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _cleanup_workdir(self) -> None:
        if self._workdir is not None and not os.environ.get("POP3GW_KEEP_DOVECOT"):
            shutil.rmtree(self._workdir, ignore_errors=True)


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group `pgid` that are not zombies (Linux /proc)."""
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry.name))
    return members


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up before any fork: the child must not load libraries.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child before exec: ask for SIGTERM when the parent thread dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _exited(pid: int) -> bool:
    """True once our child `pid` has exited; leaves it unreaped."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == pid


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


#: the name in the self-signed certificate of ``Dovecot(certificate="self-signed")``
SELF_SIGNED_NAME = "mail.lab.example"


def _write_self_signed(tls_dir: Path) -> None:
    """A self-signed certificate as ``openssl req -x509 -subj /CN=mail.lab.example`` makes
    one (its own issuer, CA:TRUE, valid for a year), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SELF_SIGNED_NAME)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = tls_dir / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    (tls_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls_dir / "cert.pem").chmod(0o644)


def _greets(port: int, context: ssl.SSLContext | None) -> bool:
    """True when a POP3 greeting (``+OK``) arrives on `port`, over TLS when `context`."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as raw:
            if context is None:
                return raw.recv(512).startswith(b"+OK")
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                return tls.recv(512).startswith(b"+OK")
    except (OSError, ssl.SSLError):
        return False


def _check_passwd_field(what: str, value: str) -> None:
    if not value or value != value.strip() or any(ch in value for ch in ":\t\r\n\0"):
        raise ValueError(f"{what} {value!r} cannot be stored in a passwd-file")
