"""The benchmark's ceiling: a bare aiohttp endpoint that reads the request body and answers a
pre-built JSON body, one per path, of the same size as the proxy's answer to that request, so
the ceiling and the proxy move the same bytes and differ only in the work the proxy does.

``python -m tools.ceiling_server PORT BODIES.json`` (BODIES maps a path to its answer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web


def create(bodies: dict[str, str]) -> web.Application:
    prepared = {path: body.encode() for path, body in bodies.items()}

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=prepared.get(request.path, b"{}"), content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    return app


if __name__ == "__main__":
    port, bodies_path = int(sys.argv[1]), Path(sys.argv[2])
    web.run_app(create(json.loads(bodies_path.read_text())), host="127.0.0.1", port=port,
                access_log=None, print=None)  # fmt: skip
