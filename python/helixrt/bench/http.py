"""Benchmarks of the HTTP pool against a shared aiohttp session, a session per request and
httpx, all fetching a small JSON document from an aiohttp server in another process, 32 requests
at a time; and the cost of `pool.session(host)` for a known host."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from helixrt.bench.runner import Context, Row, compare_time, gc_paused, missing_peer, peer_module

CONCURRENCY = 32

_SERVER = """
import sys
from aiohttp import web

async def ok(request):
    return web.json_response({"ok": True, "model": "small", "tokens": 42})

app = web.Application()
app.router.add_get("/ok", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"http://127.0.0.1:{port}/ok"
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("the benchmark HTTP server did not start")


async def _drive(fetch: Callable[[], Awaitable[Any]], requests: int) -> float:
    """Requests per second with CONCURRENCY requests in flight."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await fetch()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return requests / (time.perf_counter() - started)


async def _helixrt(url: str, requests: int) -> float:
    from helixrt.http import HTTPPool

    async with HTTPPool(limit_per_host=CONCURRENCY) as pool:
        await pool.get_json(url)  # connect outside the timing, as for the peers
        return await _drive(lambda: pool.get_json(url), requests)


async def _shared_session(url: str, requests: int) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit_per_host=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch() -> Any:
            async with session.get(url) as response:
                response.raise_for_status()
                return await response.json()

        await fetch()
        return await _drive(fetch, requests)


async def _session_per_request(url: str, requests: int) -> float:
    import aiohttp

    async def fetch() -> Any:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            response.raise_for_status()
            return await response.json()

    return await _drive(fetch, requests)


async def _httpx(url: str, requests: int) -> float:
    import httpx

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits) as client:

        async def fetch() -> Any:
            response = await client.get(url)
            response.raise_for_status()
            return response.json()

        await fetch()
        return await _drive(fetch, requests)


def _throughput_rows(ctx: Context) -> Iterator[Row]:
    # Client and server share the machine's cores: throughput swings by a third from run to
    # run, so the candidates alternate over several short runs and the best of each counts.
    requests = 500 if ctx.quick else 2000
    repeats = 2 if ctx.quick else 7
    server, url = _start_server()
    try:
        candidates: dict[str, Callable[[str, int], Coroutine[Any, Any, float]]] = {
            "helixrt": _helixrt,
            "shared": _shared_session,
            "per request": _session_per_request,
        }
        if peer_module("httpx") is not None:
            candidates["httpx"] = _httpx
        best = dict.fromkeys(candidates, 0.0)
        for _ in range(repeats):
            for name, run in candidates.items():
                with gc_paused():
                    best[name] = max(best[name], asyncio.run(run(url, requests)))
    finally:
        server.terminate()
        server.wait(10)
    label = f"GET JSON, {CONCURRENCY} concurrent, local server"
    yield Row(
        "http", label, "ops/s", best["helixrt"], "aiohttp shared session", best["shared"], "-", 0.95
    )
    yield Row(
        "http",
        label,
        "ops/s",
        best["helixrt"],
        "aiohttp session per request",
        best["per request"],
        "-",
        3.0,
    )
    yield Row(
        "http",
        label,
        "ops/s",
        best["helixrt"],
        "httpx.AsyncClient",
        best.get("httpx"),
        "-",
        None,
        "" if "httpx" in best else missing_peer("httpx", "httpx"),
    )


def _session_rows(ctx: Context) -> Iterator[Row]:
    from helixrt.http import HTTPPool

    async def measure() -> float:
        async with HTTPPool() as pool:
            session = pool.session
            host = "http://127.0.0.1:8080"
            session(host)
            calls = range(1000)

            def lookups() -> None:
                for _ in calls:
                    session(host)

            return compare_time(ctx, {"session": lookups}, ops=len(calls))["session"]

    ns = asyncio.run(measure())
    yield Row(
        "http",
        "pool.session(host), known host",
        "ns",
        ns,
        "",
        None,
        "~10 us pool get",
        None,
        "goal: under 1 us",
    )


def rows(ctx: Context) -> Iterator[Row]:
    if peer_module("aiohttp") is None:
        yield Row(
            "http",
            "GET JSON",
            "ops/s",
            None,
            "aiohttp",
            None,
            "-",
            None,
            missing_peer("aiohttp", "helixrt[http]"),
        )
        return
    yield from _throughput_rows(ctx)
    yield from _session_rows(ctx)
