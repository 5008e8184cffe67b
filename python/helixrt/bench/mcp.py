"""Benchmarks of the MCP connection pool against the `mcp` SDK used directly.

Rows: the time to the first tool result (start the server, initialise, call one tool) through
`MCPConnectionPool` against `stdio_client` + `ClientSession` by hand; one tool call on a
connected server, pool against a raw session; and how many processes 50 concurrent first calls
start (one). The server is a small stdio MCP server written to a temp file (no network, no
Node); when the Preinstaller's root (`$HELIXRT_MCP_ROOT`, else the user cache) holds
`@modelcontextprotocol/server-memory` (`make mcp-servers` or `helixrt mcp install` put it
there), the first two rows are repeated on that real server, and a full run adds `npx -y`.
Candidates take turns within one event loop; the best of `ctx.repeats` runs counts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from helixrt.bench.runner import Context, Row, gc_paused

# A minimal stdio MCP server (raw JSON-RPC, standard library only), so the figures measure
# the client side rather than an SDK server's import time.
_SERVER = r"""
import json, sys
sys.stderr.write("bench server started\n"); sys.stderr.flush()
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
TOOLS = [{"name": "echo", "inputSchema": SCHEMA}]
for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    if "id" not in request:
        continue
    method = request["method"]
    if method == "initialize":
        result = {"protocolVersion": request["params"]["protocolVersion"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "bench", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        text = str(request["params"].get("arguments", {}).get("text", ""))
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + "\n")
    sys.stdout.flush()
"""

CALLS = 200  # tool calls per timed batch on a connected server
FIRST_CALLERS = 50


class _Server:
    """What to launch and which tool to call on it."""

    def __init__(self, label: str, command: str, args: list[str], tool: str, arguments: Any):
        self.label = label
        self.command = command
        self.args = args
        self.tool = tool
        self.arguments = arguments

    def config(self, name: str = "bench") -> Any:
        from helixrt.mcp.config import ServerConfig

        return ServerConfig(
            name=name, transport="stdio", command=self.command, args=tuple(self.args)
        )


async def _raw_first_result(server: _Server, errlog: Any) -> float:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=server.command, args=server.args)
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        await session.call_tool(server.tool, server.arguments)
        return time.perf_counter() - started  # the shutdown is not timed (nor in the pool's)


async def _pool_first_result(server: _Server, log_dir: str) -> float:
    from helixrt.mcp.pool import MCPConnectionPool

    started = time.perf_counter()
    pool = MCPConnectionPool([server.config()], log_dir=log_dir)
    try:
        await pool.call_tool("bench", server.tool, server.arguments)
        return time.perf_counter() - started
    finally:
        await pool.aclose()


async def _first_result(ctx: Context, server: _Server, log_dir: str) -> dict[str, float]:
    best = {"pool": float("inf"), "sdk": float("inf")}
    with open(os.path.join(log_dir, "raw.log"), "a", encoding="utf-8") as errlog:
        for _ in range(ctx.repeats):
            with gc_paused():
                best["pool"] = min(best["pool"], await _pool_first_result(server, log_dir))
            with gc_paused():
                best["sdk"] = min(best["sdk"], await _raw_first_result(server, errlog))
    return best


async def _alternating(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]], count: int
) -> tuple[float, float]:
    """Seconds per call of each, the two called in turn, so both meet the same machine load."""
    clock = time.perf_counter
    spent = [0.0, 0.0]
    for _ in range(count):
        started = clock()
        await first()
        middle = clock()
        await second()
        spent[0] += middle - started
        spent[1] += clock() - middle
    return spent[0] / count, spent[1] / count


async def _connected_call(ctx: Context, server: _Server, log_dir: str) -> dict[str, float]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from helixrt.mcp.pool import MCPConnectionPool

    calls = CALLS // 4 if ctx.quick else CALLS
    params = StdioServerParameters(command=server.command, args=server.args)
    best = {"pool": float("inf"), "sdk": float("inf")}
    with open(os.path.join(log_dir, "raw.log"), "a", encoding="utf-8") as errlog:
        async with (
            MCPConnectionPool([server.config()], log_dir=log_dir) as pool,
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()

            async def through_pool() -> Any:
                return await pool.call_tool("bench", server.tool, server.arguments)

            async def raw() -> Any:
                return await session.call_tool(server.tool, server.arguments)

            await _alternating(through_pool, raw, 50)  # warm both (and node's JIT)
            for repeat in range(ctx.repeats):
                with gc_paused():
                    if repeat % 2:
                        sdk, pooled = await _alternating(raw, through_pool, calls)
                    else:
                        pooled, sdk = await _alternating(through_pool, raw, calls)
                best["pool"] = min(best["pool"], pooled)
                best["sdk"] = min(best["sdk"], sdk)
    return best


async def _first_callers(server: _Server, log_dir: str) -> int:
    from helixrt.mcp.pool import MCPConnectionPool

    sub = tempfile.mkdtemp(dir=log_dir)
    async with MCPConnectionPool([server.config()], log_dir=sub) as pool:
        calls = (pool.call_tool("bench", server.tool, server.arguments) for _ in range(50))
        await asyncio.gather(*calls)
        log = pool.stats()["bench"].log_path
    assert log is not None
    return Path(log).read_text(encoding="utf-8").count("started")


def _memory_server(log_dir: str) -> _Server | None:
    """server-memory as the Preinstaller installed it under its default root, or None."""
    from helixrt.mcp.preinstall import Preinstaller

    installer = Preinstaller(packages=[f"npm:{_MEMORY_SPEC}"])
    try:
        command, args = installer.resolve("@modelcontextprotocol/server-memory")
    except Exception:
        return None
    os.environ.setdefault("MEMORY_FILE_PATH", os.path.join(log_dir, "memory.jsonl"))
    return _Server("server-memory", command, args, "read_graph", {})


def _rows_for(ctx: Context, server: _Server, log_dir: str) -> Iterator[Row]:
    first = asyncio.run(_first_result(ctx, server, log_dir))
    yield Row(
        "mcp",
        f"first tool result, {server.label}",
        "ns",
        first["pool"] * 1e9,
        "mcp SDK stdio_client+ClientSession",
        first["sdk"] * 1e9,
        "-",
        1 / 1.1,
    )
    call = asyncio.run(_connected_call(ctx, server, log_dir))
    yield Row(
        "mcp",
        f"tool call, connected {server.label}",
        "ns",
        call["pool"] * 1e9,
        "mcp SDK ClientSession.call_tool",
        call["sdk"] * 1e9,
        "-",
        1 / 1.05,
    )


def rows(ctx: Context) -> Iterator[Row]:
    try:
        import mcp  # noqa: F401
    except ImportError:
        yield Row(
            "mcp", "first tool result", "ns", None, note="mcp not installed (pip install mcp)"
        )
        return
    with tempfile.TemporaryDirectory(prefix="helixrt-bench-mcp-") as work:
        script = os.path.join(work, "bench_server.py")
        Path(script).write_text(_SERVER, encoding="utf-8")
        fixture = _Server("python stdio server", sys.executable, [script], "echo", {"text": "hi"})
        yield from _rows_for(ctx, fixture, work)
        started = asyncio.run(_first_callers(fixture, work))
        yield Row(
            "mcp",
            f"{FIRST_CALLERS} concurrent first calls: processes started",
            "ratio",
            float(started),
            note="exactly one expected",
        )
        memory = _memory_server(work)
        if memory is None:
            yield Row(
                "mcp",
                "first tool result, server-memory",
                "ns",
                None,
                note=f"not preinstalled: helixrt mcp install (npx -y {_MEMORY_SPEC})",
            )
            return
        rows_for_memory = list(_rows_for(ctx, memory, work))
        yield from rows_for_memory
        if not ctx.quick:
            yield from _npx_rows(work, rows_for_memory[0].helixrt)


_MEMORY_SPEC = "@modelcontextprotocol/server-memory@2026.8.31"


async def _npx_first_result(cache: str, errlog: Any) -> float:
    """The first tool result from `npx -y` with the npm cache at `cache` (as a desktop client
    launches the server), through the SDK."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    env = {"npm_config_cache": cache, "npm_config_update_notifier": "false"}
    params = StdioServerParameters(command="npx", args=["-y", _MEMORY_SPEC], env=env)
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        await session.call_tool("read_graph", {})
        return time.perf_counter() - started


def _npx_rows(work: str, pool_ns: float | None) -> Iterator[Row]:
    """`npx -y` with an empty npm cache (it downloads the package: needs the registry), then
    again with that cache warm (npx still asks the registry), against the pool launching the
    preinstalled copy. Full runs only: the cold start takes seconds."""
    import shutil

    if shutil.which("npx") is None or pool_ns is None:
        return
    cache = os.path.join(work, "npm-cache")
    os.makedirs(cache)
    with open(os.path.join(work, "npx.log"), "a", encoding="utf-8") as errlog:
        try:
            cold = asyncio.run(_npx_first_result(cache, errlog))
            warm = asyncio.run(_npx_first_result(cache, errlog))
        except Exception as exc:  # no registry: say so in the row
            yield Row(
                "mcp",
                "first tool result, server-memory via npx -y (empty npm cache)",
                "ns",
                pool_ns,
                "npx -y, empty cache",
                None,
                note=f"npx failed: {exc!r}"[:120],
            )
            return
    for label, seconds in (("empty npm cache", cold), ("warm npm cache", warm)):
        yield Row(
            "mcp",
            f"first tool result, preinstalled server-memory vs npx -y ({label})",
            "ns",
            pool_ns,
            f"npx -y, {label}",
            seconds * 1e9,
            "-",
            10.0 if label == "empty npm cache" else None,
        )
