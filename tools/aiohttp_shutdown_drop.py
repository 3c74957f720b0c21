"""Measure what aiohttp's own shutdown does to requests whose body is still arriving.

Starts a bare aiohttp app (the handler reads the body), sends N requests with all but the last
bytes of their bodies, runs ``AppRunner.cleanup()`` (what ``web.run_app`` does on SIGTERM),
sends the rest, and counts the requests that got a 200. xks-proxy's drain exists because this
number is not N. Run: ``.venv/bin/python tools/aiohttp_shutdown_drop.py``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

REQUESTS = 8
BODY = b"x" * 1000


async def handler(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def one(port: int, started: asyncio.Event, go: asyncio.Event) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    writer.write(head + BODY[:-10])
    await writer.drain()
    started.set()
    await go.wait()
    try:
        writer.write(BODY[-10:])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 15)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return status.startswith(b"HTTP/1.1 200")


async def main() -> None:
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    go = asyncio.Event()
    events = [asyncio.Event() for _ in range(REQUESTS)]
    clients = [asyncio.create_task(one(port, e, go)) for e in events]
    for event in events:
        await event.wait()
    await asyncio.sleep(0.2)
    cleanup = asyncio.create_task(runner.cleanup())
    await asyncio.sleep(0.5)
    go.set()
    results = await asyncio.gather(*clients)
    await cleanup
    print(f"aiohttp AppRunner.cleanup(): {sum(results)} of {REQUESTS} in-flight requests completed")


if __name__ == "__main__":
    asyncio.run(main())
