"""The baseline of ``http_warm``: a bare aiohttp app that answers with one pre-built body.

    python -m tests.bench.bare_app --port 8081 --body page.json

At start it reads the JSON file, re-encodes it once with orjson, and then answers every
``GET /v1/mailboxes/{mailbox}/messages`` with those bytes (``application/json``): no
middleware, no authentication, no work per request. ``GET /healthz`` answers 200 once it
serves. It needs orjson (``pip install orjson``; only this benchmark uses it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
from aiohttp import web


def make_app(body: bytes) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/mailboxes/{mailbox}/messages", page)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="a JSON file")
    args = parser.parse_args()
    body = orjson.dumps(orjson.loads(args.body.read_bytes()))
    web.run_app(make_app(body), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
