"""What the event tests share: settings with watched mailboxes, a gateway whose watcher the
test drives poll by poll, and Maildir changes."""

from __future__ import annotations

import shutil
from typing import Any

from gateway.config import Settings
from tests.support.api import settings_for
from tests.support.dovecot import DovecotUser


def watched_settings(
    port: int, user: str, password: str, *, box: dict[str, Any] | None = None, **extra: Any
) -> Settings:
    """settings_for(...) with mailbox 'box' watched (``box`` adds to its settings)."""
    settings = settings_for(port, user=user, password=password, **extra)
    values = settings.model_dump()
    values["mailboxes"][0].update({"watch": True, **(box or {})})
    for mailbox in values["mailboxes"]:
        mailbox["password"] = password
    for key in values["api_keys"]:
        key["sha256"] = key["sha256"].get_secret_value()
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
