"""What the event tests share: settings with watched mailboxes (and webhooks), a gateway whose
watcher and deliverer the test drives step by step, and mailbox changes."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from gateway.config import Settings
from gateway.events import Deliverer, Watcher
from tests.support.api import Client, settings_for, sha
from tests.support.dovecot import DovecotUser, free_port
from tests.support.fakepop3 import FakePOP3Server

#: an API key with the admin scope on every mailbox (the webhook admin API)
ADMIN_KEY = "admin-key-0123456789abcdef"
ADMIN = {"name": "admin", "sha256": sha(ADMIN_KEY), "mailboxes": ["*"], "scopes": ["admin"]}

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


def hook(
    url: str, *secrets: str, name: str = "crm", mailboxes: list[str] | None = None, **more: Any
) -> dict[str, Any]:
    """A webhook's settings: ``name`` to ``url``, signed with ``secrets``, for the events of
    ``mailboxes`` (``box``)."""
    return {
        "name": name,
        "url": url,
        "secrets": list(secrets),
        "mailboxes": mailboxes or ["box"],
        **more,
    }


def webhook_settings(
    port: int,
    user: str,
    password: str,
    webhooks: list[dict[str, Any]],
    *,
    delivery: dict[str, Any] | None = None,
    api_keys: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Settings:
    """watched_settings(...) with ``webhooks``, the :data:`ADMIN` key (and ``api_keys``), and
    deliveries allowed to loopback, where the test receivers listen, with 2 s attempts
    (``delivery`` adds to or replaces these webhook_delivery settings)."""
    return watched_settings(
        port,
        user,
        password,
        webhooks=webhooks,
        api_keys=[ADMIN, *(api_keys or [])],
        webhook_delivery={"allow_networks": ["127.0.0.0/8"], "timeout": 2, **(delivery or {})},
        **extra,
    )


class Hooked(NamedTuple):
    """A gateway with webhooks (its watcher and deliverer not running: the test steps
    them)."""

    client: Client
    watcher: Watcher
    deliverer: Deliverer


#: starts a gateway of the given settings (the ``start`` fixture)
Start = Callable[[Settings], Awaitable[Hooked]]


def add(server: FakePOP3Server, uid: str) -> None:
    """A new message ``uid`` (its subject too) on the fake server."""
    server.mailbox.add(uid, f"Subject: {uid}\r\n\r\nbody\r\n".encode())


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
