"""What the event tests share: settings with watched mailboxes, a gateway whose watcher the
test drives poll by poll, and Maildir changes."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway.config import Settings
from tests.support.api import settings_for
from tests.support.dovecot import DovecotUser, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def watched_settings(
    port: int,
    user: str,
    password: str,
    *,
    box: dict[str, Any] | None = None,
    mailbox_id: str = "box",
    webhooks: list[dict[str, Any]] | None = None,
    api_keys: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Settings:
    """settings_for(...) with mailbox 'box' watched (``box`` adds to its settings), named
    ``mailbox_id`` (a name of its own keeps a test's Redis keys apart); ``webhooks`` and
    further ``api_keys`` are added as given."""
    settings = settings_for(port, user=user, password=password, **extra)
    values = settings.model_dump()
    values["webhooks"] = webhooks or []
    values["api_keys"] += api_keys or []
    values["mailboxes"][0].update({"watch": True, "id": mailbox_id, **(box or {})})
    for mailbox in values["mailboxes"]:
        mailbox["password"] = password
    for key in values["api_keys"]:
        if not isinstance(key["sha256"], str):
            key["sha256"] = key["sha256"].get_secret_value()
        key["mailboxes"] = [mailbox_id if m == "box" else m for m in key["mailboxes"]]
    for name in ("redis_url", "cache_secret"):
        if values.get(name) is not None:
            values[name] = values[name].get_secret_value()
    return Settings.model_validate(values)


def message(subject: str, sender: str = "Ann <ann@example.com>") -> bytes:
    return (
        f"From: {sender}\r\nTo: box@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.com>\r\n\r\nbody of {subject}\r\n"
    ).encode()


def wipe(user: DovecotUser) -> None:
    """Remove every message of the Maildir (as another client's deletes would)."""
    for sub in ("cur", "new"):
        folder = user.maildir / sub
        shutil.rmtree(folder)
        folder.mkdir()


class PrivateRedis:
    """A redis-server of the test's own (append-only file in ``directory``), which the test
    may stop and start again: a Redis restart, its data kept."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
