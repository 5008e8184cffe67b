"""A real aiohttp server with fault endpoints, run in a subprocess by tests/test_http.py.

`python tests/http_server.py PORT` serves on 127.0.0.1:PORT until terminated. Every request is
counted by its path (`GET /count/{path}` gives the count of `/{path}`, not counting itself), and
the server tracks the requests in flight and the connections open at once, now and at most
(`GET /concurrency`), and the distinct client ports seen (`POST /concurrency/reset` zeroes the
maxima and the ports).

Endpoints (a trailing `/{key}` keeps one test's counts apart from another's):
- `/ok[/{key}]`: 200 JSON `{"ok": true, "method": ...}` (any method)
- `/status/{code}[/{key}]`: that status, with a JSON body
- `/flaky/{n}/{key}?retry_after=0`: 503 with `Retry-After` for the first n requests, then 200
- `/slow-headers[/{key}]?delay=1.0`: waits before sending the headers
- `/stream?chunks=10&interval=0.05`: a chunked body sent a chunk at a time
- `/reset/{key}?mode=headers|body`: closes the connection before the headers, or mid-body
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

counts: Counter[str] = Counter()
in_flight = 0
max_in_flight = 0
max_connections = 0
peers: set[tuple[str, int]] = set()
server: web.Server | None = None

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
    global in_flight, max_in_flight, max_connections
    if request.path.startswith(("/count/", "/concurrency")):
        return await handler(request)
    counts[request.path] += 1
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if peer is not None:
        peers.add((peer[0], peer[1]))
    in_flight += 1
    max_in_flight = max(max_in_flight, in_flight)
    if server is not None:
        max_connections = max(max_connections, len(server.connections))
    try:
        return await handler(request)
    finally:
        in_flight -= 1


async def ok(request: web.Request) -> web.StreamResponse:
    if request.can_read_body:
        await request.read()
    return web.json_response(
        {"ok": True, "method": request.method, "x_test": request.headers.get("X-Test")}
    )


async def status(request: web.Request) -> web.StreamResponse:
    code = int(request.match_info["code"])
    return web.json_response({"status": code}, status=code)


async def refused(request: web.Request) -> web.StreamResponse:
    """A 400 whose body is long: the reason first, then 64 KiB of detail."""
    return web.Response(status=400, text="model not found " + "x" * 65536)


async def flaky(request: web.Request) -> web.StreamResponse:
    if counts[request.path] <= int(request.match_info["n"]):
        retry_after = request.query.get("retry_after", "0")
        return web.json_response({"flaky": True}, status=503, headers={"Retry-After": retry_after})
    return web.json_response({"ok": True, "attempt": counts[request.path]})


async def slow_headers(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(float(request.query.get("delay", "1.0")))
    return web.json_response({"ok": True})


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "10"))
    interval = float(request.query.get("interval", "0.05"))
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(chunks):
        await response.write(f"chunk {i}\n".encode())
        await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def reset(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    assert transport is not None
    if request.query.get("mode", "headers") == "headers":
        transport.close()
        await asyncio.sleep(0.05)
        return web.Response()  # never sent
    response = web.StreamResponse(headers={"Content-Length": "100000"})
    await response.prepare(request)
    await response.write(b"x" * 1000)
    await asyncio.sleep(0.05)
    transport.close()
    await asyncio.sleep(0.05)
    return response


async def count(request: web.Request) -> web.StreamResponse:
    return web.json_response({"count": counts["/" + request.match_info["path"]]})


async def concurrency(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {
            "max_in_flight": max_in_flight,
            "max_connections": max_connections,
            "peers": len(peers),
            "in_flight": in_flight,
            "connections": len(server.connections) if server is not None else 0,
        }
    )


async def concurrency_reset(request: web.Request) -> web.StreamResponse:
    global max_in_flight, max_connections
    max_in_flight = 0
    max_connections = 0
    peers.clear()
    return web.json_response({"reset": True})


def app() -> web.Application:
    application = web.Application(middlewares=[track])
    application.router.add_route("*", "/ok", ok)
    application.router.add_route("*", "/ok/{key}", ok)
    application.router.add_route("*", "/status/{code:\\d+}", status)
    application.router.add_route("*", "/status/{code:\\d+}/{key}", status)
    application.router.add_route("*", "/flaky/{n:\\d+}/{key}", flaky)
    application.router.add_route("*", "/refused", refused)
    application.router.add_get("/slow-headers", slow_headers)
    application.router.add_get("/slow-headers/{key}", slow_headers)
    application.router.add_get("/stream", stream)
    application.router.add_route("*", "/reset/{key}", reset)
    application.router.add_get("/count/{path:.*}", count)
    application.router.add_get("/concurrency", concurrency)
    application.router.add_post("/concurrency/reset", concurrency_reset)
    return application


async def main(port: int) -> None:
    global server
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    server = runner.server
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    import signal

    loop = asyncio.new_event_loop()
    task = loop.create_task(main(int(sys.argv[1])))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
