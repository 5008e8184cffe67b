"""The ops HTTP surface of a Runtime: the endpoints the original system documented and never
built, as an aiohttp application (`make_app`) and the `helixrt serve` command (`serve`).

- `GET /metrics`: Prometheus text from a `helixrt.metrics.RuntimeCollector`;
- `GET /health`: `runtime.health()` (200, or 503 when "down");
- `GET /v1/metrics/performance`: `runtime.performance()` as JSON;
- `GET /v1/mcp/status`: each MCP server's state, health, latency and restarts;
- `GET /v1/events/stream`: the runtime's bus as Server-Sent Events (`?pattern=`, default all);
- `DELETE /v1/cache/tag/{tag}`: drops the entries set with `tag`;
- `DELETE /v1/cache/invalidate` with `{"pattern": "user:*"}`: drops the keys matching a Redis
  glob pattern, from L1 and from Redis (SCAN in the cache's namespace).
Both DELETEs publish `cache.invalidated` on the runtime's bus, so the SSE stream shows them.

Security: the app listens on loopback unless told otherwise. With a bearer token, mutating
requests (DELETE) always need `Authorization: Bearer <token>`; an app reachable beyond loopback
(`public=True`, which `serve` sets for any other host) needs it on every request and refuses
to be made without one. Errors are JSON (`{"error": "..."}`), never a traceback.

`GET /` is the dashboard (helixrt/ops_dashboard.html): a static page, sent with a strict
Content-Security-Policy, that polls the JSON endpoint and reads the event stream with the token
given as `/#token=...`. Being static, it is the one page a public app serves without the token.

The app does not start or close the runtime: `serve` does, and an application mounting the app
owns its runtime.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import hmac
import importlib.resources
import ipaddress
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from helixrt.codec import MissingDependencyError

try:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import CollectorRegistry
except ImportError as _exc:
    raise MissingDependencyError(
        f"helixrt.ops needs the {_exc.name} package: pip install helixrt[ops]"
    ) from _exc

from helixrt.metrics import RuntimeCollector

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "is_loopback",
    "make_app",
    "mcp_status",
    "run_serve",
    "serve",
]

log = logging.getLogger("helixrt.ops")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7061
TOKEN_ENV = "HELIXRT_OPS_TOKEN"

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The cache's own keys under its namespace (see helixrt.tiered's key layout): never user keys.
# Keys deleted concurrently by a pattern invalidation.
_DELETE_BATCH = 100
# Seconds `serve` lets open requests (SSE streams) finish before cancelling them.
_SHUTDOWN_GRACE = 2.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Unauthorized(web.HTTPUnauthorized):
    def __init__(self, reason: str) -> None:
        super().__init__(text=reason, headers={"WWW-Authenticate": 'Bearer realm="helixrt"'})


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like names, or a host name: treated as public


# -- middlewares ----------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every error as `{"error": ...}` JSON; an unexpected exception is logged, not shown."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        default = f"{exc.status}: {exc.reason}"
        message = exc.text if exc.text and exc.text != default else exc.reason
        kept = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in ("content-type", "content-length")
        }
        return _error(exc.status, message, kept)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (logged by the server)")


def _auth(token: str | None, *, public: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = None if token is None else f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # The dashboard page holds no data (it asks the other endpoints, with the token): a
        # browser, which cannot send a header with a page load, must get it to send the token.
        page = request.match_info.route.name == _DASHBOARD
        needed = (public and not page) or request.method not in _SAFE_METHODS
        # A request no route takes gets its 404 or 405 whatever its token.
        routed = request.match_info.http_exception is None
        if expected is not None and needed and routed:
            given = request.headers.get("Authorization")
            if given is None:
                raise _Unauthorized("this endpoint needs Authorization: Bearer <token>")
            if not hmac.compare_digest(given.encode(), expected):
                raise _Unauthorized("the bearer token is not the ops token")
        return await handler(request)

    return middleware


# -- the app --------------------------------------------------------------------------------------


def make_app(runtime: Any, *, token: str | None = None, public: bool = False) -> web.Application:
    """The ops endpoints over `runtime` (a `helixrt.Runtime`), as an aiohttp Application.

    - `token`: the bearer token; when set, DELETE requests need it (401 otherwise).
    - `public`: the app is reachable beyond loopback, so every request needs the token, and
      a token is required (`InvalidArgumentError` without one).
    """
    if token is not None and (not isinstance(token, str) or not token):
        from helixrt.errors import InvalidArgumentError

        raise InvalidArgumentError("token must be a non-empty str or None")
    if public and token is None:
        from helixrt.errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"an ops app reachable beyond loopback needs a token (--token or {TOKEN_ENV})"
        )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RuntimeCollector(runtime))
    app = web.Application(middlewares=[_json_errors, _auth(token, public=public)])
    endpoints = _Endpoints(runtime, registry)
    app.router.add_get("/", endpoints.index, name=_DASHBOARD)
    app.router.add_get("/metrics", endpoints.metrics)
    app.router.add_get("/health", endpoints.health)
    app.router.add_get("/v1/metrics/performance", endpoints.performance)
    app.router.add_get("/v1/mcp/status", endpoints.mcp_status)
    app.router.add_get("/v1/events/stream", endpoints.events)
    app.router.add_delete("/v1/cache/tag/{tag}", endpoints.invalidate_tag)
    app.router.add_delete("/v1/cache/invalidate", endpoints.invalidate)
    app.on_shutdown.append(endpoints.shutdown)
    return app


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=_jsonable))


class _Endpoints:
    def __init__(self, runtime: Any, registry: CollectorRegistry) -> None:
        self._runtime = runtime
        self._registry = registry
        self._streams: dict[int, web.Request] = {}  # by id: a Request is not hashable

    async def shutdown(self, _app: web.Application) -> None:
        # Event streams never end on their own: hang up on them, so that a server shutdown
        # does not wait out its grace period for them.
        for request in list(self._streams.values()):
            if request.transport is not None:
                request.transport.close()

    async def index(self, _request: web.Request) -> web.Response:
        page, policy = _dashboard()
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": policy,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def health(self, _request: web.Request) -> web.Response:
        report = self._runtime.health()
        return _json(report, status=503 if report.get("status") == "down" else 200)

    async def performance(self, _request: web.Request) -> web.Response:
        return _json(self._runtime.performance())

    async def mcp_status(self, _request: web.Request) -> web.Response:
        return _json(mcp_status(self._runtime))

    async def events(self, request: web.Request) -> web.StreamResponse:
        from helixrt.events.sse import sse_handler

        self._streams[id(request)] = request
        try:
            return await sse_handler(self._runtime.bus)(request)
        finally:
            self._streams.pop(id(request), None)

    async def invalidate_tag(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        try:
            count = await self._runtime.cache.invalidate_tag(tag)
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return _json({"tag": tag, "invalidated": count})

    async def invalidate(self, request: web.Request) -> web.Response:
        pattern = await _pattern_of(request)
        # The cache announces it on the runtime's bus (cache.invalidated), as for a tag.
        count = await self._runtime.cache.invalidate_pattern(pattern)
        return _json({"pattern": pattern, "invalidated": count})


_DASHBOARD = "dashboard"


@functools.cache
def _dashboard() -> tuple[bytes, str]:
    """The dashboard page, read once, and its Content-Security-Policy: the page's own inline
    script and style (by hash) and requests to this origin, nothing else."""
    page = importlib.resources.files("helixrt").joinpath("ops_dashboard.html").read_text("utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    )
    return page.encode(), policy


async def _pattern_of(request: web.Request) -> str:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text='the body must be JSON: {"pattern": "..."}') from None
    if not isinstance(body, dict) or "pattern" not in body:
        raise web.HTTPBadRequest(text='the body must be a JSON object with "pattern"')
    pattern = body["pattern"]
    if not isinstance(pattern, str) or not pattern:
        raise web.HTTPBadRequest(text='"pattern" must be a non-empty string (a glob: user:*)')
    if extra := sorted(set(body) - {"pattern"}):
        raise web.HTTPBadRequest(text=f"unknown keys {extra}; accepted: pattern")
    return pattern


def mcp_status(runtime: Any) -> dict[str, Any]:
    """Each MCP server's state, health, latency and restarts, and totals (no servers before
    the runtime's MCP pool is first used). Health comes from the runtime's health monitor:
    `healthy` (None before any check or event), `last_health_check` (the runtime's last
    `check_health()`, Unix time) and `last_event` (the server's last `mcp.server.*` event)."""
    servers: dict[str, Any] = {}
    if runtime.created("mcp"):
        report = runtime.health()
        monitored = report["components"].get("mcp", {}).get("servers", {})
        for name, stats in sorted(runtime.component("mcp").stats().items()):
            health = monitored.get(name, {})
            servers[name] = {
                "state": str(stats.state),
                "healthy": health.get("healthy"),
                "error": health.get("error"),
                "last_health_check": report.get("last_check"),
                "last_event": health.get("last_event"),
                "latency_ms": round(stats.latency_mean * 1000, 3),
                "latency_p99_ms": round(stats.latency_p99 * 1000, 3),
                "restarts": stats.restarts,
                "calls": stats.calls,
                "failures": stats.failures,
                "tool_errors": stats.tool_errors,
                "inflight": stats.inflight,
                "pid": stats.pid,
            }
    return {
        "servers": servers,
        "total": len(servers),
        "connected": sum(s["state"] == "connected" for s in servers.values()),
    }


# -- helixrt serve --------------------------------------------------------------------------------


async def serve(
    runtime: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Starts `runtime`, serves its ops app on `host:port` until SIGINT or SIGTERM, then stops
    the server and closes the runtime. Beyond loopback a token is required (ValueError)."""
    app = make_app(runtime, token=token, public=not is_loopback(host))
    runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_GRACE, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with runtime:
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port)
                await site.start()
                bound = _bound_port(runner, port)
                if out is not None:
                    print(f"helixrt ops listening on http://{host}:{bound}", file=out, flush=True)
                await stop.wait()
            finally:
                await runner.cleanup()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


def run_serve(
    *,
    config: str | None,
    profile: str | None,
    host: str | None,
    port: int | None,
    token: str | None,
) -> int:
    """`helixrt serve`: the command's body; returns the exit status."""
    from helixrt.config import load_config
    from helixrt.runtime import Runtime

    try:
        runtime = Runtime(load_config(config, profile=profile))
    except (OSError, ValueError) as exc:
        print(f"helixrt serve: {exc}", file=sys.stderr)
        return 2
    ops = runtime.config.ops
    host = ops.host if host is None else host
    port = ops.port if port is None else port
    # HELIXRT_OPS_TOKEN reaches ops.token through the config's environment overrides too.
    token = token or os.environ.get(TOKEN_ENV) or ops.token or None
    if not is_loopback(host) and token is None:
        print(
            f"helixrt serve: refusing to listen on {host!r} without a token: the ops endpoints "
            f"would be open to the network. Pass --token or set {TOKEN_ENV}, "
            f"or listen on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(runtime, host=host, port=port, token=token, out=sys.stdout))
    except OSError as exc:
        print(f"helixrt serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
