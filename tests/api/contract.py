"""Every API response in the tests goes through :func:`checked`: its status is asserted and
the whole response validated against the OpenAPI contract (see tests/support/contract.py)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aiohttp import ClientResponse

from gateway.contract import load_spec
from tests.support.contract import ResponseValidator


@cache
def validator() -> ResponseValidator:
    return ResponseValidator(load_spec())


async def checked(resp: ClientResponse, status: int) -> Any:
    """Assert the status, validate against the contract, return the decoded JSON body."""
    body = await resp.read()
    assert resp.status == status, (resp.status, body[:500])
    await validator().check(resp)
    return json.loads(body) if body else None
