"""The mailbox resource: its stats (STAT, CAPA) and the account check."""

from __future__ import annotations

from aiohttp import web

from ..keys import SERVICE
from . import serializers
from .common import account_of, flag, json_response


async def mailbox_stats(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "read")
    stats = await request.app[SERVICE].stats(account, fresh=flag(request, "fresh"))
    return json_response(serializers.stats(account.mailbox_id, stats))


async def check_mailbox(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "read")
    return json_response(serializers.check_result(await request.app[SERVICE].check(account)))
