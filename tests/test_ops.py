"""helixrt.ops and `helixrt serve`: every endpoint over a real loopback port, with a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from helixrt.errors import InvalidArgumentError
from helixrt.ops import is_loopback, make_app
from helixrt.runtime import Runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def runtime_with_redis(tmp_path: Path, redis_url: str) -> Runtime:
    config = tmp_path / "helixrt.toml"
    config.write_text("")
    env = {"HELIXRT_CACHE_L2_URL": redis_url, "HELIXRT_CACHE_L2_KEY_PREFIX": f"{tmp_path.name}:"}
    return Runtime.from_file(config, env=env)


@asynccontextmanager
async def served(rt: Runtime, **options: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The ops app of `rt` on a free loopback port, and a client session."""
    runner = web.AppRunner(make_app(rt, **options), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield f"http://127.0.0.1:{port}", session
    finally:
        await runner.cleanup()


def run_with(
    tmp_path: Path,
    redis_url: str,
    test: Callable[[Runtime, str, aiohttp.ClientSession], Awaitable[None]],
    **options: Any,
) -> None:
    async def main() -> None:
        async with (
            runtime_with_redis(tmp_path, redis_url) as rt,
            served(rt, **options) as (
                base,
                session,
            ),
        ):
            await asyncio.wait_for(test(rt, base, session), 20)

    asyncio.run(main())


class SSE:
    """Reads `event:` / `data:` records from an open Server-Sent Events response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def next_event(self) -> tuple[str, dict[str, Any]]:
        topic, data = None, None
        while True:
            line = (await asyncio.wait_for(self._response.content.readline(), 10)).decode()
            if line.startswith("event: "):
                topic = line[len("event: ") :].strip()
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
            elif line == "\n" and topic is not None and data is not None:
                return topic, data

    async def connected(self) -> None:
        assert await self._response.content.readline() == b": connected\n"


def test_read_endpoints(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        async with session.get(base + "/health") as r:
            assert r.status == 200
            health = await r.json()
            assert health["status"] in ("ok", "degraded")
            assert "components" in health

        async with session.get(base + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
        assert "helixrt_worker_pool_active_workers 0.0" in text
        assert "helixrt_mcp_active_connections 0.0" in text
        assert "# TYPE helixrt_mcp_connection_status gauge" in text
        assert not rt.created("worker_pool")  # a scrape creates nothing

        async with session.get(base + "/v1/metrics/performance") as r:
            assert r.status == 200
            performance = await r.json()
        assert {"worker_pool", "event_bus", "cache", "http_pool", "mcp"} <= set(performance)

        async with session.get(base + "/v1/mcp/status") as r:
            assert r.status == 200
            assert await r.json() == {"servers": {}, "total": 0, "connected": 0}
        assert not rt.created("mcp")

        async with session.get(base + "/") as r:
            assert r.status in (200, 404)

    run_with(tmp_path, redis_url, test)


def test_metrics_move_as_the_runtime_is_used(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        futures = [rt.worker_pool.submit(abs, -n) for n in range(7)]
        assert [f.result(timeout=10) for f in futures] == list(range(7))
        async with session.get(base + "/metrics") as r:
            text = await r.text()
        assert "helixrt_worker_pool_completed_tasks_total 7.0" in text

    run_with(tmp_path, redis_url, test)


def test_tag_invalidation_shows_on_the_event_stream(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        tag = f"x{uuid.uuid4().hex[:8]}"
        await rt.cache.set(f"{tag}:a", 1, tags=[tag])
        await rt.cache.set(f"{tag}:b", 2, tags=[tag])
        async with session.get(base + "/v1/events/stream", params={"pattern": "cache.>"}) as s:
            assert s.status == 200
            assert s.headers["Content-Type"] == "text/event-stream"
            stream = SSE(s)
            await stream.connected()
            async with session.delete(f"{base}/v1/cache/tag/{tag}") as r:
                assert r.status == 200
                assert await r.json() == {"tag": tag, "invalidated": 2}
            topic, data = await stream.next_event()
        assert topic == "cache.invalidated"
        assert data["topic"] == "cache.invalidated"
        assert data["payload"]["tag"] == tag
        assert await rt.cache.get(f"{tag}:a") is None

    run_with(tmp_path, redis_url, test)


def test_pattern_invalidation(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        prefix = f"p{uuid.uuid4().hex[:8]}"
        for key in ("user:1", "user:2", "user:10", "order:1"):
            await rt.cache.set(f"{prefix}:{key}", key)
        rt.cache.l1.delete(f"{prefix}:user:2")  # only in Redis now: found by SCAN
        async with session.get(base + "/v1/events/stream?pattern=cache.invalidated") as s:
            stream = SSE(s)
            await stream.connected()
            async with session.delete(
                base + "/v1/cache/invalidate", json={"pattern": f"{prefix}:user:?"}
            ) as r:
                assert r.status == 200
                assert await r.json() == {"pattern": f"{prefix}:user:?", "invalidated": 2}
            topic, event = await stream.next_event()
        # The cache announces the invalidation once, with the pattern and the count.
        assert topic == "cache.invalidated"
        assert event["payload"] == {"pattern": f"{prefix}:user:?", "count": 2}
        assert event["source"] == "tiered_cache"
        assert await rt.cache.get(f"{prefix}:user:1") is None
        assert await rt.cache.get(f"{prefix}:user:2") is None
        assert await rt.cache.get(f"{prefix}:user:10") == "user:10"
        assert await rt.cache.get(f"{prefix}:order:1") == "order:1"

    run_with(tmp_path, redis_url, test)


def test_bad_requests_get_json_errors(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        url = base + "/v1/cache/invalidate"
        cases: list[tuple[str, str, Any, int, str]] = [
            ("DELETE", url, b"{not json", 400, "must be JSON"),
            ("DELETE", url, json.dumps(["x"]).encode(), 400, 'JSON object with "pattern"'),
            ("DELETE", url, json.dumps({"pattern": ""}).encode(), 400, "non-empty string"),
            ("DELETE", url, json.dumps({"pattern": 3}).encode(), 400, "non-empty string"),
            ("DELETE", url, json.dumps({"pattern": "a", "b": 1}).encode(), 400, "unknown keys"),
            ("GET", base + "/nowhere", None, 404, "Not Found"),
            ("POST", base + "/health", None, 405, "Method Not Allowed"),
            ("GET", base + "/v1/events/stream?pattern=a..b", None, 400, "pattern"),
        ]
        for method, target, body, status, message in cases:
            async with session.request(method, target, data=body) as r:
                assert r.status == status, (method, target, body)
                assert r.content_type == "application/json"
                error = (await r.json())["error"]
                assert message in error, error
                assert "Traceback" not in error

    run_with(tmp_path, redis_url, test)


def test_the_token_guards_mutations(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        url = base + "/v1/cache/tag/t"
        async with session.delete(url) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in (await r.json())["error"]
        async with session.delete(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "the bearer token is not the ops token"
        async with session.delete(url, headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200
        async with session.get(base + "/health") as r:  # reads stay open on loopback
            assert r.status == 200

    run_with(tmp_path, redis_url, test, token="s3cret")


def test_a_public_app_needs_the_token_everywhere(tmp_path: Path, redis_url: str) -> None:
    async def test(rt: Runtime, base: str, session: aiohttp.ClientSession) -> None:
        for path in ("/health", "/metrics", "/v1/metrics/performance", "/v1/events/stream"):
            async with session.get(base + path) as r:
                assert r.status == 401, path
        auth = {"Authorization": "Bearer s3cret"}
        for path in ("/health", "/metrics", "/v1/mcp/status"):
            async with session.get(base + path, headers=auth) as r:
                assert r.status == 200, path

    run_with(tmp_path, redis_url, test, token="s3cret", public=True)
    with pytest.raises(InvalidArgumentError, match="needs a token"):
        make_app(Runtime(), public=True)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("")
    assert not is_loopback("192.168.1.2")
    assert not is_loopback("example.com")


# -- helixrt serve ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HELIXRT_OPS_TOKEN"}
    env.update(extra)
    return env


def test_serve_refuses_a_public_address_without_a_token() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "helixrt", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=serve_env(),
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to listen on '0.0.0.0' without a token" in done.stderr
    assert "--token" in done.stderr
    assert "HELIXRT_OPS_TOKEN" in done.stderr
    assert done.stdout == ""


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "helixrt.toml"
    config.write_text("")
    process = subprocess.Popen(
        [sys.executable, "-m", "helixrt", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=serve_env(HELIXRT_CACHE_L2_URL=redis_url, HELIXRT_OPS_TOKEN="tok"),
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("helixrt ops listening on http://127.0.0.1:"), line
        base = line.split()[-1]

        async def ask() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/health") as r:
                    assert r.status == 200
                    assert (await r.json())["status"] in ("ok", "degraded")
                async with session.delete(base + "/v1/cache/tag/t") as r:
                    assert r.status == 401  # the token came from HELIXRT_OPS_TOKEN
                headers = {"Authorization": "Bearer tok"}
                async with session.delete(base + "/v1/cache/tag/t", headers=headers) as r:
                    assert r.status == 200
                # An open event stream does not hold the shutdown up: the server hangs up.
                async with session.get(base + "/v1/events/stream") as stream:
                    assert await stream.content.readline() == b": connected\n"
                    process.send_signal(signal.SIGTERM)
                    with contextlib.suppress(aiohttp.ClientPayloadError):
                        await asyncio.wait_for(stream.content.read(), 10)

        asyncio.run(ask())
        _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # nothing of its process group is left
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
