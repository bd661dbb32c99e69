"""Throwaway GNU Mailutils, Courier and Cyrus POP3 servers on 127.0.0.1, from Debian's packages.

Why the packages are unpacked rather than installed: on Debian bookworm ``courier-pop`` and
``cyrus-pop3d`` conflict with ``pop3-server``, which ``dovecot-pop3d`` provides (the test
suite needs Dovecot), and ``courier-base`` and ``cyrus-common`` pull in an MTA. So
:func:`prepare` fetches each server's packages with ``apt-get download`` into a cache
directory (``$POP3GW_COMPAT_ROOT``, default ``/var/cache/pop3gw-compat``) and unpacks them
with ``dpkg-deb -x``: no maintainer script runs, nothing is installed, no service is
enabled. Packages already installed on the machine are not fetched; a server that is
installed as a whole is used as it is.

Each server runs as root in a mount namespace of its own (``unshare --mount``), where
overlays put the unpacked files over ``/usr`` and ``/etc`` and give it a private ``/run``.
The server's configuration and accounts (``/etc/passwd`` lines for ``compat``, ``courier``,
``cyrus``) are written to the overlays' upper directories inside the run's temporary
directory; nothing changes outside the namespace. The network is shared: the servers listen
on 127.0.0.1 and the client connects from outside. Stopping a server kills its process
group and then every process left in its namespace.

Mail is stored as each server expects it: Maildir files with LF line endings, as Maildir
deliverers write them (Mailutils, Courier; owned by the system user ``mail``), or LMTP
delivery (Cyrus, with line endings made CRLF first, as an MTA does). What each server does
with CRLF Maildir files is probed separately by the run. Every message gets a first header
``X-Compat-Seq: N`` so that what a server returns can be matched with what was delivered,
whatever the server's numbering.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(os.environ.get("POP3GW_COMPAT_ROOT", "/var/cache/pop3gw-compat"))
HOST = "127.0.0.1"
USER = "compat"
PASSWORD = "compat-Pass-" + secrets.token_hex(4)
SEQ_HEADER = b"X-Compat-Seq"
_SEQ = re.compile(rb"^X-Compat-Seq: (\d+)\r*$", re.M)
_BARE_LF = re.compile(rb"(?<!\r)\n")
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ServerError(RuntimeError):
    """A server could not be prepared, started or stopped."""


@dataclass(frozen=True)
class Spec:
    """One server: its Debian packages and a file that shows it is there."""

    name: str
    title: str
    packages: tuple[str, ...]  # the first is the one whose version is shown
    probe: str  # absolute path of a file the server needs


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "mailutils",
            "GNU Mailutils pop3d",
            (
                "mailutils-pop3d",
                "mailutils-common",
                "libmailutils9",
                "libmu-dbm9",
                "libgc1",
                "guile-3.0-libs",
                "libgssglue1",
                "libidn12",
                "libntlm0",
                "libgsasl18",
                "liblzo2-2",
                "libkyotocabinet16v5",
                "libltdl7",
            ),
            "/usr/sbin/pop3d",
        ),
        Spec(
            "courier",
            "Courier pop3d",
            (
                "courier-pop",
                "courier-base",
                "courier-authlib",
                "courier-authdaemon",
                "courier-authlib-userdb",
                "libcourier-unicode4",
                "libgamin0",
                "libidn12",
                "libpcre3",
                "libltdl7",
            ),
            "/usr/lib/courier/courier/courierpop3login",
        ),
        Spec(
            "cyrus",
            "Cyrus pop3d",
            (
                "cyrus-pop3d",
                "cyrus-common",
                "sasl2-bin",
                "libclamav12",
                "libmspack0",
                "libical3",
                "libxapian30",
                "libzephyr4",
                "libpcre3",
                "libidn12",
            ),
            "/usr/lib/cyrus/bin/pop3d",
        ),
    )
}


# -- packages ----------------------------------------------------------------------------


def _dpkg_version(package: str) -> str | None:
    """The installed version of `package`, or None."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = result.stdout.partition("\t")
    return version if result.returncode == 0 and status.endswith(" installed") else None


def tree_of(spec: Spec) -> Path:
    return ROOT / spec.name


def locate(spec: Spec) -> tuple[bool, Path | None]:
    """(available, unpacked tree): the tree is None when the server is installed."""
    if Path(spec.probe).exists() and _dpkg_version(spec.packages[0]) is not None:
        return True, None
    tree = tree_of(spec)
    if (tree / ".complete").exists() and (tree / spec.probe.lstrip("/")).exists():
        return True, tree
    return False, None


def version(spec: Spec) -> str:
    available, tree = locate(spec)
    if not available:
        return "-"
    if tree is None:
        return _dpkg_version(spec.packages[0]) or "?"
    info = json.loads((tree / ".complete").read_text())
    return str(info.get(spec.packages[0], "installed: " + str(_dpkg_version(spec.packages[0]))))


def prepare(spec: Spec, log: Path | None = None) -> None:
    """Fetch and unpack the server's packages (those not installed) into its tree."""
    available, _ = locate(spec)
    if available:
        return
    debs = ROOT / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in spec.packages if _dpkg_version(p) is None]
    with (log or Path(os.devnull)).open("ab") as out:
        result = subprocess.run(
            ["apt-get", "download", *wanted],
            cwd=debs,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise ServerError(
            f"apt-get download {' '.join(wanted)} failed (run 'apt-get update' first?)"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=ROOT))
    versions: dict[str, str] = {}
    try:
        for package in wanted:
            candidates = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise ServerError(f"apt-get download left no {package}_*.deb in {debs}")
            deb = candidates[-1]
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
            versions[package] = subprocess.run(
                ["dpkg-deb", "-f", str(deb), "Version"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        # Debian merged /lib, /bin and /sbin into /usr; only /usr is overlaid.
        for top in ("lib", "lib64", "bin", "sbin"):
            src = staging / top
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, staging / "usr" / top, symlinks=True, dirs_exist_ok=True)
                shutil.rmtree(src)
        (staging / ".complete").write_text(json.dumps(versions, indent=1) + "\n")
        tree = tree_of(spec)
        if tree.exists():
            shutil.rmtree(tree)
        staging.rename(tree)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- the sandbox ---------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _own_mount_ns() -> str:
    return os.readlink("/proc/self/ns/mnt")


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _processes_in_ns(ns: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _mount_ns(int(entry.name)) == ns:
            pids.append(int(entry.name))
    return pids


def _free_id(start: int = 60100) -> int:
    """A uid that no account on the machine uses (and a gid of the same number)."""
    n = start
    while True:
        try:
            pwd.getpwuid(n)
        except KeyError:
            try:
                grp.getgrgid(n)
            except KeyError:
                return n
        n += 1


def sha512_crypt(password: str) -> str:
    salt = secrets.token_hex(8)
    return subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


class Sandbox:
    """A private mount namespace with /etc, /usr and /run overlaid."""

    def __init__(self, workdir: Path, tree: Path | None) -> None:
        self.workdir = workdir
        self.tree = tree
        self._overlay = workdir / "overlay"
        for top in ("etc", "usr", "run"):
            (self._overlay / "upper" / top).mkdir(parents=True)
            (self._overlay / "work" / top).mkdir(parents=True)
        for name in ("passwd", "group"):
            shutil.copy2(f"/etc/{name}", self.etc / name)
        self.ns: str | None = None

    @property
    def etc(self) -> Path:
        return self._overlay / "upper" / "etc"

    def add_account(self, name: str, uid: int, gid: int, home: str, crypted: str = "x") -> None:
        """A /etc/passwd line; `crypted` is the password field (a crypt hash, or "x")."""
        with (self.etc / "passwd").open("a") as f:
            f.write(f"{name}:{crypted}:{uid}:{gid}:{name}:{home}:/usr/sbin/nologin\n")

    def add_group(self, name: str, gid: int) -> None:
        with (self.etc / "group").open("a") as f:
            f.write(f"{name}:x:{gid}:\n")

    def write_etc(self, rel: str, data: str, mode: int = 0o644) -> Path:
        path = self.etc / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data)
        path.chmod(mode)
        return path

    def _mounts(self) -> list[str]:
        lines = ["set -e"]
        for top in ("etc", "usr", "run"):
            lowers = []
            if self.tree is not None and (self.tree / top).is_dir():
                lowers.append(str(self.tree / top))
            if top == "usr" and not lowers:
                continue
            lowers.append(f"/{top}")
            options = (
                f"lowerdir={':'.join(lowers)},"
                f"upperdir={self._overlay / 'upper' / top},"
                f"workdir={self._overlay / 'work' / top}"
            )
            lines.append(f"mount -t overlay compat-{top} -o {shlex.quote(options)} /{top}")
        return lines

    def start(
        self, argv: Sequence[str], setup: Sequence[str], env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """Run `setup` (shell lines) and then exec `argv`, in a new mount namespace."""
        script = "\n".join([*self._mounts(), *setup, 'exec "$@"'])
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "compat-sandbox",
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": _PATH, **env},
                start_new_session=True,
            )
        own = _own_mount_ns()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ns = _mount_ns(proc.pid)
            if ns is not None and ns != own:
                self.ns = ns
                break
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL to the group, then to anything left in the namespace."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Every process the server started is in its namespace (none is outside it).
            left = _processes_in_ns(self.ns) if self.ns else []
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        raise ServerError(f"processes of the {self.workdir} sandbox did not exit")


# -- servers -------------------------------------------------------------------------------


def seq_of(message: bytes) -> int | None:
    """The X-Compat-Seq number of a stored or retrieved message."""
    match = _SEQ.search(message)
    return int(match.group(1)) if match else None


def with_seq(seq: int, raw: bytes) -> bytes:
    """`raw` with the X-Compat-Seq header first, in the message's own line ending."""
    first = raw.find(b"\n")
    eol = b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n"
    if first < 0:
        eol = b"\r\n"
    return SEQ_HEADER + b": " + str(seq).encode() + eol + raw


def _greets(port: int) -> bytes | None:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.settimeout(5)
            line = sock.makefile("rb").readline()
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
            return line if line.startswith(b"+OK") else None
    except OSError:
        return None


class CompatServer:
    """One server in its sandbox; subclasses configure, start and deliver."""

    spec: Spec
    maildir: Path  # the user's Maildir (Maildir servers only)

    def __init__(self, workdir: Path) -> None:
        available, tree = locate(self.spec)
        if not available:
            raise ServerError(f"{self.spec.title} is neither installed nor unpacked")
        self.workdir = workdir
        self.workdir.chmod(0o711)
        self.tree = tree
        self.sandbox = Sandbox(workdir, tree)
        self.log = workdir / "server.log"
        self.port = free_port(HOST)
        mail = pwd.getpwnam("mail")
        self.mail_uid, self.mail_gid = mail.pw_uid, mail.pw_gid
        self._proc: subprocess.Popen[bytes] | None = None
        self.greeting = ""

    # subclasses
    def _launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        """Store the messages in order; per message None, or why the server refused it."""
        raise NotImplementedError

    def stored(self) -> dict[int, bytes]:
        """What the server holds now: X-Compat-Seq number -> stored bytes."""
        raise NotImplementedError

    def stored_form(self, raw: bytes) -> bytes:
        """What delivering `raw` stores (before the server's own changes): for Maildir
        servers the message with LF line endings (a bare CR stays)."""
        return raw.replace(b"\r\n", b"\n")

    # common
    def start(self, timeout: float = 20.0) -> None:
        self._proc = self._launch()
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerError(f"{self.spec.title} exited with {code}\n{self.log_tail()}")
            line = _greets(self.port)
            if line is not None:
                self.greeting = line.decode("latin-1").rstrip()
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{self.spec.title} did not greet\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self.sandbox.kill(proc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _write_maildir(self, maildir: Path, messages: Sequence[bytes]) -> list[str | None]:
        base = int(time.time()) - len(messages) - 10
        for i, raw in enumerate(messages, 1):
            tmp = maildir / "tmp" / f"{base + i}.M{i}P{os.getpid()}.compat"
            tmp.write_bytes(raw)
            os.chown(tmp, self.mail_uid, self.mail_gid)
            tmp.chmod(0o600)
            tmp.rename(maildir / "new" / tmp.name)
        return [None] * len(messages)

    def _read_maildir(self, maildir: Path) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for sub in ("new", "cur"):
            for path in (maildir / sub).iterdir():
                data = path.read_bytes()
                seq = seq_of(data)
                if seq is not None:
                    found[seq] = data
        return found

    def _make_maildir(self, maildir: Path) -> None:
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        top = maildir
        while top != self.workdir:
            os.chown(top, self.mail_uid, self.mail_gid)
            top = top.parent
        for sub in ("cur", "new", "tmp"):
            os.chown(maildir / sub, self.mail_uid, self.mail_gid)


class Mailutils(CompatServer):
    """GNU Mailutils pop3d in daemon mode with a config file of its own; Maildir mail; the
    user is a system account (``/etc/passwd`` line with a SHA-512 crypt hash).

    Mailutils 3.15 misreads a Maildir file with CRLF line endings as an empty message (see
    the CRLF Maildir probe of the run): messages are stored with LF line endings.
    """

    spec = SPECS["mailutils"]

    def _launch(self) -> subprocess.Popen[bytes]:
        home = self.workdir / "mail" / USER
        self.maildir = home
        self._make_maildir(home)
        locks = self.workdir / "locks"
        locks.mkdir()
        locks.chmod(0o1777)
        self.sandbox.add_account(
            USER, self.mail_uid, self.mail_gid, str(home), sha512_crypt(PASSWORD)
        )
        conf = self.workdir / "pop3d.conf"
        conf.write_text(
            "mode daemon;\n"
            "foreground yes;\n"
            "max-children 20;\n"
            f"server {HOST}:{self.port} {{ }};\n"
            f'mailbox {{ mailbox-pattern "maildir://{self.workdir}/mail/${{user}}"; }};\n'
            "auth { authentication generic:system; authorization system; };\n"
            "logging { syslog no; };\n"
            "tcp-wrappers { enable no; };\n"
            f'mandatory-locking {{ enable yes; lock-directory "{locks}"; }};\n'
        )
        return self.sandbox.start(["/usr/sbin/pop3d", f"--config-file={conf}"], [], {}, self.log)

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        return self._write_maildir(self.maildir, [self.stored_form(m) for m in messages])

    def stored(self) -> dict[int, bytes]:
        return self._read_maildir(self.maildir)


class Courier(CompatServer):
    """Courier's couriertcpd + courierpop3login + courierpop3d with settings from the
    environment (as ``/etc/courier/pop3d`` would give), authdaemond with ``authuserdb`` only,
    Maildir mail owned by ``mail``; AUTH PLAIN/LOGIN enabled (``POP3AUTH``), no TLS."""

    spec = SPECS["courier"]

    def _launch(self) -> subprocess.Popen[bytes]:
        home = self.workdir / "mail" / USER
        self.maildir = home / "Maildir"
        self._make_maildir(self.maildir)
        courier_id = _free_id()
        self.sandbox.add_account("courier", courier_id, courier_id, "/nonexistent")
        self.sandbox.add_group("courier", courier_id)
        self.sandbox.write_etc(
            "courier/authdaemonrc",
            'authmodulelist="authuserdb"\ndaemons=3\nauthdaemonvar=/run/courier/authdaemon\n'
            'DEBUG_LOGIN=0\nDEFAULTOPTIONS=""\nLOGGEROPTS=""\n',
        )
        self.sandbox.write_etc(
            "courier/userdb",
            f"{USER}\tuid={self.mail_uid}|gid={self.mail_gid}|home={home}|mail={self.maildir}"
            f"|systempw={sha512_crypt(PASSWORD)}\n",
            0o600,
        )
        setup = [
            "makeuserdb",
            "mkdir -p /run/courier/authdaemon",
            "chown courier:courier /run/courier /run/courier/authdaemon",
            "chmod 750 /run/courier/authdaemon",
            "/usr/lib/courier/courier-authlib/authdaemond &",
            "i=0; while [ ! -S /run/courier/authdaemon/socket ] && [ $i -lt 200 ]; do "
            "sleep 0.05; i=$((i+1)); done",
        ]
        argv = [
            "/usr/sbin/couriertcpd",
            f"-address={HOST}",
            "-maxprocs=40",
            "-maxperip=4",
            "-nodnslookup",
            "-noidentlookup",
            str(self.port),
            "/usr/lib/courier/courier/courierpop3login",
            "/usr/lib/courier/courier/courierpop3d",
            "Maildir",
        ]
        env = {
            "POP3AUTH": "PLAIN LOGIN",
            "POP3AUTH_TLS": "",
            "POP3_STARTTLS": "NO",
            "POP3_PROXY": "0",
            "MAILDIRPATH": "Maildir",
        }
        return self.sandbox.start(argv, setup, env, self.log)

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        return self._write_maildir(self.maildir, [self.stored_form(m) for m in messages])

    def stored(self) -> dict[int, bytes]:
        return self._read_maildir(self.maildir)


class Cyrus(CompatServer):
    """Cyrus master with only the pop3 and lmtpunix services, its own imapd.conf and
    cyrus.conf (in the overlaid /etc: services read the default path), SASL passwords in a
    private sasldb, the INBOX created by the first LMTP delivery (``autocreate_post``)."""

    spec = SPECS["cyrus"]

    def _launch(self) -> subprocess.Popen[bytes]:
        uid = _free_id()
        self.sandbox.add_account("cyrus", uid, self.mail_gid, "/nonexistent")
        w = self.workdir
        self.spool = w / "spool"
        self.lmtp = w / "run" / "socket" / "lmtp"
        dirs = [
            w / "lib" / d
            for d in ("db", "proc", "socket", "log", "msg", "user", "quota", "sieve", "ptclient")
        ]
        dirs += [self.spool, w / "run" / "proc", w / "run" / "lock", w / "run" / "socket"]
        for d in dirs:
            d.mkdir(parents=True)
        for d in (w / "lib", w / "run", *dirs):
            os.chown(d, uid, self.mail_gid)
        sasldb = w / "sasldb2"
        self.sandbox.write_etc(
            "imapd.conf",
            f"configdirectory: {w / 'lib'}\n"
            f"proc_path: {w / 'run' / 'proc'}\n"
            f"mboxname_lockpath: {w / 'run' / 'lock'}\n"
            "defaultpartition: default\n"
            f"partition-default: {self.spool}\n"
            "altnamespace: no\n"
            "unixhierarchysep: no\n"
            "lmtp_downcase_rcpt: yes\n"
            "allowanonymouslogin: no\n"
            # Debian's default is 1 (one POP3 login a minute); the check logs in often.
            "popminpoll: 0\n"
            "autocreate_quota: 0\n"
            "autocreate_post: yes\n"
            "umask: 077\n"
            "hashimapspool: true\n"
            "allowplaintext: yes\n"
            "sasl_pwcheck_method: auxprop\n"
            "sasl_auxprop_plugin: sasldb\n"
            f"sasl_sasldb_path: {sasldb}\n"
            "sasl_mech_list: PLAIN LOGIN\n"
            f"lmtpsocket: {self.lmtp}\n"
            f"idlesocket: {w / 'run' / 'socket' / 'idle'}\n"
            f"notifysocket: {w / 'run' / 'socket' / 'notify'}\n"
            "syslog_prefix: cyrus-compat\n",
        )
        self.sandbox.write_etc(
            "cyrus.conf",
            'START {\n  recover cmd="ctl_cyrusdb -r"\n}\n'
            "SERVICES {\n"
            f'  pop3 cmd="pop3d" listen="{HOST}:{self.port}" prefork=0 maxchild=50\n'
            f'  lmtpunix cmd="lmtpd" listen="{self.lmtp}" prefork=0 maxchild=5\n'
            "}\nEVENTS {\n}\n",
        )
        setup = [
            f"printf '%s' {shlex.quote(PASSWORD)} | saslpasswd2 -p -c -f {sasldb} {USER}",
            f"chown cyrus:mail {sasldb}",
            f"chmod 640 {sasldb}",
        ]
        argv = ["/usr/lib/cyrus/bin/master", "-D", "-p", str(w / "run" / "master.pid")]
        return self.sandbox.start(argv, setup, {}, self.log)

    def stored_form(self, raw: bytes) -> bytes:
        out = _BARE_LF.sub(b"\r\n", raw)
        return out if out.endswith(b"\n") else out + b"\r\n"

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        deadline = time.monotonic() + 10
        while not self.lmtp.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        results: list[str | None] = []
        with smtplib.LMTP(str(self.lmtp)) as lmtp:
            for raw in messages:
                try:
                    refused = lmtp.sendmail("sender@example.com", [USER], self.stored_form(raw))
                except smtplib.SMTPException as exc:
                    results.append(f"{type(exc).__name__}: {exc}")
                else:
                    results.append(str(refused) if refused else None)
        return results

    def _mailbox_dir(self) -> Path | None:
        for index in self.spool.rglob("cyrus.index"):
            return index.parent
        return None

    def stored(self) -> dict[int, bytes]:
        box = self._mailbox_dir()
        found: dict[int, bytes] = {}
        if box is None:
            return found
        for path in box.iterdir():
            if re.fullmatch(r"\d+\.", path.name):
                data = path.read_bytes()
                seq = seq_of(data)
                if seq is not None:
                    found[seq] = data
        return found

    def stored_uid(self) -> dict[int, int]:
        """X-Compat-Seq number -> Cyrus message UID (the number in the spool file name)."""
        box = self._mailbox_dir()
        found: dict[int, int] = {}
        if box is None:
            return found
        for path in box.iterdir():
            if re.fullmatch(r"\d+\.", path.name):
                seq = seq_of(path.read_bytes())
                if seq is not None:
                    found[seq] = int(path.name[:-1])
        return found


SERVERS: dict[str, type[CompatServer]] = {
    "mailutils": Mailutils,
    "courier": Courier,
    "cyrus": Cyrus,
}
