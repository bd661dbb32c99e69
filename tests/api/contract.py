"""Every API response in the tests goes through :func:`checked`: its status is asserted and
its body validated against the OpenAPI contract."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aiohttp import ClientResponse

from gateway.contract import load_spec
from gateway.contract.validate import ResponseValidator


@cache
def validator() -> ResponseValidator:
    return ResponseValidator(load_spec())


async def checked(resp: ClientResponse, status: int) -> Any:
    """Assert the status, validate against the contract, return the decoded JSON body."""
    body = await resp.read()
    assert resp.status == status, (resp.status, body[:500])
    template = validator().match_path(resp.url.path, resp.method)
    assert template is not None, f"{resp.url.path} is not in the contract"
    validator().validate(
        resp.method,
        template,
        resp.status,
        resp.headers.get("Content-Type", ""),
        body,
        dict(resp.headers),
    )
    return json.loads(body) if body else None
