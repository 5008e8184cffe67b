"""The MCP connection pool: tool servers started on first use, kept up, restarted if they crash.

`MCPConnectionPool` holds one connection per configured server, on the official `mcp` SDK
(stdio and streamable HTTP). A server is pending until something uses it; concurrent first
callers share one start (one process). Each connection lives in one owner task, which enters
the SDK's transport and session and leaves them in the same task (the SDK's anyio contexts
require it). The pool puts its own timeout on every call (the SDK has none), checks health on
an interval, closes idle servers, keeps at most `max_connections` alive, restarts crashed ones
within a budget, and kills each server's process group on close so that no child survives.

It does not install packages (that is `helixrt.mcp.Preinstaller`, which it calls when given
one) and does not retry a tool call: a call in flight when its server died fails at once, and
the caller decides whether the tool is safe to call again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.metadata
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

import anyio
import mcp.client.stdio as _sdk_stdio
import mcp.types as mcp_types
from mcp import ClientSession, StdioServerParameters

from helixrt import topics
from helixrt.errors import HelixError, InvalidArgumentError, PoolClosedError

try:
    from mcp import MCPError
except ImportError:  # mcp 1.x
    from mcp.shared.exceptions import McpError as MCPError  # type: ignore[attr-defined, no-redef]

if TYPE_CHECKING:
    from helixrt.mcp.config import ServerConfig
    from helixrt.mcp.preinstall import Preinstaller

__all__ = [
    "MCPCallError",
    "MCPConnectionPool",
    "MCPServerError",
    "MCPServerStats",
    "ServerDisconnectedError",
    "ServerStartError",
    "ServerState",
    "ServerUnavailableError",
    "ToolTimeoutError",
    "UnknownServerError",
]

logger = logging.getLogger("helixrt.mcp")

_SDK_V1 = importlib.metadata.version("mcp").startswith("1.")
_TIMEOUT_CODES = frozenset({-32001, 408})  # REQUEST_TIMEOUT in mcp 2.x, 1.x
_IS_ERROR = "isError" if _SDK_V1 else "is_error"  # CallToolResult's field
_HEALTH_TIMEOUT = 5.0
_SHUTDOWN_TIMEOUT = 10.0  # the SDK's own stdio shutdown is bounded at about 6.5 s
_LATENCY_SAMPLES = 1024
_CRASHES = ("exited", "health")  # why a run ended, when it counts as a crash
_STDERR_TAIL = 2048

# Passed to every stdio server, if set here, on top of its configured `env`: enough for a
# program to run and find its temp dir and locale, nothing that carries a secret. (The SDK adds
# its own allow-list: HOME, LOGNAME, PATH, SHELL, TERM, USER.)
_SAFE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
    "SYSTEMDRIVE",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "APPDATA",
    "LOCALAPPDATA",
    "PROGRAMDATA",
    "USERPROFILE",
)


class ServerState(StrEnum):
    """Where a server is in its life. `pending`: not running (never used, idle-closed, or
    crashed and due for a restart); `failed`: its last start failed or its restart budget is
    spent, and it is not retried before its backoff has passed."""

    PENDING = "pending"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSING = "closing"
    CLOSED = "closed"


class MCPServerError(HelixError, ConnectionError):
    """Something went wrong with an MCP server (not with one tool call's arguments)."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(message)
        self.server = server


class ServerStartError(MCPServerError):
    """A server could not be started and initialised: its command is missing, it exited, it
    did not answer `initialize` within its connect timeout, or its package failed to install.
    The message ends with the last lines the server wrote to stderr, when there are any."""


class ServerUnavailableError(MCPServerError):
    """The server is failed and is not tried again yet: after a failed start, until its
    backoff has passed; after too many restarts, until its restart window frees a slot.
    `retry_after` is the number of seconds until the pool will try it again."""

    def __init__(self, server: str, message: str, retry_after: float) -> None:
        super().__init__(server, message)
        self.retry_after = retry_after


class ServerDisconnectedError(MCPServerError):
    """The server went away (it exited, was killed, or was closed) while the call was in
    flight. The call may or may not have taken effect; the server is restarted on next use."""


class ToolTimeoutError(HelixError, TimeoutError):
    """A tool call got no answer within its timeout (the pool told the server to cancel it)."""

    def __init__(self, server: str, tool: str, timeout: float) -> None:
        super().__init__(f"MCP tool {server}__{tool} got no answer within {timeout:g} s")
        self.server = server
        self.tool = tool
        self.timeout = timeout


class MCPCallError(HelixError, RuntimeError):
    """The server answered a request with a JSON-RPC error (`code`, the server's `message`).
    A tool that ran and failed is not this: its result comes back with `is_error` set."""

    def __init__(self, server: str, method: str, code: int, message: str) -> None:
        super().__init__(f"MCP server {server!r} refused {method}: {message} (code {code})")
        self.server = server
        self.code = code


class UnknownServerError(HelixError, KeyError):
    """No server of that name is configured in the pool."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class MCPServerStats:
    """A snapshot of one server. Counters (`calls`, `failures`, `tool_errors`, `restarts`,
    `stdout_garbage`) only grow; latencies are seconds over the last 1024 calls."""

    state: str
    calls: int
    failures: int
    tool_errors: int
    latency_mean: float
    latency_p99: float
    restarts: int
    pid: int | None
    inflight: int
    stdout_garbage: int
    log_path: str | None


# The pid of the process the SDK's stdio transport spawns is not exposed, and the pool needs it
# (stats, and the kill of the process group after close). The owner task puts a list in this
# variable before entering `stdio_client`; the wrapper below, around the SDK's spawn function,
# appends the new process's pid to it. With no list set it changes nothing.
_SPAWNED: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "helixrt.mcp.spawned", default=None
)


def _hook_spawn() -> None:
    original = getattr(_sdk_stdio, "_create_platform_compatible_process", None)
    if original is None or getattr(original, "_helixrt_hook", False):
        return  # another SDK version: pids are then unknown (None)

    async def spawn(*args: Any, **kwargs: Any) -> Any:
        process = await original(*args, **kwargs)
        sink = _SPAWNED.get()
        if sink is not None:
            sink.append(process.pid)
        return process

    spawn._helixrt_hook = True  # type: ignore[attr-defined]
    _sdk_stdio._create_platform_compatible_process = spawn


def _kill_group(pid: int | None) -> None:
    """SIGKILL what is left of a server's process group (the SDK stops the server itself, but
    leaves alive any children of a server that exited on its own)."""
    if pid is None or sys.platform == "win32":
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _tail(path: str | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _STDERR_TAIL))
            text = log.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text


def _unwrap(exc: BaseException) -> BaseException:
    """The one real error inside the exception groups anyio's task groups wrap it in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _Watched:
    """The transport's read stream, watched: it tells the connection when the stream ends
    (the server exited or the HTTP session ended) and counts lines that were not JSON-RPC.
    A thin proxy, not a relay task, so a call pays no extra hop."""

    __slots__ = ("_life", "_stream")

    def __init__(self, stream: Any, life: _Life) -> None:
        self._stream = stream
        self._life = life

    @property
    def last_context(self) -> Any:
        return getattr(self._stream, "last_context", None)

    async def receive(self) -> Any:
        try:
            item = await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._life.end("exited")
            raise
        if isinstance(item, Exception):
            self._life.garbage += 1
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Life:
    """One run of a server: from its start to its stop."""

    __slots__ = ("connected", "garbage", "pids", "reason", "scope", "session", "wake")

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.reason: str | None = None
        self.session: ClientSession | None = None
        self.pids: list[int] = []
        self.scope: anyio.CancelScope | None = None
        self.garbage = 0
        self.connected = False

    @property
    def pid(self) -> int | None:
        return self.pids[0] if self.pids else None

    def end(self, reason: str) -> None:
        """Ask the owner task to stop this run (the first reason given wins)."""
        if self.reason is None:
            self.reason = reason
        if self.connected:
            self.wake.set()
        elif self.scope is not None and reason != "exited":
            self.scope.cancel()


class _Call:
    """One tool call in flight, as the watchdog sees it."""

    __slots__ = ("cancels", "deadline", "expired", "task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.cancels = task.cancelling()
        self.expired = False
        self.deadline = 0.0

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def timed_out(self) -> bool:
        """Whether the CancelledError being handled is this call's timeout (and nothing else
        asked to cancel the task), as `asyncio.timeout` decides it."""
        return self.expired and self.task.uncancel() <= self.cancels


class _Watchdog:
    """The deadlines of the calls in flight, on one timer (set for the earliest).

    `asyncio.timeout` would do, but it costs a timer handle per call: more than the rest of
    the pool's work on a call. With one timeout per server, deadlines arrive in order, so the
    timer is rarely moved; when it fires, it cancels the overdue calls and moves on.
    """

    __slots__ = ("_at", "_calls", "_handle")

    def __init__(self) -> None:
        self._calls: dict[_Call, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(self, call: _Call, seconds: float) -> float:
        """Watch `call` for `seconds`; returns the loop time now."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        call.deadline = deadline = now + seconds
        self._calls[call] = None
        if deadline < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._at = deadline
            self._handle = loop.call_at(deadline, self._fire, loop)
        return now

    def discard(self, call: _Call) -> None:
        self._calls.pop(call, None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = math.inf

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        following = math.inf
        for call in list(self._calls):
            if call.deadline <= now:
                del self._calls[call]
                call.expire()
            elif call.deadline < following:
                following = call.deadline
        self._at = following
        self._handle = loop.call_at(following, self._fire, loop) if following < math.inf else None


class _Server:
    __slots__ = (
        "calls",
        "config",
        "consecutive_failures",
        "failures",
        "garbage",
        "healthy",
        "inflight",
        "last_error",
        "last_ok",
        "last_used",
        "latencies",
        "latency_total",
        "life",
        "log_path",
        "name",
        "owner",
        "restart_due",
        "restart_times",
        "restarts",
        "retry_at",
        "semaphore",
        "starting",
        "state",
        "tool_errors",
    )

    def __init__(self, config: ServerConfig) -> None:
        self.name = config.name
        self.config = config
        self.state = ServerState.PENDING
        self.life: _Life | None = None
        self.owner: asyncio.Task[None] | None = None
        self.starting: asyncio.Future[ClientSession] | None = None
        concurrency = config.max_concurrency
        self.semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        self.inflight = 0
        self.last_used = 0.0
        self.last_ok = 0.0
        self.calls = 0
        self.failures = 0
        self.tool_errors = 0
        self.garbage = 0
        self.latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self.latency_total = 0.0
        self.restarts = 0
        self.restart_times: deque[float] = deque()
        self.restart_due = False
        self.consecutive_failures = 0
        self.retry_at = 0.0
        self.last_error: BaseException | None = None
        self.healthy: bool | None = None
        self.log_path: str | None = None


class MCPConnectionPool:
    """`MCPConnectionPool(servers, *, preinstaller=None, max_connections=12, bus=None,
    health_interval=30.0, log_dir=None, backoff_base=0.5, backoff_max=30.0)`: connections to
    MCP servers, made on first use.

    - `servers`: a dict name -> `ServerConfig` (what `helixrt.mcp.load_config` returns), or an
      iterable of `ServerConfig`. Each server's `timeouts` (connect, call, idle),
      `max_concurrency` (calls in flight at once), `restart` (budget) and `eager` apply.
    - `await call_tool(server, tool, arguments=None, *, timeout=None)` starts the server if
      need be and returns the SDK's `CallToolResult` (a tool that failed has `is_error` set; it
      is not raised). `timeout` defaults to the server's call timeout.
    - `await list_tools()` lists every server's tools, named `server__tool`;
      `await list_tools(server)` one server's, with their own names.
    - `await get_session(server)`, `await warmup(names=None)` (default: the eager servers),
      `await health_check(server=None)`, `await restart(server)`, `await close(server)`
      (back to pending), `await aclose()`, `state(server)`, `stats()`.
    - Crashes: calls in flight fail at once with `ServerDisconnectedError`; the server is
      restarted on next use (or by the health check), after a backoff (none for the first
      restart in a window, then `backoff_base` doubling up to `backoff_max`), at most
      `restart.max_restarts` times per `restart.window_seconds`; then it is failed
      (`ServerUnavailableError`) until the window frees a slot. A failed start backs off the
      same way.
    - `health_interval`: seconds between pings of a connected server that had no successful
      call meanwhile (None or 0: no health checks); a failed ping restarts the server.
    - `max_connections`: servers running at once; starting one more first closes the least
      recently used idle one.
    - `log_dir`: where each server's stderr goes (`<name>.log`); by default a temp dir the
      pool removes on `aclose()`.
    - `preinstaller`: before each start, `await preinstaller.ensure(name)`, then launch what
      `preinstaller.launch(server)` says (the installed copy).
    - `bus`: events `mcp.server.connected`, `mcp.server.disconnected`,
      `mcp.server.health.changed`, `mcp.tool.executed`, `mcp.tool.failed`.

    Bound to the event loop of its first use. A stdio server runs with its configured `env`
    plus a minimal base (PATH, HOME, LANG, TMPDIR, ...), never the whole parent environment.
    Use it as `async with MCPConnectionPool(...) as pool:` (which also warms up the eager
    servers in the background), or call `aclose()`: it stops every server, concurrently, and
    kills each one's process group.
    """

    def __init__(
        self,
        servers: Mapping[str, ServerConfig] | Iterable[ServerConfig],
        *,
        preinstaller: Preinstaller | None = None,
        max_connections: int = 12,
        bus: Any = None,
        health_interval: float | None = 30.0,
        log_dir: str | os.PathLike[str] | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        configs = list(servers.values()) if isinstance(servers, Mapping) else list(servers)
        self._servers: dict[str, _Server] = {}
        for config in configs:
            if config.name in self._servers:
                raise InvalidArgumentError(f"MCP server {config.name!r} is configured twice")
            self._servers[config.name] = _Server(config)
        if max_connections < 1:
            raise InvalidArgumentError(f"max_connections must be at least 1, not {max_connections}")
        self._preinstaller = preinstaller
        self._max_connections = max_connections
        self._bus = bus
        self._health_interval = health_interval or 0.0
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._log_dir = os.fspath(log_dir) if log_dir is not None else None
        self._own_log_dir = log_dir is None
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._freed = asyncio.Event()
        self._watchdog = _Watchdog()
        _hook_spawn()

    # -- public API ---------------------------------------------------------------------------

    async def call_tool(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> mcp_types.CallToolResult:
        """Call `tool` on `server` (started first if need be) and return its result."""
        srv = self._server(server)
        limit = srv.config.timeouts.call if timeout is None else timeout
        semaphore = srv.semaphore
        if semaphore is not None:
            await semaphore.acquire()
        srv.inflight += 1
        try:
            life = srv.life
            if srv.state is ServerState.CONNECTED and life is not None and life.session:
                session = life.session
            else:
                session = await self._session(srv)
                life = srv.life
            # The pool's own deadline rather than the SDK's `read_timeout_seconds`: it also
            # covers a write that cannot go out, and the streamable-HTTP hang when a server
            # dies mid-call (python-sdk #1577); the SDK still sends the server a
            # `notifications/cancelled` for the abandoned request.
            call = _Call()
            started = self._watchdog.add(call, limit)
            try:
                result = await session.call_tool(
                    tool, arguments if arguments is None else dict(arguments)
                )
            except asyncio.CancelledError:
                if call.timed_out():
                    raise ToolTimeoutError(srv.name, tool, limit) from None
                raise
            except MCPError as exc:
                raise self._call_error(srv, life, tool, "tools/call", limit, exc) from exc
            finally:
                self._watchdog.discard(call)
        except BaseException as exc:
            srv.failures += 1
            if self._bus is not None:
                error = f"{type(exc).__name__}: {exc}"
                self._publish(
                    topics.MCP_TOOL_FAILED, {"server": srv.name, "tool": tool, "error": error}
                )
            raise
        finally:
            srv.inflight -= 1
            srv.last_used = now = time.monotonic()
            if semaphore is not None:
                semaphore.release()
            self._freed.set()
        elapsed = now - started
        srv.calls += 1
        srv.latencies.append(elapsed)
        srv.latency_total += elapsed
        srv.last_ok = now
        is_error = bool(getattr(result, _IS_ERROR, False))
        if is_error:
            srv.tool_errors += 1
        if self._bus is not None:
            payload = {"server": srv.name, "tool": tool, "seconds": elapsed, "is_error": is_error}
            self._publish(topics.MCP_TOOL_EXECUTED, payload)
        return result

    async def list_tools(self, server: str | None = None) -> list[mcp_types.Tool]:
        """The tools of `server` (its own names), or of every server, named `server__tool`
        (every server is started; the first failure is raised, after all have answered)."""
        if server is not None:
            return await self._tools(self._server(server))
        names = list(self._servers)
        answers = await asyncio.gather(
            *(self._tools(self._servers[name]) for name in names), return_exceptions=True
        )
        tools: list[mcp_types.Tool] = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                raise answer
            tools.extend(
                tool.model_copy(update={"name": f"{name}__{tool.name}"}) for tool in answer
            )
        return tools

    async def get_session(self, server: str) -> ClientSession:
        """The server's live SDK session (started if need be). Use it for what the pool does
        not wrap (resources, prompts); it is closed when the server is."""
        return await self._session(self._server(server))

    async def warmup(self, names: Iterable[str] | None = None) -> None:
        """Start the given servers (default: the eager ones) concurrently and wait until they
        are connected; the first failure is raised, after all have finished."""
        if names is None:
            chosen = [srv for srv in self._servers.values() if srv.config.eager]
        else:
            chosen = [self._server(name) for name in names]
        answers = await asyncio.gather(
            *(self._session(srv) for srv in chosen), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer

    async def health_check(self, server: str | None = None) -> dict[str, bool]:
        """Ping servers (a `tools/list` for one that does not know ping): the given one
        (started if need be), or every connected one. A server that fails is restarted."""
        if server is not None:
            srv = self._server(server)
            try:
                await self._session(srv)
            except MCPServerError:
                return {srv.name: False}
            return {srv.name: await self._probe(srv)}
        live = [s for s in self._servers.values() if s.state is ServerState.CONNECTED]
        results = await asyncio.gather(*(self._probe(s) for s in live))
        return {s.name: ok for s, ok in zip(live, results, strict=True)}

    async def restart(self, server: str) -> None:
        """Stop the server if it runs, forget its failures and restart budget, and start it."""
        srv = self._server(server)
        await self._stop(srv, "restart")
        srv.restart_due = False
        srv.restart_times.clear()
        srv.consecutive_failures = 0
        srv.retry_at = 0.0
        if srv.state is ServerState.FAILED:
            srv.state = ServerState.PENDING
        srv.restarts += 1
        await self._session(srv)

    async def close(self, server: str) -> None:
        """Stop the server; it goes back to pending (the next use starts it again)."""
        await self._stop(self._server(server), "close")

    async def aclose(self) -> None:
        """Stop every server (concurrently) and kill what is left of their process groups.
        Idempotent. Calls in flight fail with `ServerDisconnectedError`."""
        if self._closed:
            return
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.wait([self._maintenance])
        for srv in self._servers.values():
            if srv.life is not None and srv.owner is not None and not srv.owner.done():
                self._request_stop(srv, srv.life, srv.owner, "shutdown")
        owners = [srv.owner for srv in self._servers.values() if srv.owner is not None]
        if owners:
            _, late = await asyncio.wait(owners, timeout=_SHUTDOWN_TIMEOUT)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=_SHUTDOWN_TIMEOUT)
        for task in list(self._background):
            task.cancel()
        self._watchdog.close()
        for srv in self._servers.values():
            if srv.life is not None:
                for pid in srv.life.pids:
                    _kill_group(pid)
            srv.state = ServerState.CLOSED
        if self._own_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        if any(srv.config.eager for srv in self._servers.values()):
            self._spawn(self._warm_eager())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def state(self, server: str) -> ServerState:
        return self._server(server).state

    def stats(self) -> dict[str, MCPServerStats]:
        """A snapshot per server."""
        snapshot: dict[str, MCPServerStats] = {}
        for name, srv in self._servers.items():
            samples = sorted(srv.latencies)
            p99 = (
                samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)]
                if samples
                else 0.0
            )
            mean = srv.latency_total / srv.calls if srv.calls else 0.0
            life = srv.life
            running = life is not None and srv.state in (
                ServerState.CONNECTING,
                ServerState.CONNECTED,
            )
            snapshot[name] = MCPServerStats(
                state=srv.state.value,
                calls=srv.calls,
                failures=srv.failures,
                tool_errors=srv.tool_errors,
                latency_mean=mean,
                latency_p99=p99,
                restarts=srv.restarts,
                pid=life.pid if running and life is not None else None,
                inflight=srv.inflight,
                stdout_garbage=srv.garbage + (life.garbage if life is not None else 0),
                log_path=srv.log_path,
            )
        return snapshot

    @property
    def servers(self) -> list[str]:
        """The configured server names."""
        return list(self._servers)

    # -- starting -----------------------------------------------------------------------------

    def _server(self, name: str) -> _Server:
        try:
            return self._servers[name]
        except KeyError:
            known = ", ".join(map(repr, self._servers)) or "none"
            raise UnknownServerError(
                f"no MCP server named {name!r} (configured: {known})"
            ) from None

    async def _session(self, srv: _Server) -> ClientSession:
        while True:
            life = srv.life
            if srv.state is ServerState.CONNECTED and life is not None and life.session is not None:
                return life.session
            if self._closed:
                raise PoolClosedError(f"the MCP pool is closed (server {srv.name!r})")
            starting = srv.starting
            if starting is None:
                starting = self._begin_start(srv)
            await asyncio.shield(starting)

    def _begin_start(self, srv: _Server) -> asyncio.Future[ClientSession]:
        """Start the server's owner task; synchronous, so concurrent callers see one start."""
        now = time.monotonic()
        if srv.state is ServerState.FAILED and now < srv.retry_at:
            raise ServerUnavailableError(
                srv.name,
                f"MCP server {srv.name!r} is failed ({srv.last_error}); "
                f"it is tried again in {srv.retry_at - now:.1f} s",
                srv.retry_at - now,
            ) from srv.last_error
        delay = 0.0
        previous_life = srv.life
        crashed = srv.restart_due or (
            previous_life is not None
            and previous_life.connected
            and previous_life.reason in _CRASHES
        )
        if crashed:
            policy = srv.config.restart
            while srv.restart_times and srv.restart_times[0] <= now - policy.window_seconds:
                srv.restart_times.popleft()
            recent = len(srv.restart_times)
            if recent >= policy.max_restarts:
                retry_after = srv.restart_times[0] + policy.window_seconds - now
                srv.state = ServerState.FAILED
                srv.retry_at = now + retry_after
                srv.last_error = ServerUnavailableError(
                    srv.name,
                    f"MCP server {srv.name!r} crashed and was restarted {recent} times in "
                    f"{policy.window_seconds:g} s (its restart budget); "
                    f"it is tried again in {retry_after:.1f} s",
                    retry_after,
                )
                raise srv.last_error
            delay = self._backoff(recent) if recent else 0.0
            srv.restart_due = False
            srv.restart_times.append(now)
            srv.restarts += 1
        self._ensure_maintenance()
        loop = asyncio.get_running_loop()
        srv.starting = starting = loop.create_future()
        starting.add_done_callback(_retrieve)
        srv.state = ServerState.CONNECTING
        life = _Life()
        previous, srv.life = srv.owner, life
        srv.owner = self._spawn(self._own(srv, life, previous, delay))
        return starting

    async def _own(
        self, srv: _Server, life: _Life, previous: asyncio.Task[None] | None, delay: float
    ) -> None:
        """The owner task of one run of a server: start, serve until told to stop, stop."""
        if previous is not None:
            await asyncio.wait([previous])
        try:
            if delay:
                await asyncio.sleep(delay)
            await self._make_room(srv)
            config = srv.config
            if self._preinstaller is not None:
                await self._preinstaller.ensure(srv.name)
                config = self._preinstaller.launch(config)
            if life.reason is not None:
                raise _Stopped
        except BaseException as exc:
            self._start_failed(srv, life, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        started = time.perf_counter()
        scope = life.scope = anyio.CancelScope(
            deadline=anyio.current_time() + config.timeouts.connect
        )
        try:
            with scope:
                async with contextlib.AsyncExitStack() as stack:
                    if config.transport == "stdio":
                        errlog = stack.enter_context(self._open_log(srv))
                        token = _SPAWNED.set(life.pids)
                        try:
                            streams = await stack.enter_async_context(
                                _sdk_stdio.stdio_client(_stdio_parameters(config), errlog=errlog)
                            )
                        finally:
                            _SPAWNED.reset(token)
                    else:
                        streams = await stack.enter_async_context(_http_transport(config))
                    read, write = streams[0], streams[1]
                    session = await stack.enter_async_context(
                        ClientSession(_Watched(read, life), write)
                    )
                    await session.initialize()
                    if life.reason is not None:  # stopped (or exited) while it started
                        raise _Stopped
                    scope.deadline = math.inf
                    self._connected(srv, life, session, time.perf_counter() - started)
                    await life.wake.wait()
                    if srv.life is life:
                        srv.state = ServerState.CLOSING
        except BaseException as exc:
            if life.connected:
                logger.warning("MCP server %r did not stop cleanly: %r", srv.name, exc)
            else:
                self._start_failed(srv, life, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if scope.cancelled_caught and not life.connected:
                reason = (
                    f"no answer to `initialize` within {config.timeouts.connect:g} s"
                    if life.reason is None
                    else f"stopped while starting ({life.reason})"
                )
                self._start_failed(srv, life, TimeoutError(reason))
        finally:
            for pid in life.pids:
                _kill_group(pid)
            srv.garbage += life.garbage
            life.garbage = 0
            if life.connected:
                self._disconnected(srv, life)

    def _open_log(self, srv: _Server) -> TextIO:
        if self._log_dir is None:
            self._log_dir = tempfile.mkdtemp(prefix="helixrt-mcp-")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in srv.name)
        srv.log_path = os.path.join(self._log_dir, f"{safe}.log")
        return open(srv.log_path, "a", encoding="utf-8")

    async def _make_room(self, srv: _Server) -> None:
        """Wait until fewer than `max_connections` others run, closing the LRU idle one."""
        deadline = time.monotonic() + srv.config.timeouts.connect
        while True:
            live = [
                s
                for s in self._servers.values()
                if s is not srv
                and s.state in (ServerState.CONNECTING, ServerState.CONNECTED, ServerState.CLOSING)
            ]
            if len(live) < self._max_connections:
                return
            idle = [s for s in live if s.state is ServerState.CONNECTED and s.inflight == 0]
            if idle:
                await self._stop(min(idle, key=lambda s: s.last_used), "evicted")
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"all {self._max_connections} MCP connections (max_connections) stayed busy"
                )
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), remaining)

    def _connected(self, srv: _Server, life: _Life, session: ClientSession, seconds: float) -> None:
        life.session = session
        life.connected = True
        srv.state = ServerState.CONNECTED
        srv.consecutive_failures = 0
        srv.last_error = None
        srv.last_used = srv.last_ok = time.monotonic()
        starting, srv.starting = srv.starting, None
        if starting is not None and not starting.done():
            starting.set_result(session)
        self._publish(
            topics.MCP_SERVER_CONNECTED,
            {"server": srv.name, "pid": life.pid, "seconds": seconds},
        )
        self._set_health(srv, True, None)
        logger.debug("MCP server %r connected (pid %s) in %.3f s", srv.name, life.pid, seconds)

    def _start_failed(self, srv: _Server, life: _Life, exc: BaseException) -> None:
        exc = _unwrap(exc)
        if self._closed or life.reason == "shutdown":
            error: BaseException = PoolClosedError(f"the MCP pool is closed (server {srv.name!r})")
            srv.state = ServerState.CLOSED
        elif life.reason is not None and life.reason != "exited":
            error = ServerStartError(
                srv.name, f"MCP server {srv.name!r} was stopped ({life.reason}) while it started"
            )
            srv.state = ServerState.PENDING
        else:
            error = ServerStartError(srv.name, self._start_message(srv, life, exc))
            error.__cause__ = exc
            srv.consecutive_failures += 1
            backoff = self._backoff(srv.consecutive_failures)
            srv.retry_at = time.monotonic() + backoff
            srv.last_error = error
            srv.state = ServerState.FAILED
            logger.warning("%s", error)
        starting, srv.starting = srv.starting, None
        if starting is not None and not starting.done():
            starting.set_exception(error)
        self._freed.set()

    def _start_message(self, srv: _Server, life: _Life, exc: BaseException) -> str:
        if isinstance(exc, MCPError) and exc.error.code == mcp_types.CONNECTION_CLOSED:
            what = "it exited before it finished `initialize`"
        elif isinstance(exc, FileNotFoundError):
            what = f"its command was not found: {srv.config.command!r}"
        else:
            what = f"{type(exc).__name__}: {exc}"
        message = f"MCP server {srv.name!r} failed to start: {what}"
        if life.garbage:
            message += (
                f"; it wrote {life.garbage} line(s) to stdout that are not JSON-RPC "
                "(a stdio server must write only protocol messages there)"
            )
        tail = _tail(srv.log_path) if srv.config.transport == "stdio" else ""
        if tail:
            message += f"\nlast lines of its stderr ({srv.log_path}):\n{tail}"
        return message

    def _disconnected(self, srv: _Server, life: _Life) -> None:
        reason = life.reason or "exited"
        life.session = None
        life.connected = False
        if reason in _CRASHES:
            what = "exited" if reason == "exited" else "failed its health check"
            self._set_health(srv, False, f"the server {what}")
        if srv.life is life:  # not already replaced by a new run (a call restarted it)
            if reason == "shutdown" or self._closed:
                srv.state = ServerState.CLOSED
            else:
                srv.restart_due = reason in _CRASHES
                srv.state = ServerState.PENDING
        self._publish(
            topics.MCP_SERVER_DISCONNECTED, {"server": srv.name, "reason": reason, "pid": life.pid}
        )
        self._freed.set()
        logger.debug("MCP server %r disconnected (%s)", srv.name, reason)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._backoff_max, self._backoff_base * 2 ** max(0, attempt - 1)))

    async def _stop(self, srv: _Server, reason: str) -> None:
        """End the server's current run (if any) and wait until its process is gone."""
        life, owner = srv.life, srv.owner
        if life is None or owner is None or owner.done():
            return
        self._request_stop(srv, life, owner, reason)
        await asyncio.wait([owner])

    def _request_stop(
        self, srv: _Server, life: _Life, owner: asyncio.Task[None], reason: str
    ) -> None:
        if life.connected:
            srv.state = ServerState.CLOSING
        life.end(reason)
        if not life.connected and life.scope is None:
            # Still waiting (backoff, a free slot, its package): no SDK context is entered yet,
            # so a plain cancel is safe.
            owner.cancel()

    # -- tools and health ---------------------------------------------------------------------

    async def _tools(self, srv: _Server) -> list[mcp_types.Tool]:
        session = await self._session(srv)
        life = srv.life
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        limit = srv.config.timeouts.call
        while True:
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            try:
                async with asyncio.timeout(limit):
                    page = await session.list_tools(params=params)
            except MCPError as exc:
                raise self._call_error(srv, life, "", "tools/list", limit, exc) from exc
            except TimeoutError as exc:
                raise ToolTimeoutError(srv.name, "tools/list", limit) from exc
            tools.extend(page.tools)
            cursor = getattr(page, "next_cursor", getattr(page, "nextCursor", None))
            if not cursor:
                return tools

    def _call_error(
        self, srv: _Server, life: _Life | None, tool: str, method: str, limit: float, exc: MCPError
    ) -> BaseException:
        code = exc.error.code
        if code == mcp_types.CONNECTION_CLOSED:
            if life is not None and life.connected:
                life.end("exited")
            return ServerDisconnectedError(
                srv.name,
                f"MCP server {srv.name!r} went away during {method}"
                + (f" {tool!r}" if tool else "")
                + "; it is restarted on next use",
            )
        if code in _TIMEOUT_CODES:
            return ToolTimeoutError(srv.name, tool or method, limit)
        return MCPCallError(srv.name, method, code, exc.error.message)

    async def _probe(self, srv: _Server) -> bool:
        life = srv.life
        session = life.session if life is not None else None
        if session is None or life is None:
            return False
        error: str | None = None
        try:
            async with asyncio.timeout(min(_HEALTH_TIMEOUT, srv.config.timeouts.call)):
                try:
                    await session.send_ping()
                except MCPError as exc:
                    if exc.error.code != mcp_types.METHOD_NOT_FOUND:
                        raise
                    await session.list_tools()
        except (
            MCPError,
            TimeoutError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            srv.last_ok = time.monotonic()
            self._set_health(srv, True, None)
            return True
        self._set_health(srv, False, error)
        if life is srv.life:
            life.end("health")
        return False

    def _set_health(self, srv: _Server, healthy: bool, error: str | None) -> None:
        if srv.healthy is healthy:
            return
        srv.healthy = healthy
        payload: dict[str, Any] = {"server": srv.name, "healthy": healthy}
        if error is not None:
            payload["error"] = error
        self._publish(topics.MCP_SERVER_HEALTH_CHANGED, payload)

    # -- background work ----------------------------------------------------------------------

    def _ensure_maintenance(self) -> None:
        if self._maintenance is None and not self._closed:
            self._maintenance = asyncio.get_running_loop().create_task(
                self._maintain(), name="helixrt.mcp.pool.maintenance"
            )

    async def _maintain(self) -> None:
        """Idle closes, health checks and restarts of crashed servers, on a tick."""
        candidates = [self._health_interval] if self._health_interval > 0 else []
        idles = [s.config.timeouts.idle for s in self._servers.values()]
        candidates += [idle / 4 for idle in idles if idle > 0]
        tick = max(0.05, min([*candidates, 5.0]))
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                await self._maintain_once()
            except Exception:  # a bug here must not end the pool's upkeep
                logger.exception("MCP pool maintenance failed")

    async def _maintain_once(self) -> None:
        now = time.monotonic()
        probes: list[Awaitable[bool]] = []
        for srv in self._servers.values():
            if srv.state is ServerState.CONNECTED and srv.inflight == 0:
                idle = srv.config.timeouts.idle
                if idle > 0 and now - srv.last_used >= idle:
                    self._spawn(self._stop(srv, "idle"))
                elif self._health_interval > 0 and now - srv.last_ok >= self._health_interval:
                    probes.append(self._probe(srv))
            elif srv.state is ServerState.PENDING and srv.restart_due and srv.starting is None:
                with contextlib.suppress(MCPServerError):
                    self._begin_start(srv)
        if probes:
            await asyncio.gather(*probes)

    async def _warm_eager(self) -> None:
        try:
            await self.warmup()
        except Exception as exc:
            logger.warning("warming up the eager MCP servers failed: %s", exc)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self._bus is None:
            return
        try:
            self._bus.publish(topic, payload, source="mcp_pool")
        except Exception:
            logger.exception("publishing %s failed", topic)


class _Stopped(Exception):
    """The run was told to stop while it started."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A start nobody waits for (a health-check restart) must not log "exception never retrieved".
    if not future.cancelled():
        future.exception()


def _stdio_parameters(config: ServerConfig) -> StdioServerParameters:
    if not config.command:
        raise InvalidArgumentError(f"MCP server {config.name!r} has no command")
    env = {key: os.environ[key] for key in _SAFE_ENV if key in os.environ}
    env.update(config.env)
    return StdioServerParameters(
        command=config.command, args=list(config.args), env=env, cwd=config.cwd
    )


@contextlib.asynccontextmanager
async def _http_transport(config: ServerConfig) -> AsyncIterator[tuple[Any, Any]]:
    if not config.url:
        raise InvalidArgumentError(f"MCP server {config.name!r} has no url")
    if _SDK_V1:  # mcp 1.x: headers go straight to the transport, which yields 3 items
        from mcp.client.streamable_http import streamablehttp_client  # type: ignore[attr-defined]

        async with streamablehttp_client(config.url, headers=dict(config.headers)) as streams:
            yield streams[0], streams[1]
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    timeout = httpx2.Timeout(config.timeouts.connect, read=300.0)
    async with (
        httpx2.AsyncClient(
            headers=dict(config.headers), timeout=timeout, follow_redirects=True
        ) as client,
        streamable_http_client(config.url, http_client=client) as streams,
    ):
        yield streams[0], streams[1]
