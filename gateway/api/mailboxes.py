"""The mailbox resource: its stats (STAT, CAPA) and the account check."""

from __future__ import annotations

from aiohttp import web

from ..keys import SERVICE
from . import serializers
from .common import account_of, flag, json_response
from .errors import BASIC_CHALLENGE, Problem


async def mailbox_stats(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "read")
    stats = await request.app[SERVICE].stats(account, fresh=flag(request, "fresh"))
    return json_response(serializers.stats(account.mailbox_id, stats))


async def check_mailbox(request: web.Request) -> web.StreamResponse:
    """The report of every step, failed ones included, answered 200; except when the
    server rejects the request's own credentials (passthrough): then the 401 every
    operation answers, with the same report in the problem's ``check`` member."""
    account = account_of(request, "read")
    result = await request.app[SERVICE].check(account)
    report = serializers.check_result(result)
    if result.credentials_rejected and account.passthrough:
        raise Problem(
            "unauthorized",
            "the mail server rejected the user name or password",
            BASIC_CHALLENGE,
            extra=(("check", report),),
        )
    return json_response(report)
