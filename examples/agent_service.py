"""A small agent back end on one helixrt Runtime: chat through a lazy provider with a cache, MCP
tools through the connection pool, background work on the worker pool, and the ops endpoints.

- `POST /chat` `{"messages": [...]}` (or `{"prompt": "..."}`, plus `temperature`, `max_tokens`,
  ...): a chat completion from an OpenAI-compatible API (`OPENAI_BASE_URL`, `OPENAI_API_KEY`,
  `OPENAI_MODEL`), through the provider "chat" of `rt.providers`, created on first use on the
  runtime's HTTP pool (`rt.http`: pooled sessions, retries, the host's breaker). Deterministic
  requests (temperature 0, the default here) are kept in `rt.cache`, tagged with the provider.
- `POST /tools/{server}/{tool}` with the tool's arguments (a JSON object): the tool's result,
  through `rt.mcp` (the server is started on first use, from the package the Preinstaller
  installed). `GET /tools/{server}` lists a server's tools.
- `GET /stats`: what the background bookkeeping counted. Each request hands a record to
  `rt.worker_pool`, which counts it and appends it to the audit log (`--audit-log`, JSON
  lines) off the event loop; each one is also published on `rt.bus` as `request.completed`.
- `/ops/...`: `helixrt.ops.make_app(rt)` mounted: `/ops/health`, `/ops/metrics`,
  `/ops/v1/metrics/performance`, `/ops/v1/events/stream`, ...

`python examples/agent_service.py --config examples/agent_service.toml --port 8080` serves until
SIGINT or SIGTERM, then closes the runtime (MCP servers included). Needs `helixrt[ops,mcp,redis]`.
It does no streaming, no auth of its own (the ops endpoints take `HELIXRT_OPS_TOKEN`) and no
function calling.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import ClientError, web

from helixrt import CircuitOpenError, Runtime, topics
from helixrt.config import ConfigError
from helixrt.errors import InvalidArgumentError
from helixrt.http import HTTPPool
from helixrt.mcp.pool import MCPCallError, MCPServerError, ToolTimeoutError, UnknownServerError
from helixrt.ops import TOKEN_ENV, is_loopback, make_app

PROVIDER = "chat"
SOURCE = "agent_service"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChatAPIError(Exception):
    """The API answered with an error status (after the HTTP pool's retries)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"chat completion failed with HTTP {status}: {message}")
        self.status = status


class ChatClient:
    """An OpenAI-compatible chat-completion client on a shared HTTPPool (which owns the
    connections: this client has nothing to close)."""

    def __init__(self, http: HTTPPool, base_url: str, api_key: str, model: str) -> None:
        self.model = model
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def __repr__(self) -> str:  # never the key
        return f"ChatClient({self._url!r}, model={self.model!r})"

    async def complete(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Any:
        body = {"model": self.model, "messages": [dict(m) for m in messages], **params}
        # A completion has no side effects: retrying a POST the server refused is safe.
        request = self._http.request(
            "POST", self._url, json=body, headers=self._headers, idempotent=True
        )
        async with request as response:
            if response.status >= 400:
                text = await response.text()
                try:
                    message = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = text[:200]
                raise ChatAPIError(response.status, message)
            return await response.json()


class Activity:
    """The background bookkeeping: counts per kind of request, and an optional audit log.
    `record` runs on the runtime's worker threads (file I/O stays off the event loop)."""

    def __init__(self, audit_log: str | None) -> None:
        self._audit_log = audit_log
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def record(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            for key in ("kind", "outcome"):
                name = f"{entry[key]}" if key == "kind" else f"{entry['kind']}_{entry[key]}"
                self._counts[name] = self._counts.get(name, 0) + 1
            if self._audit_log is not None:
                with open(self._audit_log, "a", encoding="utf-8") as log:
                    log.write(line + "\n")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class AgentService:
    """The service's routes over a Runtime (which the caller owns: see `make_service_app`)."""

    def __init__(
        self,
        rt: Runtime,
        *,
        base_url: str,
        api_key: str,
        model: str,
        cache_ttl: float = 3600.0,
        audit_log: str | None = None,
    ) -> None:
        self.rt = rt
        self.activity = Activity(audit_log)
        self._chat_settings = (base_url, api_key, model)
        self._cache_ttl = cache_ttl

    def register_providers(self) -> None:
        """The chat provider: registered now, created on the first chat (a Lazy)."""
        base_url, api_key, model = self._chat_settings
        self.rt.providers.register(
            PROVIDER, lambda: ChatClient(self.rt.http, base_url, api_key, model)
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/chat", self.chat),
            web.get("/tools/{server}", self.list_tools),
            web.post("/tools/{server}/{tool}", self.call_tool),
            web.get("/stats", self.stats),
        ]

    async def chat(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        messages = _messages(body)
        params = {k: v for k, v in body.items() if k not in ("messages", "prompt")}
        params.setdefault("temperature", 0)
        client: ChatClient = await self.rt.providers.get(PROVIDER)
        sent = False

        async def ask() -> Any:
            nonlocal sent
            sent = True
            return await client.complete(messages, **params)

        started = time.perf_counter()
        try:
            if params["temperature"] == 0:
                key = _cache_key({"model": client.model, "messages": messages, **params})
                tags = [Runtime.provider_tag(PROVIDER)]
                answer = await self.rt.cache.get_or_set(key, ask, ttl=self._cache_ttl, tags=tags)
            else:
                answer = await ask()
        except ChatAPIError as exc:
            self._record("chat", "failed", started, error=str(exc))
            raise _error(web.HTTPBadGateway, str(exc)) from None
        except CircuitOpenError as exc:
            self._record("chat", "failed", started, error=str(exc))
            retry_after = {"Retry-After": f"{max(1, round(exc.retry_after))}"}
            raise _error(web.HTTPServiceUnavailable, str(exc), retry_after) from None
        except ClientError as exc:
            self._record("chat", "failed", started, error=repr(exc))
            raise _error(web.HTTPBadGateway, f"the chat API is unreachable: {exc}") from None
        self._record("chat", "sent" if sent else "cached", started)
        return web.json_response(
            {
                "answer": answer["choices"][0]["message"]["content"],
                "cached": not sent,
                "model": answer.get("model"),
                "usage": answer.get("usage"),
            }
        )

    async def list_tools(self, request: web.Request) -> web.Response:
        server = request.match_info["server"]
        try:
            tools = await self.rt.mcp.list_tools(server)
        except MCP_ERRORS as exc:
            raise _mcp_error(exc) from None
        listed = [{"name": tool.name, "description": tool.description} for tool in tools]
        return web.json_response({"server": server, "tools": listed})

    async def call_tool(self, request: web.Request) -> web.Response:
        server, tool = request.match_info["server"], request.match_info["tool"]
        arguments = await _json_object(request) if request.can_read_body else {}
        started = time.perf_counter()
        try:
            result = await self.rt.mcp.call_tool(server, tool, arguments)
        except MCP_ERRORS as exc:
            self._record("tool", "failed", started, server=server, tool=tool, error=str(exc))
            raise _mcp_error(exc) from None
        # A tool that ran and failed is an answer, not an HTTP error: is_error says so.
        is_error = bool(getattr(result, "isError", getattr(result, "is_error", False)))
        text = "\n".join(
            getattr(item, "text", "") for item in result.content if item.type == "text"
        )
        self._record("tool", "error" if is_error else "ok", started, server=server, tool=tool)
        return web.json_response(
            {"server": server, "tool": tool, "is_error": is_error, "text": text}
        )

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.activity.counts())

    def _record(self, kind: str, outcome: str, started: float, **extra: Any) -> None:
        entry = {
            "time": time.time(),
            "kind": kind,
            "outcome": outcome,
            "seconds": round(time.perf_counter() - started, 6),
            **extra,
        }
        self.rt.worker_pool.submit_nowait(self.activity.record, entry)
        self.rt.bus.publish(topics.REQUEST_COMPLETED, entry, source=SOURCE)


MCP_ERRORS = (UnknownServerError, ToolTimeoutError, MCPCallError, MCPServerError)


def _mcp_error(exc: Exception) -> web.HTTPException:
    if isinstance(exc, UnknownServerError):
        return _error(web.HTTPNotFound, str(exc))
    if isinstance(exc, ToolTimeoutError):
        return _error(web.HTTPGatewayTimeout, str(exc))
    if isinstance(exc, MCPCallError):  # the server refused the request
        return _error(web.HTTPBadRequest, str(exc))
    return _error(web.HTTPBadGateway, str(exc))  # could not start, crashed, out of restarts


def _error(
    kind: type[web.HTTPException], message: str, headers: Mapping[str, str] | None = None
) -> web.HTTPException:
    return kind(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _error(web.HTTPBadRequest, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _error(web.HTTPBadRequest, "the body must be a JSON object")
    return body


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    if isinstance(body.get("prompt"), str) and "messages" not in body:
        return [{"role": "user", "content": body["prompt"]}]
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    ):
        raise _error(
            web.HTTPBadRequest,
            'give "prompt" (a string) or "messages" (a list of {"role", "content"} objects)',
        )
    return messages


def _cache_key(request: Mapping[str, Any]) -> str:
    """The same request gives the same key, in any process (sorted keys, then SHA-256)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"chat:{hashlib.sha256(canonical.encode()).hexdigest()}"


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, ...) as JSON too, as the service's are."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        raise _error(type(exc), exc.reason) from None


def make_service_app(service: AgentService, *, token: str | None, public: bool) -> web.Application:
    """The service's app: its routes, the ops app under /ops, and the runtime's lifetime
    (started with the app, closed with it: MCP servers, pools, Redis connections)."""
    rt = service.rt

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        async with rt:
            service.register_providers()
            yield

    app = web.Application(middlewares=[_json_errors])
    app.add_routes(service.routes())
    app.add_subapp("/ops", make_app(rt, token=token, public=public))
    app.cleanup_ctx.append(lifetime)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serves `app` until SIGINT or SIGTERM, then shuts it down (closing the runtime)."""
    runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"agent service on http://{host}:{port} (ops: /ops/health)", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", metavar="FILE", help="a helixrt.toml (or YAML) file")
    parser.add_argument("--profile", help="a config profile: dev, prod, high-throughput")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--audit-log", metavar="FILE", help="append a JSON line per request")
    args = parser.parse_args(argv)
    try:
        rt = (
            Runtime.from_file(args.config, profile=args.profile)
            if args.config
            else Runtime({"profile": args.profile} if args.profile else None)
        )
    except (OSError, ConfigError) as exc:
        print(f"agent_service: {exc}", file=sys.stderr)
        return 2
    service = AgentService(
        rt,
        base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
        api_key=os.environ.get("OPENAI_API_KEY", "sk-test"),
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        audit_log=args.audit_log,
    )
    token = os.environ.get(TOKEN_ENV) or rt.config.ops.token
    try:
        app = make_service_app(service, token=token, public=not is_loopback(args.host))
    except InvalidArgumentError as exc:  # beyond loopback without a token
        print(f"agent_service: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(app, args.host, args.port))
    except OSError as exc:
        print(f"agent_service: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
