"""Typed keys for what the app factory puts on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from .accounts import Directory
from .metrics import Metrics
from .service import MailboxService

SERVICE: web.AppKey[MailboxService] = web.AppKey("service", MailboxService)
DIRECTORY: web.AppKey[Directory] = web.AppKey("directory", Directory)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
